"""Whatever the caller's side sends, over a real socket to the running app, costs at most that
message (or that call), never the call's audio or another call. Each test keeps a good call
measuring that nothing it sends or receives is lost."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phonebot import codec
from phonebot.telephony import messages
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall
from tests.phone import FORM, Intact, another_caller, answer
from tests.served import serve
from tests.timing import CpuWaits


def _media(call: FakeTwilioCall, payload: str) -> dict[str, Any]:
    media = {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload}
    return {"event": "media", "sequenceNumber": "9", "streamSid": call.stream_sid, "media": media}


async def test_a_binary_frame_is_skipped(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    await call.send_raw(b"\x00\x01binary")
    await call.send_raw(json.dumps(_media(call, "//8=")).encode())  # even valid JSON: Twilio sends text
    await intact.both_ways()
    assert service.calls.active[FORM["CallSid"]].caller.skipped.counts == {"stream.binary_frame": 2}
    await call.stop()


async def test_marks_that_are_not_ours_are_ignored(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    await intact.both_ways()
    playback = service.calls.active[FORM["CallSid"]].playback
    await wait_until(lambda: playback.turns[0].heard_samples == playback.turns[0].sent_samples)
    for name in ("²:1", "0:" + "9" * 5000, "1:" + "9" * 12, "٣:1", "0:-5", "x" * 10_000, "0:1:2", "1:" + "9" * 16):
        mark = {"event": "mark", "sequenceNumber": "9", "streamSid": call.stream_sid, "mark": {"name": name}}
        await call.send_event(mark)
    await intact.both_ways()
    await wait_until(lambda: all(turn.heard_samples == turn.sent_samples for turn in playback.turns))
    await asyncio.sleep(0.1)
    assert len(playback.turns) == 2
    assert all(turn.heard_samples == turn.sent_samples for turn in playback.turns)  # never more than was sent
    await call.stop()


async def test_a_media_payload_over_a_few_frames_is_refused_before_decoding(
    service: Service, gemini: FakeLiveServer
) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    big = base64.b64encode(b"\x00" * (messages.MAX_MEDIA_BYTES + 3)).decode()
    for _ in range(20):
        await call.send_event(_media(call, big))
    await intact.both_ways()  # the model got exactly the good frames: none of the oversized ones
    assert service.calls.active[FORM["CallSid"]].caller.skipped.counts == {"stream.bad_message": 20}
    await call.stop()


async def test_a_message_over_the_cap_ends_only_its_own_call(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    other, other_session = await answer(service, gemini, another_caller(2))
    await wait_until(lambda: other.call_sid in service.calls.active)
    huge = json.dumps(_media(other, "A" * (messages.MAX_MESSAGE_BYTES + 1)))
    await other.send_raw(huge)
    await asyncio.wait_for(other.closed.wait(), 5)
    assert other.close_code == 1009  # refused by the server before it was read
    await asyncio.wait_for(other_session.closed.wait(), 5)
    assert len(other_session.audio) == 0
    await intact.both_ways()
    await call.stop()


async def test_dtmf_is_a_keypad_digit_or_nothing(
    service: Service, gemini: FakeLiveServer, capfd: pytest.CaptureFixture[str]
) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    flood = "7" * (messages.MAX_MESSAGE_BYTES - 200)  # the most one message can hold; beyond, see the cap's test
    for digit in ("1", flood, "12", "x", "", "a", "٣", 5, None, ["1"], "A", "#", "*"):
        dtmf = {"event": "dtmf", "sequenceNumber": "9", "streamSid": call.stream_sid, "dtmf": {"digit": digit}}
        await call.send_event(dtmf)
    await intact.both_ways()
    await session.wait_for_text("pressed *")
    pressed = [text for text in session.texts if "pressed" in text]
    assert pressed == [f"(The caller pressed {digit})" for digit in ("1", "A", "#", "*")]
    await call.stop()
    logged = capfd.readouterr().err
    assert "7" * 50 not in logged  # the flood reached neither the model nor the log


async def test_bad_messages_are_counted_and_their_warnings_rate_limited(
    service: Service, gemini: FakeLiveServer, capfd: pytest.CaptureFixture[str]
) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    for n in range(300):
        await call.send_raw("{not json" if n % 2 else '{"event": "media", "media": 5}')
    await intact.both_ways()
    await call.stop()
    await asyncio.wait_for(session.closed.wait(), 5)
    lines = [line for line in capfd.readouterr().err.splitlines() if "stream.bad_message" in line]
    assert 1 <= len(lines) <= 3, lines  # the first at once, then one per interval, then the summary
    assert any("300" in line for line in lines), "the call's summary counts every skipped message"


def _mangled(call: FakeTwilioCall, rng: random.Random) -> str | bytes:
    """A message as a careless or hostile peer might send it: Twilio's shapes with parts swapped,
    dropped, retyped or oversized; or not JSON at all."""
    # No value is valid base64 of any length: a media message that stays well-formed carries no audio.
    values: list[Any] = [None, 5, -1, 1e308, True, "", "x" * 301, "²", [], {}, [1, [2]], {"a": {}}, "0:1"]
    start = {"accountSid": "AC1", "streamSid": call.stream_sid, "callSid": "CA2", "mediaFormat": {}}
    templates: list[dict[str, Any]] = [
        _media(call, ""),
        {"event": "dtmf", "dtmf": {"digit": "1", "track": "inbound_track"}},
        {"event": "mark", "mark": {"name": "0:800"}},
        {"event": "start", "start": start},
        {"event": "connected", "protocol": "Call"},
        {"event": "bogus", "bogus": {}},
    ]
    kind = rng.random()
    if kind < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind < 0.2:
        return rng.choice(["{", "[" * 5000, "null", '"str"', "1e999", '{"event": "media"' * 3])
    message = json.loads(json.dumps(rng.choice(templates)))
    inner = next((value for value in message.values() if isinstance(value, dict)), message)
    key = rng.choice(sorted(inner) or ["event"])
    action = rng.randrange(3)
    if action == 0:
        inner.pop(key, None)
    elif action == 1:
        inner[key] = rng.choice(values)
    else:
        message[rng.choice(["event", "media", "dtmf", "mark", "start"])] = rng.choice(values)
    return json.dumps(message)


async def test_fuzz_many_malformed_messages_never_end_the_call(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    rng = random.Random(8)
    for _round in range(5):
        for _ in range(200):
            await call.send_raw(_mangled(call, rng))
        await intact.both_ways(frames=5)
    assert FORM["CallSid"] in service.calls.active and not call.closed.is_set()
    await call.stop()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _max_gap(waits: CpuWaits, times: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest pause between arrivals in [start, end], less the time the test's loop or the
    served process waited for a CPU in it (tests/timing.py); and the pause as the wall clock saw it."""
    window = [t for t in times if start <= t <= end]
    if len(window) < 2:
        return float("inf"), float("inf")
    return waits.longest_gap(window, window[0], window[-1])


def _reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS


async def test_a_1_mib_frame_on_one_call_costs_the_service_and_its_neighbour_nothing(
    tmp_path: Path, gemini: FakeLiveServer
) -> None:
    """A real `phonebot serve`: call A streams both ways in real time while call B sends one
    1 MiB media message. B is refused (its call ends, with a log line); A's audio keeps arriving
    every 20 ms both ways, none of it lost; the service's peak RSS grows by less than 50 MB."""
    async with serve(tmp_path) as served:
        a, a_session = await answer(served, gemini)
        b, b_session = await answer(served, gemini, another_caller(2))
        await _until(lambda: sum(e.get("event") == "call.started" for e in served.events()) == 2)
        intact = Intact(a, a_session)
        await intact.both_ways()  # A is up and every code path it uses has run once
        pid = served.process.pid
        _reset_peak_rss(pid)
        baseline = _peak_rss_mb(pid)
        async with CpuWaits(pid) as waits:
            started = time.monotonic()
            streaming = asyncio.create_task(intact.both_ways(frames=100, realtime=True, timeout=10))  # 2 s each way
            await asyncio.sleep(0.5)
            await b.send_raw(json.dumps(_media(b, base64.b64encode(b"\x7f" * (1024 * 1024 * 3 // 4)).decode())))
            await streaming  # and every byte of A's arrived, exactly
            ended = time.monotonic()
        grown = _peak_rss_mb(pid) - baseline
        await asyncio.wait_for(b.closed.wait(), 5)
        await asyncio.wait_for(b_session.closed.wait(), 5)
        assert b.close_code == 1009 and len(b_session.audio) == 0
        assert "stream.message_too_big" in [e.get("event") for e in served.events()]
        at_model, model_wall = _max_gap(waits, a_session.audio_times, started + 0.1, ended - 0.1)
        at_phone, phone_wall = _max_gap(waits, [t for t, _ in a.media_times], started + 0.1, ended - 0.1)
        stalls = (f"A's audio stalled: {at_model * 1000:.0f} ms to the model ({model_wall * 1000:.0f} ms of wall time),"
                  f" {at_phone * 1000:.0f} ms to the phone ({phone_wall * 1000:.0f} ms), less the waits for a CPU")
        print(f"1 MiB frame on B: A's largest gap {model_wall * 1000:.0f} ms to the model, {phone_wall * 1000:.0f} ms"
              f" to the phone ({at_model * 1000:.0f} and {at_phone * 1000:.0f} ms less CPU waits);"
              f" peak RSS +{grown:.1f} MB")
        assert at_model < 0.1 and at_phone < 0.1, stalls
        assert grown < 50, f"peak RSS grew by {grown:.1f} MB"
        await a.stop()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def _message_sizes(session: FakeLiveSession, since: int) -> list[int]:
    """Caller audio bytes in each client message after the first `since`."""
    return [end - start for start, end in itertools.pairwise(session.audio_through[since - 1 :])]


async def test_caller_audio_already_waiting_goes_to_the_model_together(
    service: Service, gemini: FakeLiveServer
) -> None:
    """A call that fell behind (several messages read at once, none taken yet) sends the frames
    waiting as one message, up to 100 ms, in order with what came between them: every byte, once."""
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    rng = random.Random(7)
    frames = [bytes(rng.randrange(256) for _ in range(160)) for _ in range(9)]
    media = [_media(call, base64.b64encode(frame).decode()) for frame in frames]
    dtmf = {"event": "dtmf", "sequenceNumber": "9", "streamSid": call.stream_sid, "dtmf": {"digit": "5"}}
    before = len(session.audio_through)
    await call.send_together([*media[:7], _media(call, "!not base64"), media[7], dtmf, media[8]])
    expected = codec.Upsampler8to16().process(codec.mulaw_to_pcm(b"".join(frames)))
    await session.wait_for_audio(len(expected))
    await session.wait_for_text("pressed 5")
    assert bytes(session.audio) == expected
    # 5 frames (the most sent together), the 3 up to the digit (the bad one skipped), the digit, the last:
    assert _message_sizes(session, before) == [5 * 640, 3 * 640, 0, 640]
    assert service.calls.active[FORM["CallSid"]].caller.skipped.counts == {"stream.bad_message": 1}
    await call.stop()


async def test_one_frame_at_a_time_goes_as_it_comes(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    before = len(session.audio_through)
    for index in range(5):
        await call.send_audio(bytes([index]) * 160, realtime=False)
        await session.wait_for_audio((index + 1) * 640)
    assert _message_sizes(session, before) == [640] * 5
    await call.stop()
