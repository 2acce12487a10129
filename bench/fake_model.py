"""A lean fake Gemini Live server for the load bench, and what it saw of each call.

It speaks what google-genai's `client.aio.live.connect()` expects (TLS WebSocket on the
`...GenerativeService.BidiGenerateContent` path, `setup` -> `setupComplete`, camelCase JSON in
binary frames) and talks like the model on a call, from a script:

- on the greeting cue (the first realtime text) it speaks the greeting;
- after each bot turn, once it has heard `listen_s` of caller audio, it speaks a reply;
- some replies (scripted per caller) are barged in on: `interrupted` is sent mid-turn and the
  rest of the turn is never sent, as Gemini does when the caller talks over it;
- if the setup asks for session resumption, a `sessionResumptionUpdate` says "not resumable" when
  a turn starts, and gives a new handle when it ends and every second while the model listens
  (the service keeps what it sent until a handle covers it, so without these it would hoard).

Bot audio is 24 kHz 16-bit PCM in 40 ms chunks sent at real-time pace against the monotonic
clock; every 5th chunk is followed by an output transcription, each reply is preceded by an input
transcription. Each session records when caller audio arrived and when bot audio, `interrupted`
and turn ends were sent, so the load bench can match them against what its callers saw.

Sessions are matched to callers by the caller's number, which the service puts in the setup's
system instruction (`+1999` and seven digits, see `bench.callers`).
"""

from __future__ import annotations

import asyncio
import binascii
import json
import random
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trustme

from bench import wire

CHUNK_S = 0.04
CHUNK_BYTES = 1920  # 40 ms of 24 kHz 16-bit mono
INPUT_BYTES_PER_S = 32000  # 16 kHz 16-bit mono, what the service sends
_PATH = re.compile(rb"^/+ws/google\.ai\.generativelanguage\.[\w.]+\.GenerativeService\.BidiGenerateContent")
CALLER_NUMBER = re.compile(rb"\+1999(\d{7})")


@dataclass(frozen=True, slots=True)
class Script:
    """How the model talks. Lengths are means: each is scaled by U(1 - spread, 1 + spread), drawn
    from a generator seeded with the caller's number, so calls do not speak in lockstep (which
    would turn a steady load into bursts) and every run is the same."""

    delay_s: float = 0.0  # the model's own think time before each turn (subtracted from first audio)
    greeting_s: float = 1.0
    reply_s: float = 1.2
    listen_s: float = 1.0  # caller audio heard between the end of a bot turn and the next reply
    spread: float = 0.5
    interrupt_every: int = 3  # reply j of caller i is barged in on when (i + j) % this == 0
    interrupt_at: float = 0.4  # ...after this fraction of it
    checkpoint_every_s: float = 1.0  # resumption handles while listening

    def chunks(self, mean_s: float, rng: random.Random) -> int:
        return max(1, round(mean_s * rng.uniform(1 - self.spread, 1 + self.spread) / CHUNK_S))

    def interrupted_at(self, caller: int, reply: int, chunks: int) -> int | None:
        """Chunk index at which reply `reply` (1-based) of `caller` is interrupted, or None."""
        if self.interrupt_every <= 0 or (caller + reply) % self.interrupt_every:
            return None
        return max(1, round(chunks * self.interrupt_at))


def make_tls(directory: str | Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1, and its CA's PEM. Reuses the files if `directory` has them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, server_pem = directory / "fake-model-ca.pem", directory / "fake-model-server.pem"
    if not (ca_pem.is_file() and server_pem.is_file()):
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
        ca.cert_pem.write_to_path(str(ca_pem))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(server_pem))
    return context, ca_pem


def _server_frame(message: dict) -> bytes:
    return wire.frame(wire.BINARY, json.dumps(message, separators=(",", ":")).encode(), masked=False)


def _tone_chunk() -> bytes:
    # 250 Hz: exactly 10 cycles per 40 ms chunk, so back-to-back chunks are one continuous tone.
    t = np.arange(CHUNK_BYTES // 2) / 24000
    return np.round(6000 * np.sin(2 * np.pi * 250 * t)).astype("<i2").tobytes()


_AUDIO = _server_frame({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
    "mimeType": "audio/pcm;rate=24000", "data": binascii.b2a_base64(_tone_chunk(), newline=False).decode()}}]}}})
_SETUP_COMPLETE = _server_frame({"setupComplete": {}})
_INTERRUPTED = _server_frame({"serverContent": {"interrupted": True}})
_TURN_END = _server_frame({"serverContent": {"generationComplete": True}}) + _server_frame(
    {"serverContent": {"turnComplete": True}})
_BOT_WORDS = _server_frame({"serverContent": {"outputTranscription": {"text": " thanks for calling"}}})
_NOT_RESUMABLE = _server_frame({"sessionResumptionUpdate": {"resumable": False}})
_CALLER_WORDS = _server_frame({"serverContent": {"inputTranscription": {"text": " I'd like to book"}}})


@dataclass(slots=True)
class SessionRecord:
    """What one Live session saw and did, on the monotonic clock."""

    caller: int
    setup_at: float
    cue_at: float | None = None
    audio_in_at: list[float] = field(default_factory=list)  # per realtime audio message...
    audio_in_total: list[int] = field(default_factory=list)  # ...and the 16 kHz bytes heard by then
    audio_out_at: list[float] = field(default_factory=list)  # per 40 ms chunk sent...
    audio_out_total: list[int] = field(default_factory=list)  # ...and the 24 kHz bytes sent by then
    interrupted_at: list[float] = field(default_factory=list)
    turns: int = 0
    closed_at: float | None = None

    @property
    def bytes_in(self) -> int:
        return self.audio_in_total[-1] if self.audio_in_total else 0

    @property
    def bytes_out(self) -> int:
        return self.audio_out_total[-1] if self.audio_out_total else 0


class _Session(asyncio.Protocol):
    """One Live connection: handshake, setup, then the script."""

    def __init__(self, model: FakeModel) -> None:
        self._model = model
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._head: bytearray | None = bytearray()
        self._reader = wire.FrameReader()
        self.record: SessionRecord | None = None
        self._speaking = False
        self._reply_pending = False
        self._reply_after = 0  # 16 kHz bytes heard before the next reply starts
        self._replies = 0
        self._rng = random.Random(0)
        self._resumption = False  # the setup asked for resumption updates
        self._transparent = False  # ...with lastConsumedClientMessageIndex
        self._consumed = 0  # client messages after the setup
        self._checkpoint_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ----- socket -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.record is not None:
            self.record.closed_at = time.monotonic()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._head is not None:
            self._head += data
            if (split := wire.split_head(self._head)) is None:
                if len(self._head) > 65536:
                    self._abort()
                return
            (head, data), self._head = split, None
            if not self._handshake(head):
                return
        for opcode, payload in self._reader.feed(data):
            if opcode in (wire.TEXT, wire.BINARY):
                self._on_message(payload, now)
            elif opcode == wire.PING:
                self._write(wire.frame(wire.PONG, payload, masked=False))
            elif opcode == wire.CLOSE:
                self._write(wire.frame(wire.CLOSE, payload[:2], masked=False))
                self._abort()
                return

    def _handshake(self, head: bytes) -> bool:
        first, headers = wire.parse_head(head)
        parts = first.split(" ")
        key = headers.get("sec-websocket-key")
        if len(parts) < 2 or not _PATH.match(parts[1].encode()) or not key:
            self._write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self._abort()
            return False
        self._write(wire.server_handshake(key))
        if not headers.get("x-goog-api-key") and "key=" not in parts[1]:
            self._write(wire.frame(wire.CLOSE, (1008).to_bytes(2, "big") + b"missing API key", masked=False))
            self._abort()
            return False
        return True

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _abort(self) -> None:
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    # ----- client -> server ---------------------------------------------------------------------

    def _on_message(self, payload: bytes, now: float) -> None:
        if self.record is None:
            self._on_setup(payload, now)
            return
        self._consumed += 1
        message = json.loads(payload)
        body = message.get("realtimeInput") or message.get("realtime_input")
        if not body:
            return
        audio = body.get("audio")
        if audio:
            record = self.record
            record.audio_in_total.append(record.bytes_in + wire.b64_size(audio["data"]))
            record.audio_in_at.append(now)
            if not self._speaking and not self._reply_pending:
                if record.bytes_in >= self._reply_after:
                    self._reply_pending = True
                    self._later(self._model.script.delay_s, self._reply)
                elif now - self._checkpoint_at >= self._model.script.checkpoint_every_s:
                    self._checkpoint(now)
        elif body.get("text") is not None and self.record.cue_at is None:
            self.record.cue_at = now  # the greeting cue
            self._reply_pending = True
            self._later(self._model.script.delay_s, self._greet)

    def _on_setup(self, payload: bytes, now: float) -> None:
        found = CALLER_NUMBER.search(payload)
        if b'"setup"' not in payload or found is None:
            self._write(wire.frame(wire.CLOSE, (1007).to_bytes(2, "big") + b"bench: no setup", masked=False))
            self._abort()
            return
        self.record = SessionRecord(caller=int(found.group(1)), setup_at=now)
        self._rng = random.Random(self.record.caller)
        self._resumption = b'"sessionResumption"' in payload
        self._transparent = b'"transparent":true' in payload.replace(b" ", b"")
        self._model.sessions.append(self.record)
        self._write(_SETUP_COMPLETE)

    # ----- server -> client ---------------------------------------------------------------------

    def _greet(self) -> None:
        self._start_turn(self._model.script.chunks(self._model.script.greeting_s, self._rng), None)

    def _reply(self) -> None:
        assert self.record is not None
        self._replies += 1
        self._write(_CALLER_WORDS)
        script = self._model.script
        chunks = script.chunks(script.reply_s, self._rng)
        self._start_turn(chunks, script.interrupted_at(self.record.caller, self._replies, chunks))

    def _start_turn(self, chunks: int, interrupt_at: int | None) -> None:
        self._reply_pending = False
        self._speaking = True
        self._turn_started = time.monotonic()
        self._turn_chunks = chunks
        self._interrupt_at = interrupt_at
        if self._resumption:
            self._write(_NOT_RESUMABLE)
        self._chunk = 0
        self._next_chunk()

    def _next_chunk(self) -> None:
        """Send chunk k at turn start + k * 40 ms (deadlines from one start: no drift)."""
        record, self._timer = self.record, None
        if record is None or self._transport is None or self._model.frozen:
            return
        if self._chunk == self._interrupt_at:
            self._write(_INTERRUPTED)
            record.interrupted_at.append(time.monotonic())
            self._end_turn()
            return
        if self._chunk >= self._turn_chunks:
            self._write(_TURN_END)
            self._end_turn()
            return
        self._write(_AUDIO)
        record.audio_out_at.append(time.monotonic())
        record.audio_out_total.append(record.bytes_out + CHUNK_BYTES)
        if self._chunk % 5 == 4:
            self._write(_BOT_WORDS)
        self._chunk += 1
        self._later(self._turn_started + self._chunk * CHUNK_S - time.monotonic(), self._next_chunk)

    def _end_turn(self) -> None:
        assert self.record is not None
        self.record.turns += 1
        self._speaking = False
        listen_s = self._model.script.chunks(self._model.script.listen_s, self._rng) * CHUNK_S
        self._reply_after = self.record.bytes_in + round(listen_s * INPUT_BYTES_PER_S)
        self._checkpoint(time.monotonic())

    def _checkpoint(self, now: float) -> None:
        if not self._resumption or self.record is None:
            return
        self._checkpoint_at = now
        update: dict = {"newHandle": f"bench-{self.record.caller}-{self._consumed}", "resumable": True}
        if self._transparent:
            update["lastConsumedClientMessageIndex"] = str(self._consumed)
        self._write(_server_frame({"sessionResumptionUpdate": update}))

    def _later(self, delay: float, callback: object) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(max(0.0, delay), callback)  # type: ignore[arg-type]

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class FakeModel:
    """The server. `sessions` lists every session that completed setup since the last `reset()`."""

    def __init__(self, ssl_context: ssl.SSLContext, script: Script | None = None) -> None:
        self._ssl = ssl_context
        self.script = script or Script()
        self.sessions: list[SessionRecord] = []
        self.frozen = False  # True: send nothing more (the end of a step)
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Session(self), "127.0.0.1", port, ssl=self._ssl, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def reset(self) -> None:
        self.sessions = []
        self.frozen = False

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
