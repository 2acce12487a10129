"""A call's record end to end, over real sockets: the fake Twilio caller and fake Gemini through the
running app, the record written to the database as the call goes, read back with `GET /calls`,
and reported to a local webhook receiver, signed (checked by hand)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from phonebot.tools import control
from phonebot.tools.context import ToolContext
from tests import audio
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver, verify
from tests.phone import BUSINESS, CALLER, FORM, answer, expected_mulaw_bytes
from tests.timing import Instant

API_KEY = "test-operator-key"
MS = 8  # samples per millisecond at 8 kHz
CALL_SID = FORM["CallSid"]


async def lookup(ctx: ToolContext, name: str) -> dict[str, Any]:
    """Look a name up.

    Args:
        name: The name to look up.
    """
    return {"found": name, "visits": 2}


@pytest.fixture
def extra_tools() -> list[Any]:
    return [lookup, control.end_call]


@pytest.fixture
def settings_overrides(webhook_receiver: WebhookReceiver) -> dict[str, Any]:
    return {"transcript_webhook_url": webhook_receiver.url, "transcript_webhook_secret": SECRET, "api_key": API_KEY}


async def barge_in_after(call: FakeTwilioCall, session: FakeLiveSession) -> None:
    """The bot says three fragments with a second of audio each, all at once as Gemini sends
    them; the caller talks over it once 1.4 s has played."""
    second = 2 * 24000
    speech = audio.tone(440, 24000, 3.0)
    for index, text in enumerate(["Hello, thank you for calling.", " We are open from nine", " until five."]):
        await session.send_output_transcription(text)
        await session.send_audio(speech[index * second : (index + 1) * second], chunk_bytes=2400)
    await session.send_turn_complete()
    await call.wait_for_audio(expected_mulaw_bytes(speech))
    await call.wait_for_mark(f"0:{1400 * MS}", timeout=5)
    await session.send_input_transcription("Sorry, do you open on Saturdays?")
    await call.wait_for_clear()


async def test_a_call_is_recorded_as_it_goes_and_reported_when_it_ends(
    service: Service, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver
) -> None:
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    await barge_in_after(call, session)
    await call.send_dtmf("3")
    await session.wait_for_text("pressed 3")
    await session.send_tool_call([{"id": "t1", "name": "lookup", "args": {"name": "Ada"}}])
    await session.send_output_transcription("You have two visits.")

    # Written as the call goes: the finished turns, the digit and the tool call are there already.
    async with asyncio.timeout(5):
        while True:
            during = await service.call_record(CALL_SID)
            if any(tool["ok"] for tool in during["tool_calls"]):
                break
            await asyncio.sleep(0.05)
    assert during["ended_at"] is None and during["status"] == "in-progress" and during["webhook"] is None
    assert [turn["text"] for turn in during["turns"]] == [
        "Hello, thank you for calling. We are",
        "Sorry, do you open on Saturdays?",
    ]
    assert [d["digit"] for d in during["dtmf"]] == ["3"]

    await call.stop()
    [delivered] = await webhook_receiver.wait_for(1)
    verify(SECRET, delivered.headers, delivered.body)
    report = delivered.json()
    assert report["type"] == "call.completed"
    data = report["data"]
    assert {key: data[key] for key in ("call_sid", "direction", "from", "to", "end_reason", "answered_by")} == {
        "call_sid": CALL_SID,
        "direction": "inbound",
        "from": CALLER,
        "to": BUSINESS,
        "end_reason": "caller_hung_up",
        "answered_by": "unknown",
    }
    assert [(t["role"], t["text"], t["interrupted"]) for t in data["turns"]] == [
        ("bot", "Hello, thank you for calling. We are", True),
        ("caller", "Sorry, do you open on Saturdays?", False),
        ("bot", "You have two visits.", False),
    ]
    [tool] = data["tool_calls"]
    assert (tool["name"], tool["args"], tool["ok"]) == ("lookup", {"name": "Ada"}, True)
    assert tool["result"] == {"found": "Ada", "visits": 2}
    [digit] = data["dtmf"]
    offsets = [data["turns"][0]["offset_ms"], data["turns"][1]["offset_ms"], digit["offset_ms"], tool["offset_ms"]]
    assert offsets == sorted(offsets), "one timeline"
    assert 0 < data["duration_s"] < 30 and data["started_at"] < data["ended_at"]
    assert data["bookings"] == [] and data["metadata"] == {}

    # The API shows the same record, and the delivery.
    async with asyncio.timeout(5):
        while (stored := await service.call_record(CALL_SID))["webhook"]["status"] != "delivered":
            await asyncio.sleep(0.05)
    assert {key: stored[key] for key in data} == data
    assert stored["status"] == "completed"
    assert stored["webhook"]["id"] == delivered.id and stored["webhook"]["attempts"] == 1


async def test_record_writes_never_hold_up_the_call(
    service: Service, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver, wait_until: Any
) -> None:
    """With the database's write lock taken by someone else, the call's audio flows as ever;
    the record is written once the lock is free."""
    database = service.settings.database_url.removeprefix("sqlite+aiosqlite:///")
    blocker = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    call, session = await answer(service, gemini)
    await wait_until(lambda: CALL_SID in service.calls.active)  # its stream has started (token claimed)
    # In a thread: the blocker must not wait for the lock on the event loop the service runs on.
    await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")  # no writer gets in until it commits
    try:
        for n in range(5):
            await session.send_output_transcription(f"Turn {n}.")
            bot = audio.tone(440, 24000, 0.1)
            sent = Instant.now()
            await session.send_audio(bot)
            await session.send_turn_complete()
            await call.wait_for_audio(expected_mulaw_bytes(bot) * (n + 1), timeout=2)
            arrived = Instant.now()  # less what the machine kept the loop from a CPU:
            assert sent.until(arrived) < 0.25, f"bot audio was held up: {sent.describe(arrived)}"
            await call.wait_for_mark(f"{n}:{100 * MS}")  # heard to the end
            await session.send_input_transcription(f"Answer {n}.")
            caller = b"\xff" * 1600
            await call.send_audio(caller, realtime=False)
            await session.wait_for_audio(4 * 1600 * (n + 1), timeout=2)
        # None written yet: the writer waits for the lock, the call does not.
        assert (await service.call_record(CALL_SID))["turns"] == []
    finally:
        await asyncio.to_thread(blocker.execute, "COMMIT")
        blocker.close()
    await call.stop()
    [delivered] = await webhook_receiver.wait_for(1, timeout=40)
    turns = delivered.json()["data"]["turns"]
    assert [t["text"] for t in turns] == [text for n in range(5) for text in (f"Turn {n}.", f"Answer {n}.")]
