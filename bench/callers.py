"""The load generator's callers: Twilio Media Streams clients, cheap enough to run hundreds.

A `Caller` first does what Twilio does when a call comes in (`bench.voice`: the signed voice
webhook, whose TwiML names the stream), then connects to that stream with a valid
`X-Twilio-Signature` and sends Twilio's exact JSON: `connected`, `start` (customParameters: the
TwiML's `<Parameter>`s), a 160-byte mu-law `media` frame every 20 ms against the monotonic clock
(deadlines from the stream's start, so pacing never drifts; the audio is `bench.tones`), and
`stop`. It plays what comes back like Twilio's player (8000 bytes/s), echoes each `mark` once
the audio before it has played, and on `clear` echoes every pending mark at once. It records
when each frame was sent and when each piece of bot audio and each `clear` arrived.

Caller `i` calls from `+1999` + `i` in seven digits; a service that puts the number in the model
session's setup (phonebot does) lets the fake model know whose session it is.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import Sequence

from bench import tones, wire
from bench.voice import ACCOUNT_SID, Line, Stream

FRAME_S = tones.CALLER.unit_s
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
PLAYBACK_BYTES_PER_S = 8000
USER_AGENT = "Twilio.TmeWs/1.0"
PAYLOADS = tones.caller_payloads()


class Caller(asyncio.Protocol):
    """One phone call's Media Stream. Use `dial()`; then `stop_media()`, then `hang_up()`."""

    def __init__(self, index: int, line: Line, to: str = "+15550100", payloads: Sequence[str] = PAYLOADS) -> None:
        self.index = index
        self.from_number = f"+1999{index:07d}"
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.account_sid = ACCOUNT_SID
        self._line, self._to, self._payloads = line, to, payloads
        self._stream: Stream | None = None
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
        self.began_at: float | None = None  # the call came in: the voice webhook (or the stream) began
        self.webhook_s: float | None = None
        self.started_at: float | None = None  # `start` sent
        self.sent_at: list[float] = []  # frame k sent
        self.counted: int | None = None  # frames that count, if the rest only keep the line going
        self.late_frames = 0  # frames sent more than one frame period after their deadline
        # Receiving.
        self.audio_b64: list[str] = []  # the bot's mu-law as it came (decoded after the step)
        self.audio_at: list[float] = []  # per media message received...
        self.audio_total: list[int] = []  # ...and the mu-law bytes received by then
        self.clear_at: list[float] = []
        self.marks_echoed = 0
        self.errors: list[str] = []
        self.close_code: int | None = None
        self._play_end = 0.0
        self._marks: deque[tuple[float, str]] = deque()  # (when it has played, name)

    async def dial(self) -> None:
        """The voice webhook, then connect, upgrade, send `connected` and `start`, and stream frames."""
        self.began_at = time.monotonic()
        self._stream = await self._line.stream_for(self.call_sid, self.from_number, self._to)
        self.webhook_s = self._stream.webhook_s
        await self._loop.create_connection(lambda: self, self._line.host, self._line.port)
        await self.opened

    def audio(self) -> bytes:
        """The bot's mu-law the caller received."""
        return b"".join(map(wire.b64_decode, self.audio_b64))

    def count_no_more(self) -> None:
        """Frames from now on are not counted (they only keep the line going, as Twilio's does)."""
        self.counted = len(self.sent_at)

    @property
    def counted_sent_at(self) -> list[float]:
        return self.sent_at if self.counted is None else self.sent_at[: self.counted]

    # ----- socket -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        assert self._stream is not None
        request, self._accept = wire.client_handshake(
            f"{self._line.host}:{self._line.port}",
            self._stream.path,
            {"X-Twilio-Signature": self._stream.signature, "User-Agent": USER_AGENT},
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
            "customParameters": self._stream.parameters if self._stream else {},
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
        payload = self._payloads[k % len(self._payloads)]
        self._send(
            f'{{"event":"media","sequenceNumber":"{self._numbered()}","media":{{"track":"inbound",'
            f'"chunk":"{k + 1}","timestamp":"{timestamp}","payload":"{payload}"}},'
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
            payload = message["media"]["payload"]
            size = wire.b64_size(payload)
            self.audio_b64.append(payload)
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
