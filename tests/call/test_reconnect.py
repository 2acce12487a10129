"""Long calls: goAway, dropped sockets, refused handles, a server that stays down, tool calls across a
switch. In each, the new session must receive exactly the caller audio from the newest handle on:
in order, none missing, none repeated. Caller audio is noise, so every 20 ms frame is unique, and
the app's 16 kHz output for frame k is known exactly (streamed resampling equals one-shot)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from phonebot import codec
from phonebot.tools.context import ToolContext
from tests import audio
from tests.call.test_tool_runtime import call_tool
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall
from tests.models import GEMINI_25, every_family
from tests.phone import FORM, answer, expected_mulaw_bytes

FRAME = 160  # mu-law bytes per 20 ms
PCM16K_PER_FRAME = 640


class CallerStream:
    """The caller's audio: unique frames, and what the model must receive for any span of them."""

    def __init__(self, frames: int = 1500, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.mulaw = bytes(rng.randrange(256) for _ in range(frames * FRAME))
        self.pcm16k = codec.Upsampler8to16().process(codec.mulaw_to_pcm(self.mulaw))
        self.sent = 0  # frames sent so far

    async def send(self, call: FakeTwilioCall, frames: int, realtime: bool = False) -> None:
        start = self.sent
        self.sent += frames
        await call.send_audio(self.mulaw[start * FRAME : self.sent * FRAME], realtime=realtime)

    def expected(self, first: int, end: int | None = None) -> bytes:
        end = self.sent if end is None else end
        return self.pcm16k[first * PCM16K_PER_FRAME : end * PCM16K_PER_FRAME]


def model_of(service: Service) -> Any:
    return service.calls.active[FORM["CallSid"]].model


async def checkpoint(service: Service, session: FakeLiveSession, handle: str, wait_until: Any) -> None:
    await session.send_session_resumption_update(handle)
    await wait_until(lambda: model_of(service).handle == handle)


def covered_message(session: FakeLiveSession) -> tuple[int, int]:
    """A client message two thirds into the call (as a handle's consumed index names it), and the
    caller audio in messages up to it. Frames that reach the service together go to the model
    as one message, so messages are counted as the model got them, not as frames."""
    covered = len(session.messages) * 2 // 3
    assert session.audio_through[covered - 1] > 0  # past the greeting cue: some audio is covered
    return covered, session.audio_through[covered - 1]


async def assert_resumed_exactly(session: FakeLiveSession, stream: CallerStream, since: int) -> None:
    """`session` got every caller frame from `since` on, in order, once: nothing missing, nothing more."""
    await session.wait_for_audio((stream.sent - since) * PCM16K_PER_FRAME)
    await asyncio.sleep(0.05)
    assert bytes(session.audio) == stream.expected(since)


async def start(
    service: Service, gemini: FakeLiveServer, stream: CallerStream, wait_until: Any
) -> tuple[FakeTwilioCall, FakeLiveSession]:
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    await stream.send(call, 50)
    await session.wait_for_audio(50 * PCM16K_PER_FRAME)
    return call, session


async def test_go_away_between_turns(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    bot = audio.tone(440, 24000, 0.2)
    await first.send_audio(bot)
    await first.send_turn_complete()
    await checkpoint(service, first, "h1", wait_until)
    since = stream.sent
    await stream.send(call, 50)  # said after the handle: the new session must get it
    await first.wait_for_audio((since + 50) * PCM16K_PER_FRAME)
    await first.send_go_away("10s")
    second = await gemini.next_session()
    assert second.resumed_from == "h1"
    await stream.send(call, 25)  # said after the switch
    await assert_resumed_exactly(second, stream, since)
    await asyncio.wait_for(first.closed.wait(), 5)
    assert first.close_code == 1000  # retired cleanly by us, well before its deadline
    assert not [t for t in second.texts if "Greet" in t]
    # The bot carries on on the new session; nothing it said before is sent to the caller again.
    await call.wait_for_audio(expected_mulaw_bytes(bot))
    await second.send_audio(bot)
    await second.send_turn_complete()
    await call.wait_for_audio(2 * expected_mulaw_bytes(bot))
    await asyncio.sleep(0.05)
    assert len(call.received_audio) == 2 * expected_mulaw_bytes(bot)
    await call.stop()


async def test_go_away_mid_turn_waits_for_the_turn_then_switches(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    await checkpoint(service, first, "h1", wait_until)
    await first.send_audio(audio.tone(440, 24000, 0.2))  # the bot is mid-turn
    await first.send_go_away("5s")
    await stream.send(call, 20)
    await asyncio.sleep(0.2)
    assert len(gemini.sessions) == 1  # no switch while the bot is speaking
    await first.send_turn_complete()
    await first.wait_for_audio(70 * PCM16K_PER_FRAME)
    await checkpoint(service, first, "h2", wait_until)  # the state now includes the bot's turn
    since = stream.sent
    second = await gemini.next_session()
    assert second.resumed_from == "h2"
    await stream.send(call, 30)
    await assert_resumed_exactly(second, stream, since)
    await call.stop()


async def test_go_away_with_a_turn_that_never_ends_switches_before_the_deadline(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    await checkpoint(service, first, "h1", wait_until)
    since = stream.sent
    await first.send_audio(audio.tone(440, 24000, 0.2))
    await first.send_go_away("1.5s")  # switch by 0.5 s (1 s margin)
    await stream.send(call, 10)
    second = await gemini.next_session(timeout=3)
    assert second.resumed_from == "h1"
    await stream.send(call, 10)
    await assert_resumed_exactly(second, stream, since)
    assert not first.server_close_code  # we left before the service had to close on us
    await call.stop()


@pytest.mark.parametrize("code", [1011, 1006])
async def test_dropped_socket_mid_turn_resumes_with_nothing_lost(
    service: Service, gemini: FakeLiveServer, wait_until: Any, code: int
) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    await checkpoint(service, first, "h1", wait_until)
    since = stream.sent
    await first.send_audio(audio.tone(440, 24000, 0.2))  # mid-turn
    talking = asyncio.create_task(stream.send(call, 50, realtime=True))  # the caller keeps talking: 1 s
    await asyncio.sleep(0.3)
    if code == 1006:
        first._ws.transport.abort()  # the network drops: no close frame at all
    else:
        await first.close(code, "Internal error encountered.")
    second = await gemini.next_session()
    assert second.resumed_from == "h1"
    await talking
    await assert_resumed_exactly(second, stream, since)
    assert model_of(service).dropped_audio_messages == 0
    await call.stop()


@every_family("2.5", "3.1", "3.8")
@pytest.mark.parametrize("how", ["dropped", "goAway"])
async def test_refused_handle_starts_fresh_with_the_conversation_so_far(
    service: Service, gemini: FakeLiveServer, wait_until: Any, settings_overrides: dict[str, Any], how: str
) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    await first.send_input_transcription("I'd like to book a cleaning.")
    await first.send_output_transcription("Of course. What day suits you?")
    await first.send_audio(audio.tone(440, 24000, 0.1))
    await first.send_turn_complete()
    await checkpoint(service, first, "h1", wait_until)
    gemini.issued_handles.discard("h1")  # expired by the time we need it
    if how == "goAway":
        await first.send_go_away("10s")
    else:
        await first.close(1011, "Internal error encountered.")
    second = await gemini.next_session()
    assert second.resumed_from is None
    await wait_until(lambda: second.client_contents)  # sent right after the setup
    turns = second.client_contents[0]["turns"]
    assert [(t["role"], t["parts"][0]["text"]) for t in turns] == [
        ("user", "I'd like to book a cleaning."),
        ("model", "Of course. What day suits you?"),
    ]
    gemini3 = settings_overrides["gemini_model"] != GEMINI_25
    # 3.x takes history only as declared initial history, closed by turnComplete; 2.5 would answer
    # a complete turn, so there it stays open.
    assert bool(second.setup.get("historyConfig")) == gemini3
    assert bool(second.client_contents[0].get("turnComplete")) == gemini3
    assert not any("Greet" in text for text in second.texts)  # carries on, no second greeting
    since = stream.sent
    await stream.send(call, 10)
    await second.wait_for_audio(10 * PCM16K_PER_FRAME)
    assert bytes(second.audio) == stream.expected(since)
    assert len(gemini.sessions) == 2  # no connection opened in vain
    await call.stop()


async def test_long_call_with_several_go_aways(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    """A long call in accelerated time: every connection ends with a goAway; the caller never stops."""
    stream = CallerStream()
    call, session = await start(service, gemini, stream, wait_until)
    for n in range(6):
        await checkpoint(service, session, f"h{n}", wait_until)
        since = stream.sent
        await stream.send(call, 15)
        await session.send_go_away("10s")
        talking = asyncio.create_task(stream.send(call, 10, realtime=True))  # talking through the switch
        replacement = await gemini.next_session()
        await talking
        assert replacement.resumed_from == f"h{n}"
        await replacement.wait_for_audio((stream.sent - since) * PCM16K_PER_FRAME)
        await asyncio.sleep(0.02)
        assert bytes(replacement.audio) == stream.expected(since)
        await asyncio.wait_for(session.closed.wait(), 5)
        session = replacement
    assert model_of(service).switches == 6
    assert len(gemini.sessions) == 7
    await call.stop()


SLOW_S = 0.4


async def slow_lookup(ctx: ToolContext, name: str) -> dict[str, Any]:
    """Look a name up, slowly.

    Args:
        name: The name to look up.
    """
    await asyncio.sleep(SLOW_S)
    return {"found": name}


@pytest.fixture
def extra_tools() -> list[Any]:
    return [slow_lookup]


async def test_tool_result_reaches_the_model_across_a_reconnect(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    await checkpoint(service, first, "h1", wait_until)
    await call_tool(first, "t1", "slow_lookup", {"name": "Ada"})
    await asyncio.sleep(0.05)
    await first.close(1011, "Internal error encountered.")  # while the tool works
    second = await gemini.next_session()
    text = await second.wait_for_text("slow_lookup", timeout=3)
    assert '"found": "Ada"' in text  # the resumed state predates the call: the result comes as text
    assert not first.tool_responses and not second.tool_responses
    await call.stop()


async def test_keepalive_never_ends_a_call(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    from phonebot.gemini.live import KEEPALIVE

    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    socket = model_of(service)._conn._session._ws  # the SDK's websockets connection
    assert (socket.ping_interval, socket.ping_timeout) == (KEEPALIVE["ping_interval"], KEEPALIVE["ping_timeout"])
    assert socket.close_timeout == KEEPALIVE["close_timeout"]
    # Were a pong ever too slow, the connection is replaced and the call goes on, nothing lost:
    await checkpoint(service, first, "h1", wait_until)
    since = stream.sent
    await socket.close(1011, "keepalive ping timeout")  # what websockets does when a pong is late
    second = await gemini.next_session()
    assert second.resumed_from == "h1"
    await stream.send(call, 10)
    await second.wait_for_audio(10 * PCM16K_PER_FRAME)
    assert bytes(second.audio) == stream.expected(since)
    await call.stop()


async def test_consumed_index_trims_the_outbox_exactly(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    """Where the service says which message a handle covers (Vertex's transparent mode), trust it."""
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)  # message 1: greeting cue; then frames 0..49
    assert "transparent" not in str(first.setup)  # the Gemini API refuses the option: never asked there
    covered, covered_bytes = covered_message(first)
    gemini.issued_handles.add("h1")
    update = {"newHandle": "h1", "resumable": True, "lastConsumedClientMessageIndex": str(covered)}
    await first.send({"sessionResumptionUpdate": update})
    await wait_until(lambda: model_of(service).handle == "h1")
    await first.send_go_away("10s")
    second = await gemini.next_session()
    await stream.send(call, 10)
    await second.wait_for_audio(stream.sent * PCM16K_PER_FRAME - covered_bytes)
    await asyncio.sleep(0.05)
    # What the state did not hold yet, and only that:
    assert bytes(second.audio) == stream.pcm16k[covered_bytes : stream.sent * PCM16K_PER_FRAME]
    await call.stop()


@pytest.mark.parametrize("settings_overrides", [{"reconnect_buffer_s": 0.2}], ids=["buffer-0.2s"])
async def test_a_long_outage_keeps_the_newest_audio_up_to_the_bound(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    await checkpoint(service, first, "h1", wait_until)
    since = stream.sent
    await stream.send(call, 10)  # sent on the old connection: replayed whatever happens
    await first.wait_for_audio(stream.sent * PCM16K_PER_FRAME)
    gemini.refuse_connections = True
    await first.close(1011, "Internal error encountered.")
    await stream.send(call, 50, realtime=True)  # 1 s of talking while the model is unreachable
    gemini.refuse_connections = False
    second = await gemini.next_session(timeout=10)
    await stream.send(call, 5)
    await wait_until(lambda: bytes(second.audio).endswith(stream.expected(stream.sent - 5)))
    # Frames that waited together went as one message: count what was dropped in frames.
    dropped, odd = divmod(model_of(service).dropped_audio_bytes, PCM16K_PER_FRAME)
    assert 30 <= dropped <= 50 and not odd  # 1 s said, 0.2 s kept (give or take the reconnect)
    received = bytes(second.audio)
    assert received.startswith(stream.expected(since, since + 10))  # what the old connection had is kept
    kept = len(received) // PCM16K_PER_FRAME - 10 - 5
    assert kept == 50 - dropped
    newest = stream.expected(stream.sent - 5 - kept, stream.sent - 5)
    assert received[10 * PCM16K_PER_FRAME :].startswith(newest)
    await call.stop()
