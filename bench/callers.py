"""The load generator's callers: Twilio Media Streams clients, cheap enough to run hundreds.

Each `Caller` first posts the signed voice webhook, as Twilio does, then connects to the stream
URL of the TwiML it gets back (`/twilio/media/{token}`) with a valid `X-Twilio-Signature` and
sends Twilio's exact JSON: `connected`, `start` (customParameters from/to/direction), a 160-byte
mu-law `media` frame every 20 ms against the monotonic clock (deadlines from the stream's start,
so pacing never drifts), and `stop`. It plays what comes back like Twilio's player (8000 bytes/s),
echoes each `mark` once the audio before it has played, and on `clear` echoes every pending mark
at once. It records when each frame was sent and when each piece of bot audio and each `clear`
arrived.

Caller `i` calls from `+1999` + `i` in seven digits; the fake model finds that number in the
session's setup and so knows whose session it is.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import re
import secrets
import time
from collections import deque
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator

from bench import wire

FRAME_S = 0.02
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
PLAYBACK_BYTES_PER_S = 8000
USER_AGENT = "Twilio.TmeWs/1.0"
PUBLIC_URL = "https://bench.invalid"  # the service's PHONEBOT_PUBLIC_URL (see bench.service)
VOICE_PATH = "/twilio/voice"
_STREAM_URL = re.compile(rb'<Stream url="([^"]+)"')


def signature(auth_token: str, signed_url: str) -> str:
    """X-Twilio-Signature of a Media Streams handshake: the wss URL signed with no parameters."""
    return RequestValidator(auth_token).compute_signature(signed_url, {})


async def voice_webhook(host: str, port: int, auth_token: str, form: dict[str, str]) -> str:
    """POST the signed voice webhook as Twilio does; the stream URL of the TwiML it answers."""
    body = urlencode(form).encode()
    signed = RequestValidator(auth_token).compute_signature(PUBLIC_URL + VOICE_PATH, form)
    head = (
        f"POST {VOICE_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
        f"X-Twilio-Signature: {signed}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode() + body)
        answer = await reader.read()  # Connection: close: the answer ends with the socket
    finally:
        writer.close()
    found = _STREAM_URL.search(answer)
    if found is None:
        raise ConnectionError(f"the voice webhook answered no stream: {answer[:300]!r}")
    return found.group(1).decode()


def _mulaw_frame() -> bytes:
    # A quiet 400 Hz-ish pattern: real-looking audio without pretending to be speech.
    pattern = bytes([0xFF, 0xB3, 0xA6, 0xB3, 0xFF, 0x33, 0x26, 0x33, 0xFF, 0xB3])
    return (pattern * (FRAME_BYTES // len(pattern) + 1))[:FRAME_BYTES]


_PAYLOAD = binascii.b2a_base64(_mulaw_frame(), newline=False).decode()


class Caller(asyncio.Protocol):
    """One phone call's Media Stream. Use `dial()`; then `stop_media()`, then `hang_up()`."""

    def __init__(self, index: int, host: str, port: int, auth_token: str, to: str = "+15550100") -> None:
        self.index = index
        self.from_number = f"+1999{index:07d}"
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.account_sid = "AC" + "0" * 32
        self._host, self._port, self._auth_token, self._to = host, port, auth_token, to
        self._path = self._signature = ""  # the stream's, once the webhook has answered
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._head: bytearray | None = bytearray()
        self._accept = ""
        self._reader = wire.FrameReader()
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        # Sending.
        self._sequence = 0
        self._timer: asyncio.TimerHandle | None = None
        self.started_at: float | None = None  # `start` sent
        self.sent_at: list[float] = []  # frame k sent
        self.late_frames = 0  # frames sent more than one frame period after their deadline
        # Receiving.
        self.audio_at: list[float] = []  # per media message received...
        self.audio_total: list[int] = []  # ...and the mu-law bytes received by then
        self.clear_at: list[float] = []
        self.marks_echoed = 0
        self.errors: list[str] = []
        self.close_code: int | None = None
        self._play_end = 0.0
        self._marks: deque[tuple[float, str]] = deque()  # (when it has played, name)

    async def dial(self) -> None:
        """The webhook; then connect, upgrade, send `connected` and `start`, and start streaming frames."""
        form = {"CallSid": self.call_sid, "AccountSid": self.account_sid, "From": self.from_number,
                "To": self._to, "Direction": "inbound", "CallStatus": "ringing"}
        stream_url = await voice_webhook(self._host, self._port, self._auth_token, form)
        self._path, self._signature = urlsplit(stream_url).path, signature(self._auth_token, stream_url)
        await self._loop.create_connection(lambda: self, self._host, self._port)
        await self.opened

    # ----- socket -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        request, self._accept = wire.client_handshake(
            f"{self._host}:{self._port}",
            self._path,
            {"X-Twilio-Signature": self._signature, "User-Agent": USER_AGENT},
        )
        self._transport.write(request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._head is not None:
            self._head += data
            if (split := wire.split_head(self._head)) is None:
                return
            (head, data), self._head = split, None
            first, headers = wire.parse_head(head)
            if " 101 " not in first + " " or headers.get("sec-websocket-accept") != self._accept:
                self._fail(f"upgrade refused: {first} {headers}")
                return
            self._open()
        for opcode, payload in self._reader.feed(data):
            if opcode == wire.TEXT:
                self._on_message(payload, now)
            elif opcode == wire.PING:
                self._write(wire.frame(wire.PONG, payload, masked=True))
            elif opcode == wire.CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._write(wire.frame(wire.CLOSE, payload[:2], masked=True))
                self._close()
                return
            else:
                self.errors.append(f"unexpected frame opcode {opcode}")

    def _fail(self, error: str) -> None:
        self.errors.append(error)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(error))
        self._close()

    def _close(self) -> None:
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _send(self, text: str) -> None:
        self._write(wire.frame(wire.TEXT, text.encode(), masked=True))

    def _numbered(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    # ----- Twilio's side of the stream ----------------------------------------------------------

    def _open(self) -> None:
        self._send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": {"from": self.from_number, "to": self._to, "direction": "inbound"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        self._send(json.dumps({"event": "start", "sequenceNumber": self._numbered(), "start": start,
                               "streamSid": self.stream_sid}))
        self.started_at = time.monotonic()
        self.opened.set_result(None)
        self._tick()

    def _tick(self) -> None:
        """Send frame k at start + k * 20 ms; echo the marks whose audio has played by now."""
        self._timer = None
        if self._transport is None:
            return
        k = len(self.sent_at)
        assert self.started_at is not None
        due = self.started_at + k * FRAME_S
        timestamp = round(k * FRAME_S * 1000)
        self._send(
            f'{{"event":"media","sequenceNumber":"{self._numbered()}","media":{{"track":"inbound",'
            f'"chunk":"{k + 1}","timestamp":"{timestamp}","payload":"{_PAYLOAD}"}},'
            f'"streamSid":"{self.stream_sid}"}}'
        )
        now = time.monotonic()
        self.sent_at.append(now)
        if now - due > FRAME_S:
            self.late_frames += 1
        while self._marks and self._marks[0][0] <= now:
            self._echo_mark(self._marks.popleft()[1])
        self._timer = self._loop.call_later(max(0.0, due + FRAME_S - time.monotonic()), self._tick)

    def stop_media(self) -> None:
        """Stop sending frames (the socket stays open)."""
        self._cancel_timer()

    async def hang_up(self, timeout: float = 2.0) -> None:
        """Send `stop`, then close; wait up to `timeout` for the socket to end."""
        self._cancel_timer()
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        self._send(json.dumps({"event": "stop", "sequenceNumber": self._numbered(), "stop": stop,
                               "streamSid": self.stream_sid}))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self._write(wire.frame(wire.CLOSE, (1000).to_bytes(2, "big"), masked=True))
            self._close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_message(self, payload: bytes, now: float) -> None:
        message = json.loads(payload)
        event = message.get("event")
        if message.get("streamSid") != self.stream_sid:
            self.errors.append(f"{event}: wrong streamSid")
        if event == "media":
            size = wire.b64_size(message["media"]["payload"])
            self.audio_total.append((self.audio_total[-1] if self.audio_total else 0) + size)
            self.audio_at.append(now)
            self._play_end = max(self._play_end, now) + size / PLAYBACK_BYTES_PER_S
        elif event == "mark":
            self._marks.append((max(self._play_end, now), message["mark"]["name"]))
        elif event == "clear":
            self.clear_at.append(now)
            self._play_end = now
            while self._marks:  # Twilio answers every pending mark at once on clear
                self._echo_mark(self._marks.popleft()[1])
        else:
            self.errors.append(f"unexpected event {event!r}")

    def _echo_mark(self, name: str) -> None:
        self._send(json.dumps({"event": "mark", "sequenceNumber": self._numbered(), "streamSid": self.stream_sid,
                               "mark": {"name": name}}))
        self.marks_echoed += 1
