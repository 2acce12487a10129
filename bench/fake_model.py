"""A lean fake Gemini Live server for the benches, and what it saw of each call.

It speaks what google-genai's `client.aio.live.connect()` expects (TLS WebSocket on the
`...GenerativeService.BidiGenerateContent` path, `setup` -> `setupComplete`, camelCase JSON in
binary frames) and talks like the model on a call, from a script:

- on the greeting cue it speaks the greeting. The cue is the first realtime text (phonebot's
  way) or a `client_content` turn that completes the turn (Pipecat's way: it sends the
  context's opening user message so);
- after each bot turn, once it has heard `listen_s` of caller audio, it speaks a reply;
- some replies (scripted per caller) are barged in on: `interrupted` is sent mid-turn and the
  rest of the turn is never sent, as Gemini does when the caller talks over it;
- if the setup asks for session resumption, a `sessionResumptionUpdate` says "not resumable" when
  a turn starts, and gives a new handle when it ends and every second while the model listens
  (phonebot keeps what it sent until a handle covers it, so without these it would hoard).

Bot audio is 24 kHz 16-bit PCM in 40 ms chunks sent at real-time pace against the monotonic
clock; every 5th chunk is followed by an output transcription, each reply is preceded by an input
transcription. Caller audio is taken at whatever rate its mime type says. Each session records
when caller audio arrived (and keeps it, to find by its content what it was), when each bot turn
started, and when its chunks and any `interrupted` were sent, so the load bench can match them
against what its callers saw.

Whose call a session is: the caller's number, where the service puts it in the setup (phonebot
writes it into the system instruction: `+1999` and seven digits, see `bench.callers`); else a
resumption handle this fake issued (they name the caller); else the caller the bench is dialling
now (`expecting`): a bench that sees unnumbered sessions dials one call at a time until each has
its session. With `Script(talks=False)` the model only listens, and the bench drives it
(`bench.reconnect`: handles, goAway, closes).
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

import trustme

from bench import tones, wire

CHUNK_S = tones.MODEL_VOICES[0].unit_s
CHUNK_BYTES = 1920  # 40 ms of 24 kHz 16-bit mono
_PATH = re.compile(rb"^/+ws/google\.ai\.generativelanguage\.[\w.]+\.GenerativeService\.BidiGenerateContent")
CALLER_NUMBER = re.compile(rb"\+1999(\d{7})")
_HANDLE = re.compile(rb'"handle"\s*:\s*"bench-(\d+)-')
_RATE = re.compile(r"rate=(\d+)")
UNMATCHED = -1


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
    talks: bool = True  # False: never speaks nor sends handles by itself

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


def _audio(voice: tones.Voice, unit: int) -> bytes:
    pcm = voice.pcm16(24000, unit, 1)
    return _server_frame({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
        "mimeType": "audio/pcm;rate=24000", "data": binascii.b2a_base64(pcm, newline=False).decode()}}]}}})


# Chunk k of a session in its voice (sessions take the voices in turn).
_AUDIO = [[_audio(voice, unit) for unit in range(tones.PERIOD)] for voice in tones.MODEL_VOICES]
_SETUP_COMPLETE = _server_frame({"setupComplete": {}})
_INTERRUPTED = _server_frame({"serverContent": {"interrupted": True}})
_TURN_END = _server_frame({"serverContent": {"generationComplete": True}}) + _server_frame(
    {"serverContent": {"turnComplete": True}, "usageMetadata": {"promptTokenCount": 400, "responseTokenCount": 40,
                                                                 "totalTokenCount": 440}})
_BOT_WORDS = _server_frame({"serverContent": {"outputTranscription": {"text": " thanks for calling"}}})
_NOT_RESUMABLE = _server_frame({"sessionResumptionUpdate": {"resumable": False}})
_CALLER_WORDS = _server_frame({"serverContent": {"inputTranscription": {"text": " I'd like to book"}}})


@dataclass(slots=True)
class Turn:
    """One bot turn: when it started, its first chunk (an index into the session's audio_out
    lists), and when it was barged in on, if it was."""

    started_at: float
    first_chunk: int
    interrupted_at: float | None = None


@dataclass(slots=True)
class SessionRecord:
    """What one Live session saw and did, on the monotonic clock."""

    caller: int  # UNMATCHED if no caller could be told
    setup_at: float
    numbered: bool  # the setup named the caller
    voice_index: int = 0  # which of tones.MODEL_VOICES it speaks in
    cue_at: float | None = None
    in_rate: int = 16000  # of the caller audio, from its mime type
    audio_b64: list[str] = field(default_factory=list)  # the caller audio it heard, as it came: it is
    # decoded after the step, not while it runs (the bench must stay cheap per message)
    audio_in_at: list[float] = field(default_factory=list)  # per realtime audio message...
    audio_in_total: list[int] = field(default_factory=list)  # ...and the bytes heard by then
    audio_out_at: list[float] = field(default_factory=list)  # per 40 ms chunk sent...
    audio_out_total: list[int] = field(default_factory=list)  # ...and the 24 kHz bytes sent by then
    turns: list[Turn] = field(default_factory=list)
    closed_at: float | None = None

    @property
    def bytes_in(self) -> int:
        return self.audio_in_total[-1] if self.audio_in_total else 0

    @property
    def bytes_out(self) -> int:
        return self.audio_out_total[-1] if self.audio_out_total else 0

    def audio(self) -> bytes:
        return b"".join(map(wire.b64_decode, self.audio_b64))

    @property
    def voice(self) -> tones.Voice:
        return tones.MODEL_VOICES[self.voice_index]

    @property
    def interrupted_at(self) -> list[float]:
        return [turn.interrupted_at for turn in self.turns if turn.interrupted_at is not None]


class Session(asyncio.Protocol):
    """One Live connection: handshake, setup, then the script (or the bench's controls)."""

    def __init__(self, model: FakeModel) -> None:
        self._model = model
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._head: bytearray | None = bytearray()
        self._reader = wire.FrameReader()
        self.record: SessionRecord | None = None
        self._mime = ""
        self._speaking = False
        self._reply_pending = False
        self._reply_after = 0  # caller audio bytes heard before the next reply starts
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
                    self._end()
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
                self._end()
                return

    def _handshake(self, head: bytes) -> bool:
        first, headers = wire.parse_head(head)
        parts = first.split(" ")
        key = headers.get("sec-websocket-key")
        if len(parts) < 2 or not _PATH.match(parts[1].encode()) or not key:
            self._write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self._end()
            return False
        self._write(wire.server_handshake(key))
        if not headers.get("x-goog-api-key") and "key=" not in parts[1]:
            self.close(1008, "missing API key")
            return False
        return True

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # ----- the bench's controls -------------------------------------------------------------------

    def send(self, message: dict) -> None:
        self._write(_server_frame(message))

    def close(self, code: int, reason: str = "") -> None:
        """A close frame, then the socket ends (the client's answer is not awaited)."""
        self._write(wire.frame(wire.CLOSE, code.to_bytes(2, "big") + reason.encode(), masked=False))
        self._end()

    def abort(self) -> None:
        """Drop the connection: no close frame, no TLS goodbye."""
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def _end(self) -> None:
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
        if body:
            if audio := body.get("audio"):
                self._on_audio(audio, now)
            elif body.get("text") is not None:
                self._on_cue(now)
            return
        content = message.get("clientContent") or message.get("client_content")
        if content and (content.get("turnComplete") or content.get("turn_complete")):
            self._on_cue(now)

    def _on_audio(self, audio: dict, now: float) -> None:
        record = self.record
        assert record is not None
        mime = audio.get("mimeType") or audio.get("mime_type") or ""
        if mime != self._mime:  # the rate is read once per distinct mime type, not per message
            self._mime = mime
            found = _RATE.search(mime)
            record.in_rate = int(found.group(1)) if found else 16000
        data = audio["data"]
        record.audio_b64.append(data)
        record.audio_in_total.append(record.bytes_in + wire.b64_size(data))
        record.audio_in_at.append(now)
        if not self._speaking and not self._reply_pending and self._model.script.talks:
            if record.bytes_in >= self._reply_after:
                self._reply_pending = True
                self._later(self._model.script.delay_s, self._reply)
            elif now - self._checkpoint_at >= self._model.script.checkpoint_every_s:
                self._checkpoint(now)

    def _on_cue(self, now: float) -> None:
        assert self.record is not None
        if self.record.cue_at is not None:
            return
        self.record.cue_at = now
        if self._model.script.talks:
            self._reply_pending = True
            self._later(self._model.script.delay_s, self._greet)

    def _on_setup(self, payload: bytes, now: float) -> None:
        if b'"setup"' not in payload:
            self.close(1007, "bench: no setup")
            return
        numbered = CALLER_NUMBER.search(payload)
        handle = _HANDLE.search(payload)
        if numbered:
            caller = int(numbered.group(1))
        elif handle:
            caller = int(handle.group(1))
        else:
            caller = self._model.claim_unnumbered()
        voice = self._model.opened_count % len(tones.MODEL_VOICES)
        self.record = SessionRecord(caller=caller, setup_at=now, numbered=numbered is not None, voice_index=voice)
        self._rng = random.Random(caller)
        self._resumption = b'"sessionResumption"' in payload
        self._transparent = b'"transparent":true' in payload.replace(b" ", b"")
        self._model.opened(self)
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
        assert self.record is not None
        self._reply_pending = False
        if self._model.frozen:
            return
        self._speaking = True
        self._turn_chunks = chunks
        self._interrupt_at = interrupt_at
        self.record.turns.append(Turn(time.monotonic(), len(self.record.audio_out_at)))
        if self._resumption:
            self._write(_NOT_RESUMABLE)
        self._chunk = 0
        self._next_chunk()

    def _next_chunk(self) -> None:
        """Send chunk k at turn start + k * 40 ms (deadlines from one start: no drift). A frozen
        model ends the turn as a finished one, so a bot does with its audio what it does at any
        turn's end."""
        record, self._timer = self.record, None
        if record is None or self._transport is None:
            return
        turn = record.turns[-1]
        if self._chunk == self._interrupt_at and not self._model.frozen:
            self._write(_INTERRUPTED)
            turn.interrupted_at = time.monotonic()
            self._end_turn()
            return
        if self._chunk >= self._turn_chunks or self._model.frozen:
            self._write(_TURN_END)
            self._end_turn()
            return
        self._write(_AUDIO[record.voice_index][len(record.audio_out_at) % tones.PERIOD])
        record.audio_out_at.append(time.monotonic())
        record.audio_out_total.append(record.bytes_out + CHUNK_BYTES)
        if self._chunk % 5 == 4:
            self._write(_BOT_WORDS)
        self._chunk += 1
        self._later(turn.started_at + self._chunk * CHUNK_S - time.monotonic(), self._next_chunk)

    def _end_turn(self) -> None:
        assert self.record is not None
        self._speaking = False
        listen_s = self._model.script.chunks(self._model.script.listen_s, self._rng) * CHUNK_S
        self._reply_after = self.record.bytes_in + round(listen_s * 2 * self.record.in_rate)
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

    def __init__(self, ssl_context: ssl.SSLContext, script: Script | None = None, driven: bool = False) -> None:
        self._ssl = ssl_context
        self.script = script or Script()
        self.driven = driven  # by a bench (bench.reconnect): sessions are handed out by next_session()
        self.sessions: list[SessionRecord] = []
        self.frozen = False  # True: start no new turn, end the current ones (the end of a step)
        self.expecting: int | None = None  # the caller being dialled, for an unnumbered session
        self.opened_count = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._new: asyncio.Queue[Session] = asyncio.Queue()
        self._waiting: dict[int, asyncio.Future[SessionRecord]] = {}

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Session(self), "127.0.0.1", port, ssl=self._ssl, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def reset(self) -> None:
        self.sessions = []
        self.frozen = False
        self.expecting = None

    def claim_unnumbered(self) -> int:
        caller, self.expecting = self.expecting, None
        return UNMATCHED if caller is None else caller

    def opened(self, session: Session) -> None:
        assert session.record is not None
        self.opened_count += 1
        self.sessions.append(session.record)
        if self.driven:
            self._new.put_nowait(session)
        waiter = self._waiting.pop(session.record.caller, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(session.record)

    def session_of(self, caller: int) -> asyncio.Future[SessionRecord]:
        """Resolves when a session of `caller` has completed setup (at once if one has)."""
        future: asyncio.Future[SessionRecord] = asyncio.get_running_loop().create_future()
        found = next((s for s in self.sessions if s.caller == caller), None)
        if found is not None:
            future.set_result(found)
        else:
            self._waiting[caller] = future
        return future

    async def next_session(self, timeout: float = 5.0) -> Session:
        """The next session to complete setup (in order), for a bench that drives it."""
        return await asyncio.wait_for(self._new.get(), timeout)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
