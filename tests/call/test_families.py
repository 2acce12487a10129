"""A call through every family of Live models (2.5 native audio, 3.1 legacy, 3.8, 3.8 extended
thinking), each held by the fake server to its documented rules: barge-in, DTMF, a booking, the
goodbye before end_call hangs up, a goAway switch, new instructions mid-call. (The greeting runs
per family in tests/test_call.py.) Where extended thinking differs, the fake model behaves like
it: it speaks, works and speaks again within one answer, each utterance ending in turnComplete
with interactionStatus IN_PROGRESS, and only IDLE ends the answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from phonebot.call import session as session_module
from tests import audio
from tests.call.test_booking_call import ask, next_open_day
from tests.call.test_reconnect import (
    PCM16K_PER_FRAME,
    CallerStream,
    assert_resumed_exactly,
    checkpoint,
    start,
)
from tests.call.test_tool_runtime import call_tool, wait_for_response
from tests.conftest import Service
from tests.fakes.gemini_families import GEMINI_38_THINKING
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.models import every_family
from tests.phone import CALLER, FORM, answer, expected_mulaw_bytes, greet
from tests.timing import Instant

pytestmark = every_family()


def thinks(session: FakeLiveSession) -> bool:
    return session.family is GEMINI_38_THINKING


def active(service: Service) -> Any:
    return service.calls.active[FORM["CallSid"]]


async def answered(service: Service, gemini: FakeLiveServer, wait_until: Any) -> tuple[Any, FakeLiveSession]:
    """`answer`, and the call's session is running (the greeting cue went out at the webhook)."""
    call, session = await answer(service, gemini)
    await wait_until(lambda: FORM["CallSid"] in service.calls.active)
    return call, session


async def test_barge_in(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    call, session = await answered(service, gemini, wait_until)
    await session.wait_for_text("Greet")
    filler = audio.tone(300, 24000, 0.1)
    if thinks(session):  # "let me see", then the answer the caller cuts short
        await session.send_audio(filler)
        await session.send_turn_complete(more=True)
        await call.wait_for_audio(expected_mulaw_bytes(filler))
        await wait_until(lambda: active(service).turns.busy(time.monotonic()))
    sender = asyncio.create_task(session.send_audio(audio.tone(440, 24000, 3.0), chunk_bytes=1920, realtime=True))
    await asyncio.sleep(0.5)
    sender.cancel()
    sent = Instant.now()
    await session.send_interrupted()
    cleared = await call.wait_for_clear_instant()
    assert sent.until(cleared) < 0.1, sent.describe(cleared)  # less what the machine kept the loop from a CPU
    at_clear = len(call.received_audio)
    reply = audio.tone(1000, 24000, 0.2)
    await session.send_audio(reply)
    await session.send_turn_complete()
    await call.wait_for_audio(at_clear + expected_mulaw_bytes(reply))
    await asyncio.sleep(0.05)
    assert len(call.received_audio) == at_clear + expected_mulaw_bytes(reply)  # nothing of the cut turn
    *_, cut, reply_turn = active(service).playback.turns
    assert cut.interrupted and not reply_turn.interrupted
    assert not active(service).turns.busy(time.monotonic())  # cut short: the interaction is over
    await call.stop()


async def test_dtmf(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    call, session = await answered(service, gemini, wait_until)
    await session.wait_for_text("Greet")
    await call.send_dtmf("3")
    assert "pressed 3" in await session.wait_for_text("pressed")
    assert [d.digit for d in active(service).record.dtmf] == ["3"]
    await call.stop()


async def test_a_booking_round_trip(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    await greet(session, audio.tone(440, 24000, 0.2))
    thinking = thinks(session)
    # The bookings the caller waits for run as blocking calls wherever the model has them; on
    # an asynchronous-only model their results are to be spoken as soon as they come.
    for name in ("check_availability", "book_appointment"):
        assert session.behaviour(name) == ("NON_BLOCKING" if thinking else "BLOCKING")
    filler = audio.tone(300, 24000, 0.2)  # "let me look that up"
    if thinking:
        await session.send_audio(filler)
        await session.send_turn_complete(more=True)
    day = next_open_day(service)
    free = await ask(session, "check_availability", service="cleaning", date_from=day.isoformat())
    slot = free["days"][0]["times"][0]
    booked = await ask(
        session, "book_appointment", service="cleaning", date=day.isoformat(), time=slot, customer_name="Ada Lovelace"
    )
    assert booked["booked"] is True
    responses = [response for message in session.tool_responses for response in message["functionResponses"]]
    assert {response.get("scheduling") for response in responses} == {"INTERRUPT" if thinking else None}
    stored = await service.calls.bookings.get(booked["reference"])
    assert stored is not None and (stored.customer_name, stored.phone) == ("Ada Lovelace", CALLER)

    told = audio.tone(500, 24000, 0.3)  # "you're booked for ..."
    await session.send_audio(told)
    await session.send_turn_complete()
    heard_before = expected_mulaw_bytes(audio.tone(440, 24000, 0.2)) + (expected_mulaw_bytes(filler) if thinking else 0)
    await call.wait_for_audio(heard_before + expected_mulaw_bytes(told))
    record = active(service).record
    assert [(t.name, t.ok) for t in record.tool_calls] == [("check_availability", True), ("book_appointment", True)]
    await call.stop()


async def test_end_call_after_the_goodbye(
    service: Service, gemini: FakeLiveServer, wait_until: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After end_call, a short quiet spell is enough to hang up; not while the model is still at work.
    monkeypatch.setattr(session_module, "QUIET_AFTER_REQUEST_S", 0.3)
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    await call_tool(session, "bye", "end_call", {"reason": "done"})
    response = await wait_for_response(session, "bye")
    thanks, goodbye = audio.speech("Thank you for calling.", 24000), audio.speech("Goodbye!", 24000)
    heard = expected_mulaw_bytes(thanks)
    await session.send_audio(thanks, chunk_bytes=3840)
    if thinks(session):
        assert response["scheduling"] == "INTERRUPT"
        await session.send_turn_complete(more=True)  # one utterance over, the answer is not
        await wait_until(lambda: call.played_bytes() >= heard - 160, timeout=5)
        await asyncio.sleep(0.5)
        assert not call.closed.is_set()  # the model is not done: the line stays open
        await session.send_audio(goodbye, chunk_bytes=3840)
        heard += expected_mulaw_bytes(goodbye)
    await session.send_turn_complete()
    await asyncio.wait_for(call.closed.wait(), 10)
    assert len(call.received_audio) == heard
    assert call.played_bytes() >= heard - 160  # closed once all of it had been heard
    await asyncio.wait_for(session.closed.wait(), 5)


async def test_go_away_switch(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    bot = audio.tone(440, 24000, 0.2)
    await first.send_audio(bot)
    if thinks(first):
        await first.send_turn_complete(more=True)
        await checkpoint(service, first, "h1", wait_until)  # resumable, but in the middle of an answer
        await first.send_go_away("10s")
        await stream.send(call, 10)
        await asyncio.sleep(0.4)
        assert len(gemini.sessions) == 1  # a switch now would lose what the model is working on
        await first.send_audio(bot)
    await first.send_turn_complete()
    await checkpoint(service, first, "h2", wait_until)
    since = stream.sent
    await stream.send(call, 20)
    if not thinks(first):
        await first.wait_for_audio(stream.sent * PCM16K_PER_FRAME)
        await first.send_go_away("10s")
    second = await gemini.next_session()
    assert second.resumed_from == "h2"
    await stream.send(call, 10)
    await assert_resumed_exactly(second, stream, since)
    await asyncio.wait_for(first.closed.wait(), 5)
    assert first.close_code == 1000  # retired by us, before its deadline
    await call.stop()


async def test_new_instructions_mid_call(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    # What an outbound call answered by a machine does: the bot leaves a message instead.
    call, session = await answered(service, gemini, wait_until)
    await session.wait_for_text("Greet")
    voicemail = "You have reached an answering machine. Leave a short message and end the call."
    await active(service).model.update_instructions(voicemail)
    if session.family.context_update:  # 3.8: in place, without a new session
        await wait_until(lambda: session.system_instructions)
        assert session.system_instruction_text.startswith(voicemail)
        assert CALLER in session.system_instruction_text  # the call's context stays
        assert not [text for text in session.texts if voicemail in text]
    else:  # the others cannot take new instructions mid-session: they read them
        assert "replace your earlier ones" in await session.wait_for_text(voicemail)
    await asyncio.sleep(0.1)
    assert not session.server_close_code  # nothing the model refuses was sent
    # A connection opened later (here: fresh, nothing to resume from) starts with them.
    await session.close(1011, "Internal error encountered.")
    second = await gemini.next_session()
    assert second.setup["systemInstruction"]["parts"][0]["text"].startswith(voicemail)
    # ... and, the change being in the outbox, hears of it again as the model takes it: harmless.
    if second.family.context_update:
        await wait_until(lambda: second.system_instructions)
    else:
        await second.wait_for_text(voicemail)
    await call.stop()
