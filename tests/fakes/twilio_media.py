"""A protocol-faithful fake of Twilio's side of a bidirectional Media Stream (<Connect><Stream>).

It connects to our WebSocket the way Twilio does and sends Twilio's exact JSON
(see "Media Streams - WebSocket Messages"): ``connected`` (no sequenceNumber), then
``start`` with sequenceNumber "1", then ``media``/``dtmf``/``mark``/``stop`` with
increasing string sequenceNumbers. Media chunks, timestamps and sequence numbers are
strings; audio is 8 kHz mu-law in 160-byte (20 ms) frames, standard base64.

For what the server sends back it behaves like Twilio's player: outbound media is
queued and "played" at 8000 bytes/s; a ``mark`` is echoed back once the audio queued
before it has played; ``clear`` drops unplayed audio and echoes every pending mark at
once. Anything the server sends that Twilio would not accept is recorded in ``errors``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fakes.waiting import Changes
from tests.timing import Instant

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_SECONDS = 0.02
PLAYBACK_BYTES_PER_SECOND = 8000
MULAW_SILENCE = 0xFF
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
USER_AGENT = "Twilio.TmeWs/1.0"


def _new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _frames(mulaw: bytes) -> list[bytes]:
    """Split into 160-byte frames; Twilio only sends whole frames, so pad the tail with silence."""
    frames = [mulaw[i : i + FRAME_BYTES] for i in range(0, len(mulaw), FRAME_BYTES)]
    if frames and len(frames[-1]) < FRAME_BYTES:
        frames[-1] = frames[-1] + bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(frames[-1]))
    return frames


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class FakeTwilioCall:
    """One phone call's Media Stream, as Twilio drives it against our server."""

    def __init__(
        self,
        ws_url: str,
        *,
        signature: str | None,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str | None = None,
        custom_parameters: dict[str, str] | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.signature = signature
        self.call_sid = call_sid or _new_sid("CA")
        self.stream_sid = stream_sid or _new_sid("MZ")
        self.account_sid = account_sid or _new_sid("AC")
        self.custom_parameters = dict(custom_parameters or {})
        # What the server sent us.
        self.received_audio = bytearray()
        self.media_times: list[tuple[float, int]] = []
        self.marks_sent_back: list[str] = []
        self.clears: list[float] = []  # time.monotonic() of each clear's arrival
        self.clear_instants: list[Instant] = []  # the same, with the loop's wait for a CPU (tests/timing.py)
        self.messages: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.closed = asyncio.Event()
        self.closed_at: float | None = None  # time.monotonic() when the socket closed
        self.close_code: int | None = None
        self.close_reason: str | None = None
        # Our outbound stream state.
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._sequence = 0
        self._chunk = 0
        self._stream_started: float | None = None
        self._next_frame_due = 0.0
        # Playback model: when the queued audio finishes, and marks waiting for it.
        self._play_end = 0.0
        self._discarded_bytes = 0
        self._pending_marks: deque[tuple[str, float]] = deque()
        self._marks_changed = asyncio.Event()
        self._consumed_marks: set[int] = set()
        self._consumed_clears = 0
        self._changes = Changes(self.closed, "socket")
        self._receiver: asyncio.Task[None] | None = None
        self._player: asyncio.Task[None] | None = None

    @staticmethod
    def sign(auth_token: str, signed_url: str) -> str:
        """X-Twilio-Signature for a WebSocket upgrade: the URL signed with no POST params."""
        return RequestValidator(auth_token).compute_signature(signed_url, {})

    # ----- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTwilioCall:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.hangup()

    async def open_only(self) -> None:
        """Open the socket and start the receive loop without sending anything."""
        headers = {"X-Twilio-Signature": self.signature} if self.signature is not None else {}
        self._ws = await connect(
            self.ws_url, additional_headers=headers, user_agent_header=USER_AGENT, compression=None
        )
        self._player = asyncio.create_task(self._play_marks(), name="fake-twilio-player")
        self._receiver = asyncio.create_task(self._receive_loop(), name="fake-twilio-receiver")

    async def connect(self) -> None:
        """Open the socket and send "connected" then "start", like Twilio at call pickup."""
        await self.open_only()
        await self._send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._stream_started = time.monotonic()
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": self.custom_parameters,
            "mediaFormat": dict(MEDIA_FORMAT),
        }
        await self._send_numbered({"event": "start", "start": start, "streamSid": self.stream_sid})

    async def stop(self, timeout: float = 2.0) -> None:
        """Send "stop", give the server `timeout` s to close the socket, else close it ourselves."""
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        with contextlib.suppress(ConnectionClosed):
            await self._send_numbered({"event": "stop", "stop": stop, "streamSid": self.stream_sid})
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            await self._connection().close()
        await self._join()

    async def hangup(self, abrupt: bool = False) -> None:
        """Close the socket without a "stop" event; abrupt=True drops TCP with no close frame."""
        if self._ws is None:
            return
        if abrupt:
            self._ws.transport.abort()
        else:
            await self._ws.close()
        await self._join()

    async def _join(self) -> None:
        if self._receiver is not None:
            await self._receiver

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("call is not connected; use connect() or open_only() first")
        return self._ws

    # ----- sending ------------------------------------------------------------------------------

    async def send_raw(self, data: str | bytes) -> None:
        """Send any frame: text for str, binary for bytes (for malformed-message tests)."""
        await self._connection().send(data)

    async def send_together(self, messages: list[dict[str, Any]]) -> None:
        """Several messages in one write, as a backlog arrives after a stall: the service reads
        them all before its call takes the first."""
        connection = self._connection()
        for message in messages:
            connection.protocol.send_text(json.dumps(message).encode())
        connection.transport.write(b"".join(connection.protocol.data_to_send()))

    async def send_event(self, message: dict[str, Any]) -> None:
        """Send any JSON message as-is (no sequenceNumber added)."""
        await self._send_json(message)

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self._connection().send(json.dumps(message))

    async def _send_numbered(self, message: dict[str, Any]) -> None:
        """Send with the next sequenceNumber; the lock keeps numbers in wire order."""
        async with self._send_lock:
            self._sequence += 1
            numbered = {"event": message["event"], "sequenceNumber": str(self._sequence), **message}
            await self._send_json(numbered)

    async def send_audio(
        self, mulaw: bytes, realtime: bool = True, send_time_log: list[tuple[float, int]] | None = None
    ) -> None:
        """Send caller audio as 20 ms media frames; send_time_log gets (time, frame index in `mulaw`)."""
        frames = _frames(mulaw)
        # Continue the previous call's frame clock so back-to-back calls stay 20 ms apart.
        first_due = max(self._next_frame_due, time.monotonic())
        for index, frame in enumerate(frames):
            if realtime:
                await _sleep_until(first_due + index * FRAME_SECONDS)
            await self._send_media(frame)
            if send_time_log is not None:
                send_time_log.append((time.monotonic(), index))
        if realtime:
            self._next_frame_due = first_due + len(frames) * FRAME_SECONDS

    async def _send_media(self, frame: bytes) -> None:
        if self._stream_started is None:
            raise RuntimeError("media before start; use connect()")
        self._chunk += 1
        media = {
            "track": "inbound",
            "chunk": str(self._chunk),
            "timestamp": str(int((time.monotonic() - self._stream_started) * 1000)),
            "payload": base64.b64encode(frame).decode("ascii"),
        }
        await self._send_numbered({"event": "media", "media": media, "streamSid": self.stream_sid})

    async def send_dtmf(self, digit: str) -> None:
        dtmf = {"track": "inbound_track", "digit": digit}
        await self._send_numbered({"event": "dtmf", "streamSid": self.stream_sid, "dtmf": dtmf})

    async def _echo_mark(self, name: str) -> None:
        await self._send_numbered({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        self.marks_sent_back.append(name)
        await self._changes.notify()

    # ----- receiving ----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        ws = self._connection()
        try:
            async for raw in ws:
                await self._handle(raw)
                await self._changes.notify()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self.close_reason = ws.close_reason
            self.closed_at = time.monotonic()
            self.closed.set()
            await self._stop_player()
            await self._changes.notify()

    async def _stop_player(self) -> None:
        if self._player is not None:
            self._player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._player

    async def _handle(self, raw: str | bytes) -> None:
        message = self._parse(raw)
        if message is None:
            return
        handlers: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
            "media": self._on_media,
            "mark": self._on_mark,
            "clear": self._on_clear,
        }
        event = message.get("event")
        handler = handlers.get(event) if isinstance(event, str) else None
        if handler is None:
            self.errors.append(f"unsupported event {event!r}: {message}")
            return
        if message.get("streamSid") != self.stream_sid:
            self.errors.append(f"{event}: streamSid {message.get('streamSid')!r} != {self.stream_sid!r}")
            return
        await handler(message)

    def _parse(self, raw: str | bytes) -> dict[str, Any] | None:
        """Decode a server frame; record (and drop) anything that is not a JSON object in a text frame."""
        if isinstance(raw, bytes):
            self.errors.append(f"binary frame ({len(raw)} bytes); Twilio expects JSON text frames")
            return None
        try:
            message = json.loads(raw)
        except json.JSONDecodeError:
            self.errors.append(f"invalid JSON: {raw[:200]!r}")
            return None
        if not isinstance(message, dict):
            self.errors.append(f"not a JSON object: {raw[:200]!r}")
            return None
        self.messages.append(message)
        return message

    async def _on_media(self, message: dict[str, Any]) -> None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str) or not payload:
            self.errors.append(f"media without payload: {message}")
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except binascii.Error:
            self.errors.append(f"media payload is not standard base64: {payload[:60]!r}")
            return
        now = time.monotonic()
        self.media_times.append((now, len(self.received_audio)))
        self.received_audio.extend(audio)
        self._play_end = max(self._play_end, now) + len(audio) / PLAYBACK_BYTES_PER_SECOND

    async def _on_mark(self, message: dict[str, Any]) -> None:
        mark = message.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str):
            self.errors.append(f"mark without a name: {message}")
            return
        # Echo once everything queued so far has played (the player task does the waiting).
        self._pending_marks.append((name, max(self._play_end, time.monotonic())))
        self._marks_changed.set()

    async def _on_clear(self, message: dict[str, Any]) -> None:
        instant = Instant.now()
        now = instant.wall
        self.clear_instants.append(instant)
        self._discarded_bytes += self._unplayed_bytes(now)
        self._play_end = now
        self.clears.append(now)
        pending = [name for name, _ in self._pending_marks]
        self._pending_marks.clear()
        self._marks_changed.set()
        for name in pending:  # Twilio answers every pending mark right away on clear
            await self._echo_mark(name)

    async def _play_marks(self) -> None:
        """Echo each pending mark when its audio has played; woken early by new marks or clear."""
        try:
            while True:
                delay = self._pending_marks[0][1] - time.monotonic() if self._pending_marks else None
                if delay is None or delay > 0:
                    self._marks_changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._marks_changed.wait(), delay)
                    continue
                name, _ = self._pending_marks.popleft()
                await self._echo_mark(name)
        except ConnectionClosed:
            pass

    # ----- playback model -----------------------------------------------------------------------

    def _unplayed_bytes(self, now: float) -> int:
        return round(max(0.0, self._play_end - now) * PLAYBACK_BYTES_PER_SECOND)

    def played_bytes(self) -> int:
        """Bytes of received audio that have "played" so far (cleared audio never plays)."""
        queued_total = len(self.received_audio) - self._discarded_bytes
        return max(0, queued_total - self._unplayed_bytes(time.monotonic()))

    # ----- waiting ------------------------------------------------------------------------------

    async def wait_for_audio(self, nbytes: int, timeout: float = 5) -> None:
        def enough() -> bool:
            return len(self.received_audio) >= nbytes

        await self._changes.wait_until(enough, timeout, f"{nbytes} bytes of audio")

    async def wait_for_clear(self, timeout: float = 5) -> float:
        """Return the arrival time (time.monotonic()) of the next clear not returned by an earlier call."""
        return (await self.wait_for_clear_instant(timeout)).wall

    async def wait_for_clear_instant(self, timeout: float = 5) -> Instant:
        """The same, as an `Instant`: for a latency bound that holds on a loaded machine."""
        await self._changes.wait_until(lambda: len(self.clears) > self._consumed_clears, timeout, "a clear")
        self._consumed_clears += 1
        return self.clear_instants[self._consumed_clears - 1]

    def _first_unconsumed_mark(self, name: str | None) -> int | None:
        for index, echoed in enumerate(self.marks_sent_back):
            if index not in self._consumed_marks and (name is None or echoed == name):
                return index
        return None

    async def wait_for_mark(self, name: str | None = None, timeout: float = 5) -> str:
        """Return the next echoed-back mark (named `name`, if given) not returned by an earlier call."""
        def found() -> bool:
            return self._first_unconsumed_mark(name) is not None

        await self._changes.wait_until(found, timeout, f"mark {name or '(any)'} echoed back")
        index = self._first_unconsumed_mark(name)
        assert index is not None
        self._consumed_marks.add(index)
        return self.marks_sent_back[index]
