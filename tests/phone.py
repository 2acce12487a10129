"""Driving a call the way Twilio does: the voice webhook, then the media stream."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

from phonebot import codec
from tests import audio
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


STREAM_URL = re.compile(r'<Stream url="(wss://[^"]+)"')


def stream_url(twiml: str) -> str:
    found = STREAM_URL.search(twiml)
    assert found is not None, twiml
    return found.group(1)


async def dial(service: Service, form: dict[str, str] = FORM, **caller_kwargs: Any) -> FakeTwilioCall:
    """Twilio's first step of an inbound call, the voice webhook; then its stream, to the URL of the
    TwiML, with its <Parameter>s (not connected yet)."""
    response = await service.post_voice(form)
    assert response.status_code == 200, response.text
    params = dict(re.findall(r'<Parameter name="(\w+)" value="([^"]*)"', response.text))
    caller_kwargs = {"call_sid": form["CallSid"], "custom_parameters": params, **caller_kwargs}
    return service.caller(stream_url(response.text), **caller_kwargs)


async def answer(
    service: Service, gemini: FakeLiveServer, **caller_kwargs: Any
) -> tuple[FakeTwilioCall, FakeLiveSession]:
    """Twilio's sequence for an inbound call: the voice webhook, then the media stream."""
    call = await dial(service, **caller_kwargs)
    session = await gemini.next_session()  # opened by the webhook, before the stream exists
    await call.connect()
    return call, session


async def greet(session: FakeLiveSession, pcm24k: bytes, chunk_bytes: int = 4801) -> None:
    await session.wait_for_text("Greet")
    await session.send_output_transcription("Hello, thank you for calling.")
    await session.send_audio(pcm24k, chunk_bytes=chunk_bytes)
    await session.send_turn_complete()


async def assert_lossless(call: FakeTwilioCall, session: FakeLiveSession, frames: int = 25, seed: int = 0) -> None:
    """The call carries audio both ways and loses nothing: `frames` frames of caller noise (every
    frame unique) reach the model exactly, and a bot turn reaches the caller byte for byte.
    Only for a call's first audio either way (the resamplers' state is then known)."""
    rng = random.Random(seed)
    mulaw = bytes(rng.randrange(256) for _ in range(frames * 160))
    to_model = codec.Upsampler8to16().process(codec.mulaw_to_pcm(mulaw))
    bot = audio.tone(440, 24000, 0.2)
    to_caller = codec.pcm_to_mulaw(codec.Downsampler24to8().process(bot))
    await call.send_audio(mulaw, realtime=False)
    await session.send_audio(bot)
    await session.send_turn_complete()
    await session.wait_for_audio(len(to_model))
    await call.wait_for_audio(len(to_caller))
    await asyncio.sleep(0.05)  # and nothing more comes
    assert bytes(session.audio) == to_model
    assert bytes(call.received_audio) == to_caller
    assert not call.errors
