"""Driving a call the way Twilio does: the voice webhook, then the media stream."""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall

CALLER = "+14155550123"
BUSINESS = "+14155550199"
FORM = {
    "CallSid": "CA" + "1" * 32, "From": CALLER, "To": BUSINESS, "Direction": "inbound", "AccountSid": "AC" + "0" * 32
}


def expected_mulaw_bytes(pcm24k: bytes) -> int:
    return -(-len(pcm24k) // 2 // 3)  # one 8 kHz sample per started group of three 24 kHz samples


async def answer(
    service: Service, gemini: FakeLiveServer, **caller_kwargs: Any
) -> tuple[FakeTwilioCall, FakeLiveSession]:
    """Twilio's sequence for an inbound call: the voice webhook, then the media stream."""
    response = await service.post_voice(FORM)
    assert response.status_code == 200
    params = dict(re.findall(r'<Parameter name="(\w+)" value="([^"]*)"', response.text))
    call = service.caller(call_sid=FORM["CallSid"], custom_parameters=params, **caller_kwargs)
    session = await gemini.next_session()  # opened by the webhook, before the stream exists
    await call.connect()
    return call, session


async def greet(session: FakeLiveSession, pcm24k: bytes, chunk_bytes: int = 4801) -> None:
    await session.wait_for_text("Greet")
    await session.send_output_transcription("Hello, thank you for calling.")
    await session.send_audio(pcm24k, chunk_bytes=chunk_bytes)
    await session.send_turn_complete()
