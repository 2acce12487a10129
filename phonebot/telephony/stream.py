"""The caller's side of a call over a Media Streams WebSocket: Twilio's JSON protocol, whoever speaks it.

`MediaStream` is the `CallerPort` the call talks to: mu-law, 20 ms frames, `streamSid` and marks
stay in here. Twilio speaks this protocol, and so does any peer that sends the same messages (the
browser softphone); what only Twilio has (its handshake signature, the REST API that moves a live
call) is in `twilio_media.py`, and which call a stream carries is decided in `claim.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from phonebot import codec
from phonebot.call.ports import CallerAudio, CallerDigit, CallerEvent, CallInfo, PlaybackMark
from phonebot.logs import Skipped
from phonebot.media_socket import DIRECT  # phonebot's uvicorn WebSocket protocol, where the scope names it
from phonebot.telephony import messages

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law: what Twilio sends, and what we send back
SAMPLE_RATE = 8000
# Twilio sends a frame every 20 ms for the whole call, silence included: this long with
# nothing means the connection is dead even if TCP has not noticed (no WebSocket pings needed).
# One timer per call looks every few seconds; a timeout per frame would cost more than the frame.
SILENT_LINE_TIMEOUT_S = 15.0
SILENT_LINE_CHECK_S = 2.0
# Twilio sends `connected` and `start` as soon as the socket opens. Whatever a peer sends, it
# has this long from the socket opening to `start`, or the socket is closed.
START_DEADLINE_S = 10.0
# Caller audio already waiting when a frame is read goes with it, up to this much (100 ms).
GATHER_BYTES = 5 * FRAME_BYTES
_SKIP: Any = object()  # a bad message, counted and skipped

log = structlog.get_logger(__name__)


class _Direct(Protocol):
    """What the stream uses of phonebot's WebSocket protocol: messages read and written without
    Starlette's per-message layers (a media stream is 50 messages a second each way)."""

    async def receive(self) -> Any: ...

    def receive_nowait(self) -> Any | None: ...

    def send_text_now(self, text: str) -> bool: ...

    def send_texts_now(self, texts: list[str]) -> bool: ...


# Takes a live call out of its stream: (call_sid, say, dial). Twilio's is a REST call.
Redirect = Callable[[str, str | None, str | None], Awaitable[None]]


class MediaStream:
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        websocket: WebSocket,
        start: messages.Start,
        info: CallInfo,
        redirect: Redirect,
        skipped: Skipped | None = None,
    ) -> None:
        self.info = info
        self.skipped = skipped or Skipped(log)  # bad messages from the caller's side, counted
        self.stream_sid = start.stream_sid
        self._ws = websocket
        self._direct: _Direct | None = websocket.scope.get("extensions", {}).get(DIRECT)
        self._redirect = redirect
        self._unframed = bytearray()  # mu-law short of a whole frame
        self._queued = 0  # mu-law bytes accepted from the call so far
        self._sent = 0  # ... of which sent to Twilio
        self._marks: list[tuple[int, str]] = []  # marks waiting for their audio to be sent
        self._loop = asyncio.get_running_loop()
        self._last_message = self._loop.time()
        self._watchdog: asyncio.TimerHandle | None = None  # runs while the call reads the stream
        self._closing: asyncio.Task[None] | None = None  # held, or the loop may drop the task

    async def events(self) -> AsyncIterator[CallerEvent]:
        # Silence is only evidence of a dead line while someone listens: until the call reads
        # (its model may take its whole reconnect budget to answer, and then the caller must
        # still hear the apology), unread frames wait in the socket and no timer runs.
        self._last_message = self._loop.time()
        self._watchdog = self._loop.call_later(SILENT_LINE_CHECK_S, self._check_line)
        direct, held, closed = self._direct, None, False
        while (message := held or await _next_message(self._ws, self.skipped, direct)) is not None:
            held = None
            self._last_message = self._loop.time()
            match message:
                case messages.Media(mulaw=mulaw, track="inbound") if mulaw:
                    if direct is not None:
                        mulaw, held, closed = self._gather(direct, mulaw)
                    yield CallerAudio(codec.mulaw_to_pcm(mulaw))
                    if closed:
                        break
                case messages.Dtmf(digit=digit):
                    yield CallerDigit(digit)
                case messages.Mark(name=name):
                    yield PlaybackMark(name)
                case messages.Stop():
                    log.info("stream.stop")
                    return
                case messages.Unknown(event=event):
                    self.skipped.warning("stream.unknown_event", event_name=event)
                case messages.Start() | messages.Connected():
                    self.skipped.warning("stream.repeated_handshake", kind=type(message).__name__.lower())

    async def play(self, pcm: bytes) -> None:
        self._unframed += codec.pcm_to_mulaw(pcm)
        self._queued += len(pcm) // 2
        whole = len(self._unframed) - len(self._unframed) % FRAME_BYTES
        frames = range(0, whole, FRAME_BYTES)
        out = [messages.media(self.stream_sid, self._unframed[at : at + FRAME_BYTES]) for at in frames]
        del self._unframed[:whole]
        self._sent += whole
        await self._send_all([*out, *self._due_marks()])

    async def mark(self, name: str) -> None:
        self._marks.append((self._queued, name))
        await self._send_due_marks()

    async def flush(self) -> None:
        if self._unframed:
            await self._send(messages.media(self.stream_sid, bytes(self._unframed)))
            self._sent += len(self._unframed)
            self._unframed.clear()
        await self._send_due_marks()

    async def clear(self) -> None:
        self._unframed.clear()
        self._marks.clear()
        self._sent = self._queued
        await self._send(messages.clear(self.stream_sid))

    def _gather(self, direct: _Direct, mulaw: bytes) -> tuple[bytes, messages.Message | None, bool]:
        """Where the call has fallen behind (more of the caller's audio already received, unread),
        those frames go with this one, up to `GATHER_BYTES`: audio already late is not made later
        by going to the model as one message, and each message saved is a write, a TLS record and
        a trip through the call, so an overloaded core catches up rather than falling further
        behind. Returns the audio, the message read past it (if any), and whether the socket closed."""
        parts = [mulaw]
        size = len(mulaw)
        while size < GATHER_BYTES and (received := direct.receive_nowait()) is not None:
            follow = _interpret(received, self.skipped)
            if isinstance(follow, messages.Media) and follow.track == "inbound":
                parts.append(follow.mulaw)
                size += len(follow.mulaw)
            elif follow is not _SKIP:
                return b"".join(parts), follow, follow is None
        return b"".join(parts), None, False

    async def redirect(self, say: str | None = None, dial: str | None = None) -> None:
        try:
            await self._redirect(self.info.call_sid, say, dial)
        except Exception as error:  # noqa: BLE001 - if it cannot be moved, ending the stream is all we can do
            log.error("stream.redirect_failed", error=repr(error))
            await self.close()

    def _check_line(self) -> None:
        silent = self._loop.time() - self._last_message
        if silent < SILENT_LINE_TIMEOUT_S:
            self._watchdog = self._loop.call_later(SILENT_LINE_CHECK_S, self._check_line)
            return
        log.warning("stream.silent_line", seconds=round(silent, 1))
        self._closing = asyncio.ensure_future(self.close())  # the pending receive then ends

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.skipped.report("stream.skipped_messages")
        await close_quietly(self._ws)

    async def _send_due_marks(self) -> None:
        await self._send_all(self._due_marks())

    def _due_marks(self) -> list[str]:
        # A mark goes out right behind the frame that carries the last byte before it.
        due = []
        while self._marks and self._marks[0][0] <= self._sent:
            due.append(messages.mark(self.stream_sid, self._marks.pop(0)[1]))
        return due

    async def _send_all(self, texts: list[str]) -> None:
        """In order; in one write where the socket allows (a chunk of bot audio is two frames, and a
        mark now and then: one system call, not three)."""
        if len(texts) > 1 and self._direct is not None and self._direct.send_texts_now(texts):
            return
        for text in texts:
            await self._send(text)

    async def _send(self, text: str) -> None:
        if self._direct is not None and self._direct.send_text_now(text):
            return
        # A caller who hung up is noticed by `events()`; sending to them is not an error.
        if self._ws.application_state == WebSocketState.CONNECTED:
            try:  # noqa: SIM105 - contextlib.suppress costs three calls more, per message
                await self._ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError):
                pass


async def read_start(websocket: WebSocket, skipped: Skipped) -> messages.Start | None:
    """Read up to `start` (called as the socket opens). None if the stream ends first, or has not
    sent `start` within START_DEADLINE_S, however much else it says meanwhile."""
    try:
        async with asyncio.timeout(START_DEADLINE_S):
            return await _read_start(websocket, skipped)
    except TimeoutError:
        log.warning("stream.no_start", seconds=START_DEADLINE_S)
        return None


async def _read_start(websocket: WebSocket, skipped: Skipped) -> messages.Start | None:
    while True:
        message = await _next_message(websocket, skipped)
        if message is None or isinstance(message, messages.Stop):
            return None
        if isinstance(message, messages.Start):
            if message.encoding != "audio/x-mulaw" or message.sample_rate != SAMPLE_RATE:
                log.error("stream.unsupported_format", encoding=message.encoding, rate=message.sample_rate)
                return None
            return message
        if isinstance(message, (messages.Media, messages.Dtmf, messages.Mark)):
            skipped.warning("stream.before_start", kind=type(message).__name__.lower())
        elif isinstance(message, messages.Unknown):
            skipped.warning("stream.unknown_event", event_name=message.event)


async def close_quietly(websocket: WebSocket) -> None:
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the caller (or uvicorn) went first
            await websocket.close()


async def _next_message(
    websocket: WebSocket, skipped: Skipped, direct: _Direct | None = None
) -> messages.Message | None:
    """The next well-formed message; None when the socket closes. Bad ones are counted and skipped."""
    while True:
        try:
            received = await (websocket.receive() if direct is None else direct.receive())
        except (WebSocketDisconnect, RuntimeError):
            return None
        message = _interpret(received, skipped)
        if message is not _SKIP:
            return message


def _interpret(received: Any, skipped: Skipped) -> Any:
    """A received ASGI event as a message; None for the socket closing, `_SKIP` for a bad one
    (counted)."""
    if received["type"] == "websocket.disconnect":
        if received.get("code") == 1009:  # uvicorn refused a message over ws_max_size
            log.warning("stream.message_too_big", limit=messages.MAX_MESSAGE_BYTES)
        return None
    text = received.get("text")
    if text is None:  # Twilio sends only text frames
        skipped.warning("stream.binary_frame", size=len(received.get("bytes") or b""))
        return _SKIP
    try:
        return messages.parse(text)
    except messages.ProtocolError as error:
        skipped.warning("stream.bad_message", error=str(error), size=len(text))
        return _SKIP
