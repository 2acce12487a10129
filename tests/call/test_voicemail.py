"""Answering machines on outbound calls. Twilio's asynchronous detection (`POST /twilio/amd`) says a
machine answered once its greeting is over and its beep has sounded: the bot stops whatever it
was still saying, leaves PHONEBOT_VOICEMAIL_MESSAGE through the model (new instructions, the
call's own kept), and the call ends once the message has been heard; with PHONEBOT_VOICEMAIL=hangup
the call ends at once. A person's answer, or no verdict, changes nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from phonebot.call.voicemail import VOICEMAIL_CUE
from tests import audio
from tests.conftest import Service, make_settings, running
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver
from tests.models import GEMINI_25, GEMINI_38
from tests.phone import answered_with_greeting, expected_mulaw_bytes, line, outbound_settings, post_amd

MESSAGE = "Hi, this is Bella's salon with a reminder about your appointment. Please call us back. Goodbye!"
INSTRUCTIONS = "You are calling Ada Lovelace about her haircut tomorrow at 10:00."


def voicemail_settings(twilio_rest: FakeTwilioRest, webhook_receiver: WebhookReceiver, **extra: Any) -> Any:
    return make_settings(**outbound_settings(
        twilio_rest, voicemail_message=MESSAGE, transcript_webhook_url=webhook_receiver.url,
        transcript_webhook_secret=SECRET, **extra,
    ))


class Closing:
    """When the call's stream was closed (by phonebot, for the fake caller)."""

    def __init__(self, call: Any) -> None:
        self.at: float | None = None
        self._task = asyncio.create_task(self._watch(call))

    async def _watch(self, call: Any) -> None:
        await call.closed.wait()
        self.at = time.monotonic()

    async def wait(self, timeout: float) -> float:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        assert self.at is not None
        return self.at


@pytest.mark.parametrize("model", [GEMINI_38, GEMINI_25], ids=["3.8", "2.5"])
async def test_a_machine_gets_the_message_after_the_beep_and_the_call_ends_once_it_was_heard(
    gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, webhook_receiver: WebhookReceiver, model: str
) -> None:
    async with running(voicemail_settings(twilio_rest, webhook_receiver, gemini_model=model)) as service:
        # The bot greets the machine's own greeting; the beep comes while it is still speaking (and
        # the model still generating: that turn ends later, and is not the message).
        call, session, created, _greeting = await answered_with_greeting(
            service, gemini, twilio_rest, greeting_s=3.0, complete=False, instructions=INSTRUCTIONS
        )
        closing, streaming = Closing(call), asyncio.create_task(line(call))
        await call.wait_for_audio(8000)  # a second of it has been sent
        await asyncio.sleep(0.3)
        assert (await post_amd(service, created.sid, "machine_end_beep")).status_code == 204
        # What the bot was saying is cut (the recording gets none of it), and it is told to leave the message.
        await call.wait_for_clear()
        if session.family.context_update:  # 3.8: in place
            await wait_for(lambda: bool(session.system_instructions))
            instructions = session.system_instruction_text
        else:  # the others read them
            instructions = await session.wait_for_text("replace your earlier ones")
        assert MESSAGE in instructions and "answering machine" in instructions
        assert INSTRUCTIONS in session.system_instruction_text  # the call's own instructions stay
        await session.wait_for_text(VOICEMAIL_CUE)
        await session.send_turn_complete()  # the greeting's generation ends: the line must stay open
        await asyncio.sleep(0.3)
        assert not call.closed.is_set()
        # The model leaves the message; the call ends only once it has all been played to the machine.
        message = audio.tone(523, 24000, 1.5)
        await session.send_output_transcription(MESSAGE)
        await session.send_audio(message)
        await session.send_turn_complete()
        closed = await closing.wait(timeout=8)
        cleared_at = call.clears[-1]
        after = [(at, offset) for at, offset in call.media_times if at > cleared_at]
        assert after, "no message after the clear"
        started, first_offset = after[0]
        assert len(call.received_audio) - first_offset == expected_mulaw_bytes(message)  # all of it, nothing more
        assert closed - started >= 1.5 - 0.15, "the line closed before the message had played"
        assert closed - started < 1.5 + 2.0
        [delivered] = await webhook_receiver.wait_for(1)
        data = delivered.json()["data"]
        assert (data["answered_by"], data["end_reason"], data["direction"]) == ("machine", "voicemail_left", "outbound")
        greeting_turn, message_turn = data["turns"]
        assert greeting_turn["interrupted"] is True  # the machine heard only part of the greeting
        assert (message_turn["text"], message_turn["interrupted"]) == (MESSAGE, False)
        await streaming


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def greeted(service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest) -> Any:
    """An outbound call picked up, its greeting heard."""
    call, session, created, greeting = await answered_with_greeting(service, gemini, twilio_rest)
    await call.wait_for_audio(expected_mulaw_bytes(greeting))
    return call, session, created, greeting


@pytest.mark.parametrize("verdict", ["machine_end_silence", "machine_end_other", "fax"])
async def test_with_hangup_a_machine_is_hung_up_on_at_once(
    gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, webhook_receiver: WebhookReceiver, verdict: str
) -> None:
    async with running(voicemail_settings(twilio_rest, webhook_receiver, voicemail="hangup")) as service:
        call, session, created, _greeting = await greeted(service, gemini, twilio_rest)
        closing = Closing(call)
        posted = time.monotonic()
        assert (await post_amd(service, created.sid, verdict)).status_code == 204
        assert await closing.wait(timeout=2) - posted < 1.0
        await asyncio.wait_for(session.closed.wait(), 2)
        assert not session.system_instructions and not [text for text in session.texts if MESSAGE in text]
        [delivered] = await webhook_receiver.wait_for(1)
        data = delivered.json()["data"]
        assert (data["answered_by"], data["end_reason"]) == ("machine", "answering_machine")


@pytest.mark.parametrize("verdict", ["human", "unknown"])
async def test_a_person_or_no_verdict_changes_nothing(
    gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, webhook_receiver: WebhookReceiver, verdict: str
) -> None:
    async with running(voicemail_settings(twilio_rest, webhook_receiver, voicemail="hangup")) as service:
        call, session, created, greeting = await greeted(service, gemini, twilio_rest)
        assert (await post_amd(service, created.sid, verdict)).status_code == 204
        await asyncio.sleep(0.7)
        assert not call.closed.is_set() and not call.clears and not session.system_instructions
        reply = audio.tone(660, 24000, 0.3)
        await session.send_audio(reply)
        await session.send_turn_complete()
        await call.wait_for_audio(expected_mulaw_bytes(greeting) + expected_mulaw_bytes(reply))
        await call.stop()
        [delivered] = await webhook_receiver.wait_for(1)
        data = delivered.json()["data"]
        assert (data["answered_by"], data["end_reason"]) == (verdict, "caller_hung_up")


async def test_detection_callbacks_must_be_signed_and_well_formed(
    service: Service, twilio_rest: FakeTwilioRest
) -> None:
    form = {"CallSid": "CA" + "5" * 32, "AccountSid": "AC" + "0" * 32, "AnsweredBy": "machine_end_beep"}
    for signature in (None, "bm90IGEgc2lnbmF0dXJl"):
        response = await service.post_twilio("/twilio/amd", form, signature=signature)
        assert response.status_code == 403 and response.json()["error"]["code"] == "bad_signature"
    response = await service.post_twilio("/twilio/amd", {**form, "AnsweredBy": "robot"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"
    assert (await service.post_twilio("/twilio/amd", form)).status_code == 204  # a call not known here: noted
