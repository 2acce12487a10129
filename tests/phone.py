"""Driving a call the way Twilio does: the voice webhook, then the media stream; or, for an outbound
call, the API request, then Twilio's stream to the TwiML it was given and its callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from phonebot import codec
from tests import audio
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall
from tests.fakes.twilio_rest import CreatedCall, FakeTwilioRest

CALLER = "+14155550123"
BUSINESS = "+14155550199"
CALLEE = CALLER  # whom an outbound call calls
API_KEY = "operator-key-" + "k" * 30
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


async def dial(
    service: Service, form: dict[str, str] = FORM, stream_to: Service | None = None, **caller_kwargs: Any
) -> FakeTwilioCall:
    """Twilio's first step of an inbound call, the voice webhook; then its stream, to the URL of the
    TwiML, with its <Parameter>s (not connected yet). `stream_to`: the stream reaches another replica
    behind the same public URL."""
    response = await service.post_voice(form)
    assert response.status_code == 200, response.text
    params = dict(re.findall(r'<Parameter name="(\w+)" value="([^"]*)"', response.text))
    caller_kwargs = {"call_sid": form["CallSid"], "custom_parameters": params, **caller_kwargs}
    return (stream_to or service).caller(stream_url(response.text), **caller_kwargs)


def another_caller(n: int) -> dict[str, str]:
    """The webhook form of another inbound call, from another number."""
    return {**FORM, "CallSid": "CA" + f"{n:x}" * 32, "From": f"+1415555{n:04d}"}


async def answer(
    service: Service, gemini: FakeLiveServer, form: dict[str, str] = FORM, **caller_kwargs: Any
) -> tuple[FakeTwilioCall, FakeLiveSession]:
    """Twilio's sequence for an inbound call: the voice webhook, then the media stream."""
    call = await dial(service, form, **caller_kwargs)
    session = await gemini.next_session()  # opened by the webhook, before the stream exists
    await call.connect()
    return call, session


def outbound_settings(twilio_rest: FakeTwilioRest, **extra: Any) -> dict[str, Any]:
    """Settings for outbound calls from BUSINESS, a number the fake account owns."""
    twilio_rest.caller_ids.add(BUSINESS)
    return {"api_key": API_KEY, "twilio_phone_number": BUSINESS, "twilio_api_base_url": twilio_rest.base_url, **extra}


async def place(service: Service, **order: Any) -> httpx.Response:
    """`POST /calls` with the operator's API key."""
    async with service.api() as api:
        return await api.post("/calls", json=order)


def pick_up(service: Service, created: CreatedCall) -> FakeTwilioCall:
    """The stream Twilio opens when the callee answers: to the URL of the TwiML it was given, with
    its <Parameter>s (not connected yet)."""
    twiml = created.field("Twiml")
    params = dict(re.findall(r'<Parameter name="(\w+)" value="([^"]*)"', twiml))
    return service.caller(stream_url(twiml), call_sid=created.sid, custom_parameters=params)


async def placed(service: Service, twilio_rest: FakeTwilioRest, **order: Any) -> CreatedCall:
    """An outbound call to CALLEE, placed (201): what Twilio was asked for."""
    response = await place(service, to=CALLEE, **order)
    assert response.status_code == 201, response.text
    created = twilio_rest.created[-1]
    assert response.json() == {"call_sid": created.sid, "status": "queued"}
    return created


async def answered_with_greeting(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, greeting_s: float = 0.4,
    complete: bool = True, **order: Any,
) -> tuple[FakeTwilioCall, FakeLiveSession, CreatedCall, bytes]:
    """An outbound call whose greeting the model made while the phone rang (`complete`: and finished),
    picked up: its stream connected. Returns the call, its model session, Twilio's call and the greeting."""
    created = await placed(service, twilio_rest, **order)
    session = await gemini.next_session()
    await session.wait_for_text("Greet")
    greeting = audio.tone(440, 24000, greeting_s)
    await session.send_output_transcription("Hello, this is Bella's salon calling.")
    await session.send_audio(greeting)
    if complete:
        await session.send_turn_complete()
    await asyncio.sleep(0.2)  # still ringing: the greeting waits in the session
    call = pick_up(service, created)
    await call.connect()
    return call, session, created, greeting


async def line(call: FakeTwilioCall) -> None:
    """What Twilio streams for as long as a call lasts: a frame every 20 ms (here, silence)."""
    with contextlib.suppress(ConnectionClosed, RuntimeError):
        while not call.closed.is_set():
            await call.send_audio(b"\xff" * 800, realtime=True)


async def post_amd(service: Service, call_sid: str, answered_by: str) -> httpx.Response:
    """Twilio's asynchronous answering-machine detection callback."""
    form = {"CallSid": call_sid, "AccountSid": FORM["AccountSid"], "AnsweredBy": answered_by,
            "MachineDetectionDuration": "2480"}
    return await service.post_twilio("/twilio/amd", form)


async def greet(session: FakeLiveSession, pcm24k: bytes, chunk_bytes: int = 4801) -> None:
    await session.wait_for_text("Greet")
    await session.send_output_transcription("Hello, thank you for calling.")
    await session.send_audio(pcm24k, chunk_bytes=chunk_bytes)
    await session.send_turn_complete()


class Intact:
    """The good call in a test of bad input: checks that everything it carries arrives whole.

    All caller audio and all model audio of the call go through `both_ways()`, so the exact bytes
    each side must have received are known: the caller's frames (noise, every frame unique)
    upsampled to 16 kHz at the model, the model's 24 kHz turns downsampled to mu-law at the phone.
    Nothing lost, nothing extra, nothing reordered.
    """

    def __init__(self, call: FakeTwilioCall, session: FakeLiveSession, seed: int = 0) -> None:
        self.call = call
        self.session = session
        self._rng = random.Random(seed)
        self._caller_sent = bytearray()  # mu-law
        self._bot_sent = bytearray()  # 24 kHz PCM

    async def both_ways(self, frames: int = 10, realtime: bool = False, timeout: float = 5.0) -> None:
        caller = bytes(self._rng.randrange(256) for _ in range(frames * 160))
        bot = audio.tone(440, 24000, frames * 0.02)
        self._bot_sent += bot
        await asyncio.gather(self.call.send_audio(caller, realtime=realtime), self._say(bot, realtime))
        self._caller_sent += caller
        at_model = codec.Upsampler8to16().process(codec.mulaw_to_pcm(bytes(self._caller_sent)))
        at_phone = codec.pcm_to_mulaw(codec.Downsampler24to8().process(bytes(self._bot_sent)))
        await self.session.wait_for_audio(len(at_model), timeout=timeout)
        await self.call.wait_for_audio(len(at_phone), timeout=timeout)
        await asyncio.sleep(0.05)  # and nothing more comes
        assert bytes(self.session.audio) == at_model, "caller audio lost or changed on its way to the model"
        assert bytes(self.call.received_audio) == at_phone, "bot audio lost or changed on its way to the phone"
        assert not self.call.errors

    async def _say(self, pcm24k: bytes, realtime: bool) -> None:
        if realtime:  # as a model streams a turn: 20 ms chunks as they are made
            await self.session.send_audio(pcm24k, chunk_bytes=960, realtime=True)
        else:
            await self.session.send_audio(pcm24k)
        await self.session.send_turn_complete()


async def assert_lossless(call: FakeTwilioCall, session: FakeLiveSession, frames: int = 25, seed: int = 0) -> None:
    """The call carries audio both ways and loses nothing. Only for a call's first audio either way
    (the resamplers' state is then known); for more, keep an `Intact`."""
    await Intact(call, session, seed).both_ways(frames)
