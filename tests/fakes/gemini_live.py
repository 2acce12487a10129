"""A protocol-faithful fake of the Gemini Live API (BidiGenerateContent) for tests.

It speaks the Gemini Developer API wire format that google-genai's
``client.aio.live.connect()`` uses, over a real TLS WebSocket on 127.0.0.1:

* path ``/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent``, or
  Vertex AI's ``/ws/google.cloud.aiplatform.{version}.LlmBidiService/BidiGenerateContent``;
  any other path is refused with HTTP 404 during the handshake;
* the API key arrives in the ``x-goog-api-key`` header (the SDK's way) or as ``?key=``; on the
  Vertex AI path an OAuth access token arrives as ``Authorization: Bearer``, checked against
  ``vertex_tokens`` (what a token server issued); a missing key or token closes with 1008;
* the first client message is ``{"setup": {...}}``, answered with ``{"setupComplete": {}}``
  once the model's family (``gemini_families.py``) accepts it: an unknown model is closed with
  1008, what the family refuses with 1007, and what makes its setup hang is never answered;
* each family's rules hold for the session: 3.1 takes client_content only as declared initial
  history and no scheduled tool results; only 3.8 takes contextUpdate; turnComplete carries
  interactionStatus on 3.8 (IN_PROGRESS between the utterances of one extended-thinking answer);
* later client messages have one top-level key (``realtime_input``, ``client_content``,
  ``tool_response``; camelCase accepted too). Anything else, or bad JSON, closes with 1007;
* server messages are camelCase JSON sent as *binary* frames, as the real service does.

Point the real SDK at it with ``GOOGLE_GEMINI_BASE_URL=server.base_url``,
``SSL_CERT_FILE=<ca pem from make_tls>`` and any ``GOOGLE_API_KEY``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fakes import gemini_families
from tests.fakes.gemini_families import Family
from tests.fakes.waiting import Changes

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

LATE_CLIENT_CONTENT_REASON = "client_content is not supported after the session started; use realtime_input"
MISSING_KEY_REASON = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
INVALID_KEY_REASON = "API key not valid. Please pass a valid API key."

OUTPUT_MIME_TYPE = "audio/pcm;rate=24000"
OUTPUT_BYTES_PER_SECOND = 24_000 * 2  # 24 kHz, 16-bit mono

_PATH_RE = re.compile(
    r"^/+ws/google\.ai\.generativelanguage\.[\w.]+\.GenerativeService\.BidiGenerateContent$"
)
_VERTEX_PATH_RE = re.compile(r"^/+ws/google\.cloud\.aiplatform\.[\w.]+\.LlmBidiService/BidiGenerateContent$")
CONTEXT_UPDATE_REASON = "contextUpdate is not supported by this model."
BAD_TOKEN_REASON = "Request had invalid authentication credentials. Expected OAuth 2 access token."

# Both spellings of each client message kind map to one canonical name.
_CLIENT_MESSAGE_KINDS = {
    "setup": "setup",
    "realtime_input": "realtime_input",
    "realtimeInput": "realtime_input",
    "client_content": "client_content",
    "clientContent": "client_content",
    "tool_response": "tool_response",
    "toolResponse": "tool_response",
    # The SDK can send this (send_context_update); recorded, otherwise ignored.
    "context_update": "context_update",
    "contextUpdate": "context_update",
}


def make_tls(tmp_dir: str | Path) -> tuple[ssl.SSLContext, str]:
    """Return a server SSL context for 127.0.0.1/localhost and the path of its CA PEM."""
    ca = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ssl)
    ca_path = Path(tmp_dir) / "fake-gemini-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return server_ssl, str(ca_path)


class _ProtocolError(Exception):
    """A client mistake the real service answers by closing the socket."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def _snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _field(obj: dict[str, Any], snake_name: str) -> Any:
    """Read a field that protobuf JSON accepts in snake_case or camelCase."""
    if snake_name in obj:
        return obj[snake_name]
    return obj.get(_snake_to_camel(snake_name))


def _decode_base64(data: Any) -> bytes:
    """Decode protobuf-JSON bytes: standard or URL-safe alphabet, padding optional."""
    if not isinstance(data, str):
        raise _ProtocolError(CLOSE_INVALID_PAYLOAD, "Invalid value for bytes field: expected a base64 string")
    normalized = data.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise _ProtocolError(CLOSE_INVALID_PAYLOAD, "Invalid value for bytes field: bad base64") from None


def _parse_json_object(raw: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _ProtocolError(CLOSE_INVALID_PAYLOAD, "Invalid JSON payload received.") from None
    if not isinstance(message, dict):
        raise _ProtocolError(CLOSE_INVALID_PAYLOAD, "Invalid JSON payload received. Expected an object.")
    return message


def _message_kind(message: dict[str, Any]) -> tuple[str, Any]:
    """Return (canonical kind, body) of a client message with exactly one known top-level key."""
    for key in message:
        if key not in _CLIENT_MESSAGE_KINDS:
            reason = f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
            raise _ProtocolError(CLOSE_INVALID_PAYLOAD, reason)
    if len(message) != 1:
        reason = "Invalid JSON payload received. Expected exactly one message."
        raise _ProtocolError(CLOSE_INVALID_PAYLOAD, reason)
    ((key, body),) = message.items()
    if not isinstance(body, dict):
        raise _ProtocolError(CLOSE_INVALID_PAYLOAD, f'Invalid value at "{key}": expected an object.')
    return _CLIENT_MESSAGE_KINDS[key], body


_PCM16K_FRAME_BYTES = 640  # 20 ms of the service's 16 kHz audio


def audio_message(pcm: bytes) -> dict[str, Any]:
    # Server->client bytes use the standard base64 alphabet (protobuf JSON output).
    inline = {"mimeType": OUTPUT_MIME_TYPE, "data": base64.b64encode(pcm).decode("ascii")}
    return {"serverContent": {"modelTurn": {"parts": [{"inlineData": inline}]}}}


def _api_key(request: Request) -> str | None:
    header_key = request.headers.get("x-goog-api-key")
    if header_key:
        return header_key
    query_keys = parse_qs(urlsplit(request.path).query).get("key")
    return query_keys[0] if query_keys else None


def _close_reason(reason: str) -> str:
    """Fit a close reason in the 123 bytes a close frame allows (the real service truncates too)."""
    return reason.encode()[:123].decode(errors="ignore")


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class FakeLiveSession:
    """One Live connection that completed setup: what the client sent, and server-side controls."""

    def __init__(
        self,
        ws: ServerConnection,
        setup: dict[str, Any],
        api_key: str,
        binary_frames: bool,
        issued_handles: set[str] | None = None,
        family: Family = gemini_families.GEMINI_25,
    ) -> None:
        self._ws = ws
        self.family = family
        self._binary_frames = binary_frames
        self._issued_handles = issued_handles if issued_handles is not None else set()
        self.setup = setup
        resumption = _field(setup, "session_resumption")
        # The handle this session resumed from (None: a fresh session).
        self.resumed_from: str | None = _field(resumption, "handle") if isinstance(resumption, dict) else None
        self.model: str = setup.get("model", "")
        self.api_key = api_key
        self.headers: Headers = ws.request.headers if ws.request else Headers()
        self.messages: list[dict[str, Any]] = []
        self.audio = bytearray()
        # Monotonic arrival time of each 20 ms of caller audio: a message carrying several frames
        # (the service sends frames that waited together as one) counts once per frame.
        self.audio_times: list[float] = []
        # Caller audio bytes in client messages 1..n at [n - 1] (what a consumed message index covers).
        self.audio_through: list[int] = []
        self.audio_mime_types: set[str] = set()
        self.texts: list[str] = []
        self.client_contents: list[dict[str, Any]] = []
        self.tool_responses: list[dict[str, Any]] = []
        self.system_instructions: list[Any] = []  # from contextUpdate, in order
        self.vertex = bool(ws.request and _VERTEX_PATH_RE.match(urlsplit(ws.request.path).path))
        self.closed = asyncio.Event()
        self.close_code: int | None = None  # set only when the client started the close
        self.close_reason: str | None = None
        self.server_close_code: int | None = None  # set when this fake closed the socket
        self.server_close_reason: str | None = None
        self._realtime_started = False
        # Declared initial history is open until a client_content with turnComplete ends it.
        self._history_open = gemini_families.declares_history(setup)
        self._consumed_texts: set[int] = set()
        self._changes = Changes(self.closed, "session")

    # ----- client -> server -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async for raw in self._ws:
                self._handle(raw)
                await self._changes.notify()
        except (_ProtocolError, gemini_families.Refused) as error:
            await self._close_with(error.code, error.reason)
        except ConnectionClosed:
            pass
        finally:
            self._record_client_close()
            self.closed.set()
            await self._changes.notify()

    def _handle(self, raw: str | bytes) -> None:
        message = _parse_json_object(raw)
        self.messages.append(message)
        kind, body = _message_kind(message)
        handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "setup": self._on_repeated_setup,
            "realtime_input": self._on_realtime_input,
            "client_content": self._on_client_content,
            "tool_response": self._on_tool_response,
            "context_update": self._on_context_update,
        }
        handlers[kind](body)
        self.audio_through.append(len(self.audio))

    def _on_repeated_setup(self, body: dict[str, Any]) -> None:
        raise _ProtocolError(CLOSE_INVALID_PAYLOAD, "setup must only be sent once, as the first message.")

    def _on_realtime_input(self, body: dict[str, Any]) -> None:
        self._realtime_started = True
        audio = _field(body, "audio")
        if audio is not None:
            self._add_audio(audio)
        # Deprecated media_chunks carry audio too (SDK's send_realtime_input(media=...)).
        for chunk in _field(body, "media_chunks") or []:
            if str(_field(chunk, "mime_type") or "").startswith("audio/"):
                self._add_audio(chunk)
        text = _field(body, "text")
        if text is not None:
            self.texts.append(text)

    def _add_audio(self, blob: dict[str, Any]) -> None:
        if not isinstance(blob, dict):
            reason = "Invalid value at realtime_input.audio: expected a Blob."
            raise _ProtocolError(CLOSE_INVALID_PAYLOAD, reason)
        data = _decode_base64(blob.get("data", ""))
        self.audio.extend(data)
        self.audio_times.extend([time.monotonic()] * max(1, round(len(data) / _PCM16K_FRAME_BYTES)))
        mime_type = _field(blob, "mime_type")
        if mime_type:
            self.audio_mime_types.add(mime_type)

    def _on_client_content(self, body: dict[str, Any]) -> None:
        in_history = self._history_open and not self._realtime_started
        if not self.family.late_client_content and not in_history:
            raise _ProtocolError(CLOSE_INVALID_PAYLOAD, LATE_CLIENT_CONTENT_REASON)
        if _field(body, "turn_complete"):
            self._history_open = False
        self.client_contents.append(body)

    def _on_tool_response(self, body: dict[str, Any]) -> None:
        gemini_families.check_tool_response(self.family, body)
        self.tool_responses.append(body)

    def _on_context_update(self, body: dict[str, Any]) -> None:
        if not self.family.context_update:
            raise _ProtocolError(CLOSE_INVALID_PAYLOAD, CONTEXT_UPDATE_REASON)
        instruction = _field(body, "system_instruction")
        if instruction is not None:
            self.system_instructions.append(instruction)

    @property
    def system_instruction_text(self) -> str:
        """The system instructions in force: the setup's, or the latest contextUpdate's."""
        current = self.system_instructions[-1] if self.system_instructions else _field(self.setup, "system_instruction")
        return "".join(part.get("text", "") for part in (current or {}).get("parts", []))

    def behaviour(self, name: str) -> str:
        """How the function `name` declared in the setup runs on this model."""
        for tool in _field(self.setup, "tools") or ():
            for declaration in _field(tool, "function_declarations") or ():
                if declaration.get("name") == name:
                    return gemini_families.default_behaviour(self.family, declaration)
        raise KeyError(name)

    def _record_client_close(self) -> None:
        protocol = self._ws.protocol
        if protocol.close_rcvd is not None and protocol.close_rcvd_then_sent:
            self.close_code = protocol.close_rcvd.code
            self.close_reason = protocol.close_rcvd.reason

    # ----- waiting ----------------------------------------------------------------------------

    def _first_unconsumed_text(self, contains: str) -> int | None:
        for index, text in enumerate(self.texts):
            if index not in self._consumed_texts and contains in text:
                return index
        return None

    async def wait_for_text(self, contains: str = "", timeout: float = 5) -> str:
        """Return the first realtime_input text containing `contains` not returned by an earlier wait."""
        def found() -> bool:
            return self._first_unconsumed_text(contains) is not None

        await self._changes.wait_until(found, timeout, f"text containing {contains!r}")
        index = self._first_unconsumed_text(contains)
        assert index is not None
        self._consumed_texts.add(index)
        return self.texts[index]

    async def wait_for_audio(self, nbytes: int, timeout: float = 5) -> None:
        await self._changes.wait_until(lambda: len(self.audio) >= nbytes, timeout, f"{nbytes} bytes of audio")

    # ----- server -> client -------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        """Send any raw server message."""
        text = json.dumps(message)
        await self._ws.send(text.encode() if self._binary_frames else text)

    async def send_together(self, messages: list[dict[str, Any]]) -> None:
        """Several server messages in one write, as a burst arrives: the service reads them all
        before its call takes the first."""
        for message in messages:
            text = json.dumps(message).encode()
            if self._binary_frames:
                self._ws.protocol.send_binary(text)
            else:
                self._ws.protocol.send_text(text)
        self._ws.transport.write(b"".join(self._ws.protocol.data_to_send()))

    async def send_raw(self, data: str | bytes) -> None:
        """Send one frame exactly as given (text for str, binary for bytes): for malformed-message tests."""
        await self._ws.send(data)

    async def send_audio(
        self,
        pcm24k: bytes,
        chunk_bytes: int = 4800,
        realtime: bool = False,
        send_time_log: list[tuple[float, int]] | None = None,
    ) -> None:
        """Send PCM as modelTurn inlineData chunks; realtime=True paces them at 24 kHz playback speed."""
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        started = time.monotonic()
        for offset in range(0, len(pcm24k), chunk_bytes):
            if realtime:
                # Deadlines come from one start time, so pacing does not drift.
                await _sleep_until(started + offset / OUTPUT_BYTES_PER_SECOND)
            await self.send(audio_message(pcm24k[offset : offset + chunk_bytes]))
            if send_time_log is not None:
                send_time_log.append((time.monotonic(), offset))

    async def send_turn_complete(self, more: bool = False) -> None:
        """End an utterance. `more`: the model is still working and will speak again (extended
        thinking only); families with interaction_status say IN_PROGRESS, or IDLE when done."""
        if more and self.family is not gemini_families.GEMINI_38_THINKING:
            raise ValueError(f"a {self.family.name} model does not speak again unasked")
        await self.send({"serverContent": {"generationComplete": True}})
        content: dict[str, Any] = {"turnComplete": True}
        if self.family.interaction_status:
            content["interactionStatus"] = "IN_PROGRESS" if more else "IDLE"
        await self.send({"serverContent": content})

    async def send_interrupted(self) -> None:
        await self.send({"serverContent": {"interrupted": True}})

    async def send_input_transcription(self, text: str) -> None:
        await self.send({"serverContent": {"inputTranscription": {"text": text}}})

    async def send_output_transcription(self, text: str) -> None:
        await self.send({"serverContent": {"outputTranscription": {"text": text}}})

    async def send_tool_call(self, function_calls: list[dict[str, Any]]) -> None:
        """function_calls: [{"id": ..., "name": ..., "args": {...}}]."""
        await self.send({"toolCall": {"functionCalls": function_calls}})

    async def send_tool_call_cancellation(self, ids: list[str]) -> None:
        await self.send({"toolCallCancellation": {"ids": ids}})

    async def send_go_away(self, time_left: str = "5s") -> None:
        await self.send({"goAway": {"timeLeft": time_left}})

    async def send_session_resumption_update(self, new_handle: str, resumable: bool = True) -> None:
        if resumable and new_handle:
            self._issued_handles.add(new_handle)
        update: dict[str, Any] = {"resumable": resumable}
        if new_handle:
            update["newHandle"] = new_handle
        await self.send({"sessionResumptionUpdate": update})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close from the server side and wait until the connection has ended."""
        await self._close_with(code, reason)
        await self.closed.wait()

    async def _close_with(self, code: int, reason: str) -> None:
        if self.server_close_code is None and self._ws.protocol.close_rcvd is None:
            self.server_close_code = code
            self.server_close_reason = reason
        await self._ws.close(code, _close_reason(reason))


class FakeLiveServer:
    """TLS WebSocket server on 127.0.0.1 speaking the Gemini Live protocol."""

    def __init__(
        self, ssl_context: ssl.SSLContext, *, api_key: str | None = None, binary_frames: bool = True
    ) -> None:
        """api_key: if set, any other key is refused (1008). binary_frames: send JSON as binary frames."""
        self._ssl_context = ssl_context
        self._expected_api_key = api_key
        self.vertex_tokens: set[str] = set()  # access tokens the Vertex AI path takes
        self.hung_setups: list[dict[str, Any]] = []  # setups the family never answers
        self._binary_frames = binary_frames
        self._server: Server | None = None
        self._new_sessions: asyncio.Queue[FakeLiveSession] = asyncio.Queue()
        self.sessions: list[FakeLiveSession] = []
        self.refuse_connections = False
        self.answer_setup = True  # False: a service that takes the setup and never says setupComplete
        # Handles this server gave out; a setup resuming from any other is refused (1008), like an
        # expired handle. Tests may remove handles to expire them.
        self.issued_handles: set[str] = set()  # True: new connections get 1011, like a service that is down
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await serve(
            self._serve_connection,
            "127.0.0.1",
            0,
            ssl=self._ssl_context,
            process_request=self._check_path,
            max_size=16 * 2**20,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection (1001) and wait for all handlers to finish."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeLiveServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def next_session(self, timeout: float = 5) -> FakeLiveSession:
        """Return the next session (in connection order) not yet returned by this method."""
        try:
            return await asyncio.wait_for(self._new_sessions.get(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no new Live session within {timeout}s") from None

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if _PATH_RE.match(path) or _VERTEX_PATH_RE.match(path):
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")

    def _auth_failure(self, request: Request) -> str | None:
        if _VERTEX_PATH_RE.match(urlsplit(request.path).path):
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            return None if bearer in self.vertex_tokens else BAD_TOKEN_REASON
        key = _api_key(request)
        if not key:
            return MISSING_KEY_REASON
        if self._expected_api_key is not None and key != self._expected_api_key:
            return INVALID_KEY_REASON
        return None

    async def _serve_connection(self, ws: ServerConnection) -> None:
        if self.refuse_connections:
            await self._refuse(ws)
            return
        assert ws.request is not None
        failure = self._auth_failure(ws.request)
        if failure is not None:
            await ws.close(CLOSE_POLICY_VIOLATION, _close_reason(failure))
            return
        setup = await self._receive_setup(ws)
        if setup is None:
            return
        try:
            family, completes = gemini_families.check_setup(setup)
        except gemini_families.Refused as refused:
            await ws.close(refused.code, _close_reason(refused.reason))
            return
        if not completes or not self.answer_setup:  # the service never answers such a setup
            self.hung_setups.append(setup)
            with contextlib.suppress(ConnectionClosed):
                await ws.wait_closed()
            return
        resumption = _field(setup, "session_resumption")
        handle = _field(resumption, "handle") if isinstance(resumption, dict) else None
        if handle is not None and handle not in self.issued_handles:
            await ws.close(CLOSE_POLICY_VIOLATION, "Session resumption handle is invalid or expired.")
            return
        session = FakeLiveSession(
            ws, setup, _api_key(ws.request) or "", self._binary_frames, self.issued_handles, family
        )
        try:
            await session.send({"setupComplete": {}})
        except ConnectionClosed:
            return
        self.sessions.append(session)
        self._new_sessions.put_nowait(session)
        await session._run()

    async def _refuse(self, ws: ServerConnection) -> None:
        """Close with 1011 once the setup is in (or after 1 s), so the SDK deterministically
        raises APIError(1011) instead of sometimes failing in its own setup send."""
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 1.0)
        await ws.close(CLOSE_INTERNAL_ERROR, "Internal error encountered.")

    async def _receive_setup(self, ws: ServerConnection) -> dict[str, Any] | None:
        """Return the setup body, or close the socket (1007) and return None."""
        try:
            message = _parse_json_object(await ws.recv())
            kind, body = _message_kind(message)
            if kind != "setup":
                raise _ProtocolError(CLOSE_INVALID_PAYLOAD, "The first message must be setup.")
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise _ProtocolError(CLOSE_INVALID_PAYLOAD, "setup.model is required.")
            return body
        except _ProtocolError as error:
            await ws.close(error.code, _close_reason(error.reason))
        except ConnectionClosed:
            pass
        return None
