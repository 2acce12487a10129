"""Self-tests for the protocol fakes: the Gemini fake against the real google-genai SDK,
the Twilio fake against a tiny inline WebSocket server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google import genai
from google.genai import errors, types
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .gemini_live import LATE_CLIENT_CONTENT_REASON, FakeLiveServer, FakeLiveSession, make_tls
from .twilio_media import FakeTwilioCall

MODEL_25 = "gemini-2.5-flash-native-audio-preview-09-2025"
MODEL_3 = "gemini-3.1-flash-live-preview"
MODEL_38 = "gemini-3.8-live"
MODEL_38_THINKING = "gemini-3.8-live-extended-thinking"

# ----- Gemini Live fake ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def live_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeLiveServer]:
    server_ssl, ca_path = make_tls(tmp_path)
    async with FakeLiveServer(server_ssl) as server:
        # The SDK reads these when genai.Client() is created.
        monkeypatch.setenv("SSL_CERT_FILE", ca_path)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("GOOGLE_API_KEY", "test-key")
        for name in ("GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_API_VERSION"):
            monkeypatch.delenv(name, raising=False)
        yield server


def _client_ssl(ca_path: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_path)


async def _receive_turn(session: Any) -> tuple[bytes, list[types.LiveServerMessage]]:
    """One model turn as the SDK yields it (receive() stops after turnComplete)."""
    audio = bytearray()
    messages = []
    async for message in session.receive():
        messages.append(message)
        if message.data:
            audio.extend(message.data)
    return bytes(audio), messages


@pytest.mark.asyncio
async def test_sdk_round_trip(live_server: FakeLiveServer) -> None:
    caller_pcm = os.urandom(3200)  # random bytes exercise '-' and '_' of URL-safe base64
    model_pcm = os.urandom(9601)
    client = genai.Client()
    async with client.aio.live.connect(model=MODEL_25, config={"response_modalities": ["AUDIO"]}) as session:
        fake = await live_server.next_session()
        assert fake.model == f"models/{MODEL_25}"
        assert fake.setup["generationConfig"] == {"responseModalities": ["AUDIO"]}
        assert fake.api_key == "test-key"

        await session.send_realtime_input(audio=types.Blob(data=caller_pcm, mime_type="audio/pcm;rate=16000"))
        await session.send_realtime_input(text="hello there")
        await fake.wait_for_audio(len(caller_pcm))
        assert await fake.wait_for_text("hello") == "hello there"
        assert bytes(fake.audio) == caller_pcm
        assert fake.audio_mime_types == {"audio/pcm;rate=16000"}

        await fake.send_output_transcription("Hi!")
        await fake.send_audio(model_pcm, chunk_bytes=1001)  # odd chunks split samples, as allowed
        await fake.send_turn_complete()
        received, messages = await _receive_turn(session)
        assert received == model_pcm
        assert messages[0].server_content.output_transcription.text == "Hi!"
        assert messages[-1].server_content.turn_complete

        await fake.send_interrupted()
        await fake.send_turn_complete()
        _, messages = await _receive_turn(session)
        assert messages[0].server_content.interrupted

        # 2.5 models take client_content at any time.
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="late")]))
        await session.send_realtime_input(text="sync")
        await fake.wait_for_text("sync")
        assert fake.client_contents[0]["turns"][0]["parts"] == [{"text": "late"}]
    await asyncio.wait_for(fake.closed.wait(), 5)
    assert fake.close_code == 1000
    assert fake.server_close_code is None


@pytest.mark.asyncio
async def test_sdk_tool_call_round_trip(live_server: FakeLiveServer) -> None:
    client = genai.Client()
    async with client.aio.live.connect(model=MODEL_25) as session:
        fake = await live_server.next_session()
        await fake.send_tool_call([{"id": "call-1", "name": "hang_up", "args": {"reason": "done"}}])
        message = await anext(session.receive())
        call = message.tool_call.function_calls[0]
        assert (call.id, call.name, call.args) == ("call-1", "hang_up", {"reason": "done"})
        response = types.FunctionResponse(id=call.id, name=call.name, response={"ok": True})
        await session.send_tool_response(function_responses=response)
        await session.send_realtime_input(text="sync")
        await fake.wait_for_text("sync")
        assert fake.tool_responses == [
            {"functionResponses": [{"id": "call-1", "name": "hang_up", "response": {"ok": True}}]}
        ]


@pytest.mark.asyncio
async def test_gemini31_takes_client_content_only_as_declared_initial_history(live_server: FakeLiveServer) -> None:
    client = genai.Client()
    history = types.Content(role="user", parts=[types.Part(text="earlier")])
    declared = types.LiveConnectConfig(history_config=types.HistoryConfig(initial_history_in_client_content=True))
    async with client.aio.live.connect(model=MODEL_3, config=declared) as session:
        fake = await live_server.next_session()
        await session.send_client_content(turns=history, turn_complete=True)  # seeding: allowed
        await session.send_realtime_input(text="now live")
        await session.send_client_content(turns=history)
        with pytest.raises(errors.APIError) as excinfo:
            await anext(session.receive())
    assert excinfo.value.code == 1007
    assert LATE_CLIENT_CONTENT_REASON in str(excinfo.value)
    assert fake.server_close_code == 1007
    assert len(fake.client_contents) == 1

    async with client.aio.live.connect(model=MODEL_3) as session:  # history not declared in the setup
        fake = await live_server.next_session()
        await session.send_client_content(turns=history, turn_complete=False)
        with pytest.raises(errors.APIError) as excinfo:
            await anext(session.receive())
    assert excinfo.value.code == 1007 and not fake.client_contents


def _declaring(behavior: types.Behavior) -> types.LiveConnectConfig:
    function = types.FunctionDeclaration(name="f", description="d", behavior=behavior)
    return types.LiveConnectConfig(tools=[types.Tool(function_declarations=[function])])


@pytest.mark.parametrize(
    ("model", "config", "outcome"),
    [
        (MODEL_25, types.LiveConnectConfig(
            proactivity=types.ProactivityConfig(proactive_audio=False), enable_affective_dialog=True,
            thinking_config=types.ThinkingConfig(thinking_budget=0)), "ok"),
        (MODEL_3, types.LiveConnectConfig(proactivity=types.ProactivityConfig(proactive_audio=True)), "hangs"),
        (MODEL_3, types.LiveConnectConfig(enable_affective_dialog=True), "hangs"),
        (MODEL_3, _declaring(types.Behavior.NON_BLOCKING), 1007),  # synchronous calls only
        (MODEL_3, _declaring(types.Behavior.BLOCKING), "ok"),
        (MODEL_38, types.LiveConnectConfig(thinking_config=types.ThinkingConfig(thinking_level="LOW")), 1007),
        (MODEL_38, types.LiveConnectConfig(proactivity=types.ProactivityConfig(proactive_audio=False)), 1007),
        (MODEL_38, types.LiveConnectConfig(proactivity=types.ProactivityConfig(proactive_audio=True)), "ok"),
        (MODEL_38, types.LiveConnectConfig(enable_affective_dialog=True), 1007),
        (MODEL_38, types.LiveConnectConfig(response_modalities=[types.Modality.TEXT]), 1007),
        (MODEL_38, _declaring(types.Behavior.BLOCKING), "ok"),
        (MODEL_38_THINKING, _declaring(types.Behavior.BLOCKING), 1007),  # asynchronous calls only
        (MODEL_38_THINKING, types.LiveConnectConfig(thinking_config=types.ThinkingConfig(thinking_level="HIGH")), "ok"),
        ("gemini-9-live", types.LiveConnectConfig(), 1008),  # no such model
    ],
)
@pytest.mark.asyncio
async def test_each_family_refuses_what_its_docs_say(
    live_server: FakeLiveServer, model: str, config: types.LiveConnectConfig, outcome: str | int
) -> None:
    connecting = genai.Client().aio.live.connect(model=model, config=config)
    if outcome == "ok":
        async with connecting:
            await live_server.next_session()
    elif outcome == "hangs":  # the setup is never answered
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                async with connecting:
                    pass
        assert live_server.hung_setups and not live_server.sessions
    else:
        with pytest.raises(errors.APIError) as excinfo:
            async with connecting:
                pass
        assert excinfo.value.code == outcome and not live_server.sessions


@pytest.mark.parametrize(("model", "more", "status"), [
    (MODEL_25, False, None), (MODEL_3, False, None), (MODEL_38, False, "IDLE"),
    (MODEL_38_THINKING, True, "IN_PROGRESS"), (MODEL_38_THINKING, False, "IDLE"),
])
@pytest.mark.asyncio
async def test_turn_complete_carries_interaction_status_where_the_family_has_it(
    live_server: FakeLiveServer, model: str, more: bool, status: str | None
) -> None:
    async with genai.Client().aio.live.connect(model=model) as session:
        fake = await live_server.next_session()
        await fake.send_turn_complete(more=more)
        messages = [await anext(session.receive()) for _ in range(2)]  # generationComplete, turnComplete
        content = messages[-1].server_content
        assert content.turn_complete
        assert content.interaction_status == (types.InteractionStatus(status) if status else None)
        if model != MODEL_38_THINKING:
            with pytest.raises(ValueError):
                await fake.send_turn_complete(more=True)  # only extended thinking speaks again unasked


@pytest.mark.asyncio
async def test_only_3_8_takes_context_updates_and_3_1_no_scheduled_results(live_server: FakeLiveServer) -> None:
    client = genai.Client()
    async with client.aio.live.connect(model=MODEL_38) as session:
        fake = await live_server.next_session()
        await session.send_context_update(system_instruction="Leave a message.")
        await session.send_realtime_input(text="sync")
        await fake.wait_for_text("sync")
        assert fake.system_instruction_text == "Leave a message."
    for model in (MODEL_25, MODEL_3):
        async with client.aio.live.connect(model=model) as session:
            fake = await live_server.next_session()
            await session.send_context_update(system_instruction="Leave a message.")
            with pytest.raises(errors.APIError) as excinfo:
                await anext(session.receive())
        assert excinfo.value.code == 1007 and fake.server_close_code == 1007
    async with client.aio.live.connect(model=MODEL_3) as session:
        fake = await live_server.next_session()
        response = types.FunctionResponse(
            id="c1", name="f", response={}, scheduling=types.FunctionResponseScheduling.WHEN_IDLE
        )
        await session.send_tool_response(function_responses=response)
        with pytest.raises(errors.APIError) as excinfo:
            await anext(session.receive())
    assert excinfo.value.code == 1007 and not fake.tool_responses


@pytest.mark.asyncio
async def test_live_rejects_missing_key_bad_json_and_refuses(
    live_server: FakeLiveServer, tmp_path: Path
) -> None:
    client_ssl = _client_ssl(os.environ["SSL_CERT_FILE"])
    url = live_server.base_url.replace("https", "wss")
    path = "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent"

    async with ws_connect(url + path, ssl=client_ssl) as ws:  # no key
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    async with ws_connect(url + path + "?key=k", ssl=client_ssl) as ws:  # key in the query works too
        await ws.send(json.dumps({"setup": {"model": f"models/{MODEL_38}"}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        await ws.send(json.dumps({"realtimeInput": {"text": "camel"}}))
        await ws.send(json.dumps({"bogus": {}}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert live_server.sessions[-1].texts == ["camel"]

    with pytest.raises(InvalidStatus):
        await ws_connect(url + "/ws/wrong", ssl=client_ssl)

    live_server.refuse_connections = True
    with pytest.raises(errors.APIError) as excinfo:
        async with genai.Client().aio.live.connect(model=MODEL_25):
            pass
    assert excinfo.value.code == 1011


@pytest.mark.asyncio
async def test_send_audio_realtime_pacing(live_server: FakeLiveServer) -> None:
    async with genai.Client().aio.live.connect(model=MODEL_25) as session:
        fake: FakeLiveSession = await live_server.next_session()
        log: list[tuple[float, int]] = []
        await fake.send_audio(bytes(9600), chunk_bytes=2400, realtime=True, send_time_log=log)  # 0.2 s
        await fake.send_turn_complete()
        received, _ = await _receive_turn(session)
    assert len(received) == 9600
    assert [offset for _, offset in log] == [0, 2400, 4800, 7200]
    assert 0.14 <= log[-1][0] - log[0][0] < 0.4  # last chunk due at 0.15 s


# ----- Twilio Media Streams fake ---------------------------------------------------------------


class _MediaEndpoint:
    """Stand-in for our /twilio/media endpoint: records what Twilio sends; the test drives replies."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.put_nowait(ws)
        async for raw in ws:
            message = json.loads(raw)
            self.received.append(message)
            self.inbox.put_nowait(message)
            if message.get("event") == "stop":
                await ws.close()  # what our server does when the call ends

    async def next_event(self, event: str) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.inbox.get(), 5)
            if message.get("event") == event:
                return message


@pytest_asyncio.fixture
async def media_endpoint() -> AsyncIterator[tuple[_MediaEndpoint, str]]:
    endpoint = _MediaEndpoint()
    async with serve(endpoint.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield endpoint, f"ws://127.0.0.1:{port}/twilio/media"


def _media(call: FakeTwilioCall, mulaw: bytes) -> str:
    payload = base64.b64encode(mulaw).decode()
    return json.dumps({"event": "media", "streamSid": call.stream_sid, "media": {"payload": payload}})


def _mark(call: FakeTwilioCall, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": call.stream_sid, "mark": {"name": name}})


@pytest.mark.asyncio
async def test_twilio_inbound_messages_are_twilio_shaped(media_endpoint: tuple[_MediaEndpoint, str]) -> None:
    endpoint, url = media_endpoint
    signature = FakeTwilioCall.sign("auth-token", "wss://example.test/twilio/media")
    call = FakeTwilioCall(url, signature=signature, custom_parameters={"caller": "+15550100"})
    await call.connect()
    ws = await asyncio.wait_for(endpoint.connections.get(), 5)
    assert ws.request is not None and ws.request.headers["X-Twilio-Signature"] == signature

    log: list[tuple[float, int]] = []
    await call.send_audio(bytes(range(200)) + bytes(200), send_time_log=log)  # 2.5 frames -> 3
    await call.send_dtmf("5")
    await call.stop()
    assert call.closed.is_set() and call.close_code == 1000

    connected, start, *media, dtmf, stop = endpoint.received
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["sequenceNumber"] == "1" and start["streamSid"] == call.stream_sid
    assert start["start"] == {
        "accountSid": call.account_sid,
        "streamSid": call.stream_sid,
        "callSid": call.call_sid,
        "tracks": ["inbound"],
        "customParameters": {"caller": "+15550100"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    assert [m["sequenceNumber"] for m in media] == ["2", "3", "4"]
    assert [m["media"]["chunk"] for m in media] == ["1", "2", "3"]
    assert all(m["media"]["track"] == "inbound" and isinstance(m["media"]["timestamp"], str) for m in media)
    sent = b"".join(base64.b64decode(m["media"]["payload"]) for m in media)
    assert sent == bytes(range(200)) + bytes(200) + b"\xff" * 80  # tail padded with mu-law silence
    assert dtmf == {
        "event": "dtmf",
        "sequenceNumber": "5",
        "streamSid": call.stream_sid,
        "dtmf": {"track": "inbound_track", "digit": "5"},
    }
    assert stop["sequenceNumber"] == "6"
    assert stop["stop"] == {"accountSid": call.account_sid, "callSid": call.call_sid}
    assert [index for _, index in log] == [0, 1, 2]
    assert 0.035 <= log[2][0] - log[0][0] < 0.2  # 20 ms per frame


@pytest.mark.asyncio
async def test_twilio_playback_and_marks(media_endpoint: tuple[_MediaEndpoint, str]) -> None:
    endpoint, url = media_endpoint
    async with FakeTwilioCall(url, signature=None) as call:
        ws = await asyncio.wait_for(endpoint.connections.get(), 5)
        await ws.send(_mark(call, "idle"))  # nothing queued: echoed at once
        assert await call.wait_for_mark("idle", timeout=0.1) == "idle"
        echo = await endpoint.next_event("mark")
        assert echo == {
            "event": "mark",
            "sequenceNumber": "2",
            "streamSid": call.stream_sid,
            "mark": {"name": "idle"},
        }

        sent_at = time.monotonic()
        await ws.send(_media(call, b"\x7f" * 1600))  # 0.2 s of audio
        await ws.send(_mark(call, "end"))
        await call.wait_for_audio(1600)
        assert call.played_bytes() < 1600
        await call.wait_for_mark("end")
        assert time.monotonic() - sent_at >= 0.19
        assert call.played_bytes() == 1600
        assert call.received_audio == b"\x7f" * 1600 and call.media_times[0][1] == 0
        assert call.errors == []
    assert call.closed.is_set()


@pytest.mark.asyncio
async def test_twilio_clear_drops_audio_and_flushes_marks(media_endpoint: tuple[_MediaEndpoint, str]) -> None:
    endpoint, url = media_endpoint
    async with FakeTwilioCall(url, signature=None) as call:
        ws = await asyncio.wait_for(endpoint.connections.get(), 5)
        await ws.send(_media(call, b"\x00" * 8000))  # 1 s of audio
        await ws.send(_mark(call, "reply-1"))
        await call.wait_for_audio(8000)
        await asyncio.sleep(0.1)  # let ~800 bytes "play"
        await ws.send(json.dumps({"event": "clear", "streamSid": call.stream_sid}))
        cleared_at = await call.wait_for_clear()
        assert await call.wait_for_mark("reply-1", timeout=0.5) == "reply-1"
        assert time.monotonic() - cleared_at < 0.5  # not after the 1 s of audio
        played = call.played_bytes()
        assert 600 <= played < 4000  # ~800 played before the clear; never all 8000
        await asyncio.sleep(0.05)
        assert call.played_bytes() == played  # the rest was discarded
        assert call.errors == []


@pytest.mark.asyncio
async def test_twilio_records_protocol_violations(media_endpoint: tuple[_MediaEndpoint, str]) -> None:
    endpoint, url = media_endpoint
    async with FakeTwilioCall(url, signature=None) as call:
        ws = await asyncio.wait_for(endpoint.connections.get(), 5)
        await ws.send(json.dumps({"event": "media", "streamSid": "MZwrong", "media": {"payload": "AAAA"}}))
        await ws.send(json.dumps({"event": "play", "streamSid": call.stream_sid}))
        bad_base64 = {"event": "media", "streamSid": call.stream_sid, "media": {"payload": "-_-_"}}
        await ws.send(json.dumps(bad_base64))
        await ws.send(b"binary")
        await ws.send("not json")
        await ws.send(_mark(call, "sync"))
        await call.wait_for_mark("sync")
        assert len(call.errors) == 5, call.errors
        assert call.received_audio == b""


@pytest.mark.asyncio
async def test_twilio_hangup_ends_all_tasks(media_endpoint: tuple[_MediaEndpoint, str]) -> None:
    endpoint, url = media_endpoint
    call = FakeTwilioCall(url, signature=None)
    await call.connect()
    ws = await asyncio.wait_for(endpoint.connections.get(), 5)
    await ws.send(_media(call, bytes(8000)))
    await ws.send(_mark(call, "never"))
    await call.wait_for_audio(8000)
    await call.hangup(abrupt=True)
    assert call.closed.is_set() and call.close_code == 1006
    assert call._receiver is not None and call._receiver.done()
    assert call._player is not None and call._player.done()
    assert "stop" not in [m["event"] for m in endpoint.received]
    with pytest.raises(ConnectionError):
        await call.wait_for_mark("never", timeout=1)
