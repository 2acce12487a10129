"""Tool calls through the fake Gemini server, the running app and back: results, errors, timeouts,
cancellation, non-blocking tools, and end_call after the goodbye."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from phonebot.tools import control
from phonebot.tools.context import ToolContext, ToolError
from phonebot.tools.spec import tool
from tests import audio
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.phone import FORM, answer, expected_mulaw_bytes

STUBBORN_CLEANUP_S = 3.0
started_tools: list[str] = []


async def lookup(ctx: ToolContext, name: str, count: int = 1) -> dict[str, Any]:
    """Look a name up.

    Args:
        name: The name to look up.
        count: How many results to give.
    """
    return {"name": name, "count": count, "caller": ctx.caller_number}


gates: dict[str, asyncio.Event] = {}  # held_lookup(name) answers once the test opens gates[name]
cancelled_tools: list[str] = []  # the held_lookup calls that were cancelled


async def held_lookup(ctx: ToolContext, name: str) -> dict[str, Any]:
    """Look a name up, taking as long as the test wants.

    Args:
        name: The name to look up.
    """
    gate = gates.setdefault(name, asyncio.Event())
    started_tools.append(name)
    try:
        await gate.wait()
    except asyncio.CancelledError:
        cancelled_tools.append(name)
        raise
    return {"found": name}


@tool(non_blocking=True)
async def background_check(ctx: ToolContext, name: str) -> dict[str, Any]:
    """Check a name in the background while you keep talking.

    Args:
        name: The name to check.
    """
    return {"checked": name}


@tool(timeout_s=0.2)
async def stuck(ctx: ToolContext) -> dict[str, Any]:
    """A tool that never finishes."""
    await asyncio.sleep(60)
    return {}


@tool(timeout_s=0.3)
async def stubborn(ctx: ToolContext) -> dict[str, Any]:
    """A tool whose clean-up, once cancelled, takes its time (as a database driver's may)."""
    try:
        await asyncio.sleep(60)
    finally:
        await asyncio.sleep(STUBBORN_CLEANUP_S)
    return {}


async def broken(ctx: ToolContext) -> dict[str, Any]:
    """A tool with a bug."""
    raise ZeroDivisionError("oops")


async def refuses(ctx: ToolContext) -> dict[str, Any]:
    """A tool that says no."""
    raise ToolError("closed", "We are closed on Sundays.")


TOOLS = [lookup, held_lookup, background_check, stuck, stubborn, broken, refuses, control.end_call]


@pytest.fixture
def extra_tools() -> list[Any]:
    return TOOLS


async def call_tool(session: FakeLiveSession, call_id: str, name: str, args: dict[str, Any]) -> None:
    await session.send_tool_call([{"id": call_id, "name": name, "args": args}])


async def wait_for_response(session: FakeLiveSession, call_id: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            for message in session.tool_responses:
                for response in message.get("functionResponses", []):
                    if response.get("id") == call_id:
                        return response
            await asyncio.sleep(0.005)


def declared(session: FakeLiveSession) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for tool in session.setup.get("tools", []) for d in tool["functionDeclarations"]}


async def test_declarations_come_from_the_functions(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    tools = declared(session)
    assert set(tools) == {f.__name__ for f in TOOLS}
    assert tools["lookup"]["description"] == "Look a name up."
    lookup_decl = tools["lookup"]
    # The SDK writes this one field in snake_case; the service's proto JSON parser takes both.
    schema = lookup_decl.get("parametersJsonSchema", lookup_decl.get("parameters_json_schema"))
    assert schema == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "The name to look up."},
            "count": {"type": "integer", "description": "How many results to give.", "default": 1},
        },
        "required": ["name"],
    }
    # Every declaration says how it runs: on 3.8 NON_BLOCKING is the default, and a booking the
    # caller waits for must not become a background job.
    assert tools["background_check"]["behavior"] == "NON_BLOCKING"
    assert tools["lookup"]["behavior"] == "BLOCKING"
    await call.stop()


async def test_result_reaches_the_model_with_the_callers_number(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    await call_tool(session, "c1", "lookup", {"name": "Ada", "count": 2})
    response = await wait_for_response(session, "c1")
    assert response["name"] == "lookup"
    assert response["response"] == {"name": "Ada", "count": 2, "caller": "+14155550123"}
    record = service.calls.active[FORM["CallSid"]].record.tool_calls[0]
    assert (record.name, record.args, record.ok) == ("lookup", {"name": "Ada", "count": 2}, True)
    await call.stop()


async def test_audio_keeps_flowing_while_a_tool_works(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    started_tools.clear()
    gates.pop("Bob", None)
    await call_tool(session, "held", "held_lookup", {"name": "Bob"})
    async with asyncio.timeout(5):
        while "Bob" not in started_tools:
            await asyncio.sleep(0.005)
    # The caller keeps talking and the bot keeps speaking while the tool works: it answers only
    # once let go, after the audio has gone through both ways (a bound in seconds would be the
    # machine's speed, not whether audio waits for tools).
    bot = audio.tone(440, 24000, 0.2)
    await session.send_audio(bot)
    await call.send_audio(b"\xff" * 1600, realtime=False)
    await session.wait_for_audio(4 * 1600)
    await call.wait_for_audio(expected_mulaw_bytes(bot))
    assert not session.tool_responses
    gates["Bob"].set()
    response = await wait_for_response(session, "held")
    assert response["response"] == {"found": "Bob"}
    await call.stop()


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("broken", {}, "internal"),
        ("stuck", {}, "timeout"),
        ("refuses", {}, "closed"),
        ("lookup", {"count": "many"}, "bad_input"),
        ("no_such_tool", {}, "unknown_tool"),
    ],
)
async def test_failures_become_error_results_and_the_call_goes_on(
    service: Service, gemini: FakeLiveServer, name: str, args: dict[str, Any], code: str
) -> None:
    call, session = await answer(service, gemini)
    await call_tool(session, "bad", name, args)
    response = await wait_for_response(session, "bad")
    assert response["response"]["error"]["code"] == code
    assert response["response"]["error"]["message"]
    await call_tool(session, "good", "lookup", {"name": "Ada"})  # the call still works
    assert (await wait_for_response(session, "good"))["response"]["name"] == "Ada"
    assert not call.closed.is_set()
    await call.stop()


async def test_cancelled_calls_get_no_response(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    started_tools.clear()
    cancelled_tools.clear()
    for name in ("Cancelled", "Kept"):
        gates.pop(name, None)
    # Both tools work until the test lets them go (a sleeping tool raced the cancellation).
    await call_tool(session, "gone", "held_lookup", {"name": "Cancelled"})
    await call_tool(session, "kept", "held_lookup", {"name": "Kept"})
    async with asyncio.timeout(5):
        while len(started_tools) < 2:
            await asyncio.sleep(0.005)
    await session.send_tool_call_cancellation(["gone"])
    async with asyncio.timeout(5):  # the cancelled one is stopped...
        while "Cancelled" not in cancelled_tools:
            await asyncio.sleep(0.005)
    gates["Cancelled"].set()
    gates["Kept"].set()  # ...the other one finishes, and answers
    assert (await wait_for_response(session, "kept"))["response"] == {"found": "Kept"}
    await asyncio.sleep(0.1)
    ids = [r["id"] for m in session.tool_responses for r in m["functionResponses"]]
    assert ids == ["kept"]  # nothing for the cancelled call, before or after
    assert cancelled_tools == ["Cancelled"]
    await call.stop()


async def test_non_blocking_results_are_scheduled_when_idle(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    await call_tool(session, "bg", "background_check", {"name": "Eve"})
    response = await wait_for_response(session, "bg")
    assert response["scheduling"] == "WHEN_IDLE"
    await call_tool(session, "fg", "lookup", {"name": "Eve"})
    assert "scheduling" not in await wait_for_response(session, "fg")
    await call.stop()


async def test_end_call_waits_until_the_goodbye_has_been_heard(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    await call_tool(session, "bye", "end_call", {"reason": "done"})
    await wait_for_response(session, "bye")
    goodbye = audio.speech("Thank you for calling, goodbye!", 24000)
    await session.send_audio(goodbye, chunk_bytes=3840)
    await session.send_turn_complete()
    await asyncio.wait_for(call.closed.wait(), 10)
    closed_at = time.monotonic()
    expected = expected_mulaw_bytes(goodbye)
    assert len(call.received_audio) == expected
    assert call.played_bytes() >= expected - 160  # the stream stayed open until the goodbye had played
    first_audio = call.media_times[0][0]
    assert closed_at - first_audio >= expected / 8000 - 0.05
    await asyncio.wait_for(session.closed.wait(), 5)


async def test_a_tool_answers_at_its_timeout_however_long_its_clean_up_takes(
    service: Service, gemini: FakeLiveServer
) -> None:
    call, session = await answer(service, gemini)
    asked = time.monotonic()
    await call_tool(session, "slow-to-stop", "stubborn", {})
    response = await wait_for_response(session, "slow-to-stop", timeout=STUBBORN_CLEANUP_S + 2)
    took = time.monotonic() - asked
    assert response["response"]["error"]["code"] == "timeout"
    assert took < 0.3 + 1.5 < STUBBORN_CLEANUP_S, f"answered after {took:.1f}s"
    await call_tool(session, "after", "lookup", {"name": "Ada"})  # the call goes on
    assert (await wait_for_response(session, "after"))["response"]["name"] == "Ada"
    await call.stop()
