"""End to end over real sockets: fake Twilio caller -> phonebot under uvicorn -> real google-genai SDK ->
fake Gemini Live."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from phonebot import codec
from tests import audio
from tests.conftest import AUTH_TOKEN, Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_media import FakeTwilioCall
from tests.models import every_family
from tests.phone import BUSINESS, CALLER, FORM, answer, dial, expected_mulaw_bytes, greet
from tests.timing import Instant


async def test_webhook_answers_twiml_that_connects_the_stream(service: Service) -> None:
    response = await service.post_voice(FORM)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert re.search(r'<Connect><Stream url="wss://bot\.example\.test/twilio/media/[\w-]{43}">', response.text)
    for name, value in (("from", CALLER), ("to", BUSINESS), ("direction", "inbound")):
        assert f'<Parameter name="{name}" value="{value}" />' in response.text


@every_family()
async def test_greeting_reaches_the_caller_as_mulaw(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    bot_24k = audio.speech(audio.PHRASES["greeting"], 24000)
    await greet(session, bot_24k)
    expected = expected_mulaw_bytes(bot_24k)
    await call.wait_for_audio(expected)
    await asyncio.sleep(0.05)
    assert len(call.received_audio) == expected  # nothing more, nothing less
    sizes = [b - a for (_, a), (_, b) in zip(call.media_times, call.media_times[1:], strict=False)]
    assert set(sizes) == {160}, "every frame but the turn's last is 20 ms"
    reference = audio.sox_resample(bot_24k, 24000, 8000)
    delay = round(codec.Downsampler24to8.DELAY_S * 8000)
    snr = audio.snr_db(reference, codec.mulaw_to_pcm(bytes(call.received_audio)), 8000, delay)
    assert snr >= 35.0, f"greeting SNR {snr:.1f} dB"
    assert session.setup["model"].endswith(service.settings.gemini_model)
    assert not call.errors
    await call.stop()
    assert not any(m.get("clientContent") or m.get("client_content") for m in session.messages)


async def test_marks_tell_how_much_the_caller_heard(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    call, session = await answer(service, gemini)
    bot_24k = audio.tone(440, 24000, 0.3)
    await greet(session, bot_24k, chunk_bytes=2400)  # 50 ms chunks: a mark every 100 ms
    await call.wait_for_audio(expected_mulaw_bytes(bot_24k))
    active = service.calls.active[FORM["CallSid"]]
    await wait_until(lambda: active.playback.turns and active.playback.turns[0].heard_ms >= 300, timeout=2)
    turn = active.playback.turns[0]
    assert turn.sent_ms == pytest.approx(300, abs=1)
    assert turn.finished and not turn.interrupted
    assert len(call.marks_sent_back) == 3
    await call.stop()


async def test_caller_speech_reaches_the_model_at_16_khz(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    caller_8k = audio.speech(audio.PHRASES["caller"], 8000)
    mulaw = codec.pcm_to_mulaw(caller_8k)
    mulaw += b"\xff" * (-len(mulaw) % 160)  # Twilio sends whole frames
    await call.send_audio(mulaw, realtime=False)
    await session.wait_for_audio(4 * len(mulaw))
    assert session.audio_mime_types == {"audio/pcm;rate=16000"}
    reference = audio.sox_resample(caller_8k, 8000, 16000)
    delay = round(codec.Upsampler8to16.DELAY_S * 16000)
    snr = audio.snr_db(reference, bytes(session.audio), 16000, delay)
    assert snr >= 35.0, f"caller speech SNR {snr:.1f} dB"
    await call.stop()


async def test_barge_in_clears_twilio_and_drops_the_rest_of_the_turn(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    long_turn = audio.tone(440, 24000, 3.0)
    sender = asyncio.create_task(session.send_audio(long_turn, chunk_bytes=1921, realtime=True))
    await asyncio.sleep(0.8)  # the caller hears some of it, then talks over the bot
    sender.cancel()
    sent_interrupt = Instant.now()
    await session.send_interrupted()
    cleared = await call.wait_for_clear_instant()
    # Our code takes ~1.5 ms; 50 ms of the loop's time, less what the machine kept it from a CPU.
    assert sent_interrupt.until(cleared) < 0.05, sent_interrupt.describe(cleared)
    audio_at_clear = len(call.received_audio)
    played_at_clear = call.played_bytes()

    # The next turn is all that reaches the caller after the clear: no frame of the old one.
    next_turn = audio.tone(1000, 24000, 0.2)
    await session.send_audio(next_turn)
    await session.send_turn_complete()
    await call.wait_for_audio(audio_at_clear + expected_mulaw_bytes(next_turn))
    await asyncio.sleep(0.05)
    after = codec.mulaw_to_pcm(bytes(call.received_audio[audio_at_clear:]))
    assert len(after) // 2 == expected_mulaw_bytes(next_turn)
    assert audio.amplitude_at(after, 8000, 1000, skip_s=0.01) > 5 * audio.amplitude_at(after, 8000, 440, skip_s=0.01)

    turn = service.calls.active[FORM["CallSid"]].playback.turns[0]
    assert turn.interrupted
    assert turn.heard_ms <= played_at_clear / 8 + 1  # never more than was played
    # Within the mark granularity (~120 ms here), less any genuine echo still on its way when the
    # ledger froze at the clear (it freezes first, so that none of the clear's echoes counts).
    assert turn.heard_ms >= played_at_clear / 8 - 250
    assert turn.sent_ms > turn.heard_ms
    await call.stop()


async def test_dtmf_reaches_the_model_as_text(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    await call.send_dtmf("3")
    assert "pressed 3" in await session.wait_for_text("pressed")
    await call.stop()


async def test_malformed_messages_are_skipped_without_ending_the_call(
    service: Service, gemini: FakeLiveServer
) -> None:
    call = await dial(service, custom_parameters={"from": CALLER})
    session = await gemini.next_session()  # the webhook's
    await call.open_only()
    await call.send_event({"event": "media", "sequenceNumber": "1", "media": {"payload": "//8="}})  # before start
    await call.send_event({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    await call.send_event(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": call.stream_sid,
            "start": {
                "accountSid": call.account_sid,
                "streamSid": call.stream_sid,
                "callSid": call.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"from": CALLER},
            },
        }
    )
    await call.send_raw("{not json")
    await call.send_raw('["a list"]')
    await call.send_event({"event": "media", "sequenceNumber": "2", "media": {"payload": "***not base64***"}})
    await call.send_event({"event": "media", "sequenceNumber": "3"})
    await call.send_event({"event": "dance", "sequenceNumber": "4"})
    await call.send_event({"event": "dtmf", "sequenceNumber": "5", "dtmf": {}})
    for n in range(10):  # still flowing: 200 ms of silence, as Twilio frames it
        media = {"track": "inbound", "chunk": str(n + 1), "timestamp": str(20 * n), "payload": "/" * 212 + "/w=="}
        event = {"event": "media", "sequenceNumber": str(6 + n), "streamSid": call.stream_sid, "media": media}
        await call.send_event(event)
    await session.wait_for_audio(4 * 1600)
    assert bytes(session.audio) == bytes(4 * 1600)  # mu-law 0xFF is digital silence
    assert not session.closed.is_set() and not call.closed.is_set()
    await call.stop()


async def test_bad_webhook_signature_is_403(service: Service) -> None:
    for signature in (None, "bm90IGEgc2lnbmF0dXJl"):
        response = await service.post_voice(FORM, signature=signature)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "bad_signature"


async def test_webhook_signature_covers_the_form(service: Service) -> None:
    from twilio.request_validator import RequestValidator

    signature = RequestValidator(AUTH_TOKEN).compute_signature(
        "https://bot.example.test/twilio/voice", FORM
    )
    response = await service.post_voice({**FORM, "From": "+19995550000"}, signature=signature)
    assert response.status_code == 403


@pytest.mark.parametrize(
    "signature", [None, "bm90IGEgc2lnbmF0dXJl", "signed-for-another-url", "signed-without-the-token"]
)
async def test_bad_stream_signature_closes_1008(
    service: Service, gemini: FakeLiveServer, signature: str | None
) -> None:
    call = await dial(service)
    await gemini.next_session()  # the webhook's early session; the stream must open none
    if signature == "signed-for-another-url":
        # What a proxy shows the server is not what Twilio signed: only PHONEBOT_PUBLIC_URL counts.
        signature = FakeTwilioCall.sign(AUTH_TOKEN, call.ws_url)
    elif signature == "signed-without-the-token":  # the one URL every call had before tokens
        signature = FakeTwilioCall.sign(AUTH_TOKEN, service.settings.stream_url)
    call.signature = signature
    await call.open_only()
    await asyncio.wait_for(call.closed.wait(), 5)
    assert call.close_code == 1008
    assert len(gemini.sessions) == 1


@pytest.mark.parametrize("how", ["stop", "hangup"])
async def test_hang_up_leaves_nothing_behind(
    service: Service, gemini: FakeLiveServer, how: str, wait_until: Any
) -> None:
    before = set(asyncio.all_tasks())
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    await session.send_audio(audio.tone(440, 24000, 0.2))
    await call.wait_for_audio(1600)
    await call.send_audio(b"\xff" * 800, realtime=False)
    await (call.stop() if how == "stop" else call.hangup())
    await asyncio.wait_for(session.closed.wait(), 5)
    await wait_until(lambda: not service.calls.active)
    await wait_until(lambda: {t for t in asyncio.all_tasks() if not t.done()} <= before)
    assert session.close_code == 1000  # we closed the Live session cleanly


@pytest.mark.parametrize("settings_overrides", [{"max_call_s": 0.5}], ids=["max-0.5s"])
async def test_over_long_call_ends_politely(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    call, session = await answer(service, gemini)
    talking = asyncio.create_task(call.send_audio(b"\xff" * 8000, realtime=True))  # 1 s of a caller line
    cue = await session.wait_for_text("time limit", timeout=3)
    assert "goodbye" in cue
    goodbye = audio.tone(440, 24000, 0.3)
    await session.send_audio(goodbye)
    await session.send_turn_complete()
    await asyncio.wait_for(call.closed.wait(), 5)
    assert call.played_bytes() >= expected_mulaw_bytes(goodbye) - 160  # the goodbye was heard
    await asyncio.wait_for(session.closed.wait(), 5)
    talking.cancel()


async def test_a_silent_line_ends_the_call(
    service: Service, gemini: FakeLiveServer, monkeypatch: pytest.MonkeyPatch, wait_until: Any
) -> None:
    # Twilio streams a frame every 20 ms, silence included: a line with nothing on it is dead.
    from phonebot.telephony import stream

    monkeypatch.setattr(stream, "SILENT_LINE_TIMEOUT_S", 0.6)
    monkeypatch.setattr(stream, "SILENT_LINE_CHECK_S", 0.1)
    call, session = await answer(service, gemini)
    await call.send_audio(b"\xff" * 1600, realtime=True)  # 200 ms of frames, then nothing at all
    await asyncio.wait_for(call.closed.wait(), 3)
    await asyncio.wait_for(session.closed.wait(), 3)
    await wait_until(lambda: not service.calls.active)


async def test_talking_over_a_turn_the_model_already_finished_stops_it(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    long_turn = audio.tone(440, 24000, 3.0)
    first_part = 2 * round(0.3 * 24000)  # the words of the first fragment take 0.3 s
    await session.send_output_transcription("Our opening hours are")  # all at once, as Gemini sends it
    await session.send_audio(long_turn[:first_part])
    await session.send_output_transcription(" nine to five.")
    await session.send_audio(long_turn[first_part:])
    await session.send_turn_complete()
    await call.wait_for_audio(expected_mulaw_bytes(long_turn))
    await asyncio.sleep(0.5)  # the caller has heard half a second of three
    sent = Instant.now()
    await session.send_input_transcription("Sorry, wait")  # the caller talks over it
    cleared = await call.wait_for_clear_instant()
    assert sent.until(cleared) < 0.05, sent.describe(cleared)  # less what the machine kept the loop from a CPU
    active = service.calls.active[FORM["CallSid"]]
    turn = active.playback.turns[0]
    assert turn.interrupted and 300 <= turn.heard_ms <= 700
    assert [(t.role, t.text, t.interrupted) for t in active.record.turns] == [
        ("bot", "Our opening hours are", True),  # what they heard, and that they cut it short
        ("caller", "Sorry, wait", False),
    ]
    await session.send_input_transcription(" a second")  # more words: nothing left to clear
    await asyncio.sleep(0.1)
    assert len(call.clears) == 1
    await call.stop()
