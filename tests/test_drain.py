"""Graceful drain, against a real `phonebot serve` process: SIGTERM (or SIGINT) turns new calls away
politely and makes the replica unready at once, while a call in progress goes on, both ways, until it
ends; then the process exits 0. A call still going at PHONEBOT_DRAIN_S hears the bot say goodbye and
ends cleanly; a second signal ends calls at once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from phonebot.drain import DRAIN_CUE
from tests import audio
from tests.call.test_admission import DRAINING_TWIML
from tests.call.test_reconnect import PCM16K_PER_FRAME, CallerStream
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver, verify
from tests.phone import another_caller, answer, expected_mulaw_bytes, greet
from tests.served import Served, serve
from tests.timing import CpuWaits

FLOW_GAP_S = 0.25  # audio "keeps flowing": no pause longer than this (20 ms frames; generous for a busy machine)


async def readiness(served: Served) -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.http_url) as client:
        return await client.get("/readyz")


async def connected(served: Served, gemini: FakeLiveServer) -> tuple[FakeTwilioCall, FakeLiveSession]:
    """A call in progress: the greeting heard."""
    call, session = await answer(served, gemini)
    greeting = audio.tone(440, 24000, 0.3)
    await greet(session, greeting)
    await call.wait_for_audio(expected_mulaw_bytes(greeting))
    return call, session


def names(served: Served) -> list[str]:
    return [event.get("event", "") for event in served.events()]


def reporting(receiver: WebhookReceiver) -> dict[str, str]:
    """The environment that has finished-call reports sent to `receiver`."""
    return {"TRANSCRIPT_WEBHOOK_URL": receiver.url, "TRANSCRIPT_WEBHOOK_SECRET": SECRET}


def outbox_statuses(tmp_path: Path) -> list[str]:
    """The webhook outbox of the served process's database, read after it has exited."""
    with contextlib.closing(sqlite3.connect(tmp_path / "phonebot.db")) as database:
        return [status for (status,) in database.execute("SELECT status FROM webhook_outbox")]


def turns(report: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(turn["role"], turn["text"], turn["interrupted"]) for turn in report["data"]["turns"]]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_live_call_goes_on_through_the_drain_then_the_process_exits_0(
    tmp_path: Path, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver, signum: int
) -> None:
    async with serve(tmp_path, PHONEBOT_DRAIN_S="60", **reporting(webhook_receiver)) as served:
        call, session = await connected(served, gemini)
        # Gaps are measured less the time the machine kept either process from a CPU (tests/timing.py).
        async with CpuWaits(served.process.pid) as waits:
            stream = CallerStream(frames=150)
            talking = asyncio.create_task(stream.send(call, 150, realtime=True))  # 3 s of caller speech
            await asyncio.sleep(0.5)
            signalled = time.monotonic()
            served.signal(signum)

            # At once: not ready, and a new call is turned away politely, without a stream.
            ready = await readiness(served)
            assert ready.status_code == 503
            assert ready.json()["error"]["reasons"] == ["draining: shutting down, taking no new calls"]
            turned_away = await served.post_voice(another_caller(2))
            assert turned_away.text == DRAINING_TWIML

            # The call goes on: the bot answers while the caller is still talking...
            await session.send_input_transcription("Can I come in on Tuesday?")
            reply = audio.tone(660, 24000, 1.0)
            await session.send_output_transcription("Of course, take your time.")
            await session.send_audio(reply, chunk_bytes=1920, realtime=True)
            await session.send_turn_complete()
            await talking
            talked = time.monotonic()
            # ...and every frame either way arrives, none late.
            await session.wait_for_audio(stream.sent * PCM16K_PER_FRAME)
            assert bytes(session.audio) == stream.expected(0)
            frames_after = sum(t > signalled for t in session.audio_times)
            assert frames_after >= 100, frames_after  # 2.5 s of the caller's 3 s came after the signal
            heard = expected_mulaw_bytes(audio.tone(440, 24000, 0.3)) + expected_mulaw_bytes(reply)
            await call.wait_for_audio(heard)
            await asyncio.sleep(0.05)
        assert len(call.received_audio) == heard
        bot_times = [t for t, _ in call.media_times]
        flows = ((session.audio_times, signalled, talked), (bot_times, signalled + 0.1, bot_times[-1]))
        for times, since, until in flows:
            gap, wall = waits.longest_gap(times, since, until)
            assert gap < FLOW_GAP_S, f"a pause of {wall:.3f} s, {wall - gap:.3f} s of it waiting for a CPU"
        assert served.running  # still serving the call
        assert not call.closed.is_set()

        await call.stop()  # the caller hangs up: the last call has ended
        assert await served.exit_code(timeout=20) == 0
        exited = time.monotonic()
    # Its record was written and reported before the process went, nothing of it lost.
    [report] = webhook_receiver.accepted
    assert report.at < exited
    verify(SECRET, report.headers, report.body)
    assert report.json()["data"]["end_reason"] == "caller_hung_up"
    assert turns(report.json()) == [
        ("bot", "Hello, thank you for calling.", False),
        ("caller", "Can I come in on Tuesday?", False),
        ("bot", "Of course, take your time.", False),
    ]
    events = names(served)
    assert events.index("drain.started") < events.index("call.ended") < events.index("drain.finished")
    ended = next(event for event in served.events() if event.get("event") == "call.ended")
    assert ended["reason"] == "caller_hung_up"
    assert not any(DRAIN_CUE in text for text in session.texts)  # no goodbye was needed


async def test_a_call_still_going_at_the_drain_deadline_hears_goodbye_and_ends_cleanly(
    tmp_path: Path, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver
) -> None:
    async with serve(tmp_path, PHONEBOT_DRAIN_S="1", **reporting(webhook_receiver)) as served:
        call, session = await connected(served, gemini)
        stream = CallerStream(frames=500)
        talking = asyncio.create_task(stream.send(call, 500, realtime=True))  # the caller stays on the line
        signalled = time.monotonic()
        served.signal(signal.SIGTERM)
        cue = await session.wait_for_text("closing", timeout=10)
        cued = time.monotonic() - signalled
        assert cue == DRAIN_CUE
        assert 1.0 <= cued < 4.0, cued  # at PHONEBOT_DRAIN_S, not before
        assert served.running
        goodbye = audio.tone(550, 24000, 0.6)
        await session.send_output_transcription("I'm sorry, we have to end the call now. Goodbye!")
        await session.send_audio(goodbye, chunk_bytes=1920, realtime=True)
        await session.send_turn_complete()
        # The caller hears the whole goodbye, then the bot hangs up.
        await asyncio.wait_for(call.closed.wait(), 10)
        greeting = expected_mulaw_bytes(audio.tone(440, 24000, 0.3))
        assert len(call.received_audio) == greeting + expected_mulaw_bytes(goodbye)
        assert call.played_bytes() == len(call.received_audio)  # every byte of it played before the hang-up
        assert call.close_code == 1000
        assert await served.exit_code(timeout=20) == 0
        talking.cancel()
    ended = next(event for event in served.events() if event.get("event") == "call.ended")
    assert ended["reason"] == "shutdown"
    assert "drain.ending_calls" not in names(served)  # it ended by itself, after its goodbye
    [report] = webhook_receiver.accepted
    assert report.json()["data"]["end_reason"] == "shutdown"
    assert turns(report.json()) == [
        ("bot", "Hello, thank you for calling.", False),
        ("bot", "I'm sorry, we have to end the call now. Goodbye!", False),
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_second_signal_ends_the_calls_at_once(
    tmp_path: Path, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver, signum: int
) -> None:
    webhook_receiver.delays = [1.0]
    async with serve(tmp_path, PHONEBOT_DRAIN_S="60", **reporting(webhook_receiver)) as served:
        call, session = await connected(served, gemini)
        served.signal(signum)
        await asyncio.sleep(0.5)
        assert not call.closed.is_set()
        served.signal(signum)
        hurried = time.monotonic()
        await asyncio.wait_for(call.closed.wait(), 5)
        assert time.monotonic() - hurried < 3.0
        assert await served.exit_code(timeout=15) == 0
    assert not any(DRAIN_CUE in text for text in session.texts)
    ended = next(event for event in served.events() if event.get("event") == "call.ended")
    assert ended["reason"] == "shutdown"
    [report] = webhook_receiver.accepted  # ended at once, its record written and reported all the same
    assert report.json()["data"]["end_reason"] == "shutdown"
    assert turns(report.json()) == [("bot", "Hello, thank you for calling.", False)]
    # The receiver took its time answering: the process waited for it, and knows the report delivered.
    assert outbox_statuses(tmp_path) == ["delivered"]


async def test_sigterm_with_no_call_exits_0_at_once(tmp_path: Path, gemini: FakeLiveServer, wait_until: Any) -> None:
    async with serve(tmp_path) as served:
        served.signal(signal.SIGTERM)
        assert await served.exit_code(timeout=10) == 0
