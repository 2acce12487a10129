"""No silent stalls, no endless silent lines, through the whole path: a model that ends its turn with
nothing to say after the caller's question is nudged once and answers; a caller who says nothing is
checked in on, then said goodbye to, and the call ends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from phonebot.call import turns
from phonebot.call.record import EndReason
from phonebot.call.session import CHECK_IN_CUE, NUDGE_CUE, SILENT_GOODBYE_CUE
from tests import audio
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_media import FakeTwilioCall
from tests.models import every_family
from tests.phone import FORM, answer, expected_mulaw_bytes, greet

STALL_S = 0.6


def keep_talking(call: FakeTwilioCall, seconds: float) -> asyncio.Task[None]:
    """The caller's line: Twilio sends a frame every 20 ms, silence included."""
    return asyncio.create_task(call.send_audio(b"\xff" * int(8000 * seconds), realtime=True))


@every_family("3.8", "3.8-thinking")
async def test_a_stalled_model_is_nudged_once_and_answers(
    service: Service, gemini: FakeLiveServer, monkeypatch: pytest.MonkeyPatch, wait_until: Any
) -> None:
    monkeypatch.setattr(turns, "STALL_S", STALL_S)
    call, session = await answer(service, gemini)
    await greet(session, audio.tone(440, 24000, 0.2))
    line = keep_talking(call, 6)
    await call.wait_for_audio(expected_mulaw_bytes(audio.tone(440, 24000, 0.2)))
    await wait_until(lambda: call.played_bytes() >= 1600 - 160)  # the greeting has been heard
    # The caller asks; the model ends its turn without a word (python-genai #2117).
    asked = time.monotonic()
    await session.send_input_transcription("Can I book a cleaning on Friday?")
    await session.send_turn_complete()
    nudge = await session.wait_for_text(NUDGE_CUE, timeout=3)
    assert nudge == NUDGE_CUE
    assert time.monotonic() - asked >= STALL_S  # not before the model had its chance
    answer_audio = audio.tone(500, 24000, 0.3)  # the model answers the nudge
    await session.send_audio(answer_audio)
    await session.send_turn_complete()
    await call.wait_for_audio(expected_mulaw_bytes(audio.tone(440, 24000, 0.2)) + expected_mulaw_bytes(answer_audio))
    await asyncio.sleep(STALL_S + 1.0)
    assert [text for text in session.texts if text == NUDGE_CUE] == [NUDGE_CUE]  # once
    assert service.calls.active[FORM["CallSid"]].turns.nudges == 1
    line.cancel()
    await call.stop()


async def test_a_model_that_answers_is_never_nudged(
    service: Service, gemini: FakeLiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turns, "STALL_S", STALL_S)
    call, session = await answer(service, gemini)
    await greet(session, audio.tone(440, 24000, 0.2))
    line = keep_talking(call, 4)
    await session.send_input_transcription("Are you open on Saturdays?")
    await asyncio.sleep(0.3)
    await session.send_audio(audio.tone(500, 24000, 1.0))  # answered, at length
    await session.send_input_transcription(" Saturdays")  # late transcription of the question
    await session.send_turn_complete()
    await asyncio.sleep(STALL_S + 1.0)
    assert NUDGE_CUE not in session.texts
    line.cancel()
    await call.stop()


@pytest.mark.parametrize("settings_overrides", [{"caller_silence_s": 0.6}], ids=["silence-0.6s"])
async def test_a_silent_caller_is_checked_in_on_then_the_call_ends_politely(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    call, session = await answer(service, gemini)
    greeting = audio.tone(440, 24000, 0.3)
    await greet(session, greeting)
    line = keep_talking(call, 10)  # a line with nobody speaking on it
    await wait_until(lambda: FORM["CallSid"] in service.calls.active)
    active = service.calls.active[FORM["CallSid"]]
    await session.wait_for_text(CHECK_IN_CUE, timeout=4)
    assert call.played_bytes() >= expected_mulaw_bytes(greeting) - 160  # not while the greeting played
    check_in = audio.speech("Are you still there?", 24000)
    await session.send_output_transcription("Are you still there?")
    await session.send_audio(check_in)
    await session.send_turn_complete()
    await session.wait_for_text(SILENT_GOODBYE_CUE, timeout=6)
    heard = expected_mulaw_bytes(greeting) + expected_mulaw_bytes(check_in)
    assert call.played_bytes() >= heard - 160
    assert not call.closed.is_set()
    goodbye = audio.speech("Goodbye.", 24000)
    await session.send_output_transcription("Goodbye.")
    await session.send_audio(goodbye)
    await session.send_turn_complete()
    await asyncio.wait_for(call.closed.wait(), 5)
    assert call.played_bytes() >= heard + expected_mulaw_bytes(goodbye) - 160  # the goodbye was heard
    await asyncio.wait_for(session.closed.wait(), 5)
    assert active.record.end_reason == EndReason.CALLER_SILENT
    assert [t.text for t in active.record.turns if t.role == "bot"] == [
        "Hello, thank you for calling.", "Are you still there?", "Goodbye."  # three turns, not one
    ]
    line.cancel()
