"""uvicorn's WebSocket protocol, cheaper per message: a media stream is 50 small messages a
second each way for as long as a call lasts, and most of what one costs is the layers around it.

uvicorn (its sans-I/O protocol over websockets) keeps the handshake, the ASGI side (Starlette
still routes, accepts and closes) and closing from our side. Once the connection is open, this
protocol reads and writes the frames itself:
- reading: websockets' parser is a generator that reads a frame in several steps, builds a frame
  object and checks it; here a frame is read in one pass over the bytes received, with the same
  rules in the same order (known opcodes, client frames masked, `ws_max_size` checked on the
  header before the payload is read, no reserved bits, control frames short and whole, fragments
  in order, text valid UTF-8, close codes and reasons valid), the same close codes, and the same
  ASGI events for the app (tests/telephony/test_media_socket.py holds it to uvicorn's own
  protocol, frame for frame); frames a client sends before the handshake's answer wait unread
  until it has gone;
- uvicorn stops reading the socket after each message until the app has taken it, and starts
  again when it has: two changes to the event loop's interest set (two system calls) per
  message. Here reading stops only when the app falls `MAX_QUEUED` messages behind;
- sending a text message writes its frame at once (`wsframe`) while the connection is open and
  not flow-controlled; anything else (the handshake, closing, a paused transport) is uvicorn's;
- the app's messages wait in a deque with one waiter rather than an `asyncio.Queue`;
- an app that knows it (`telephony/stream.py`) finds this protocol in the scope's extensions
  under `DIRECT` and reads (`receive()`) and writes (`send_text_now()`) without Starlette's
  layers, at once when it can.

No extension is negotiated (`ws_per_message_deflate` is off in `serving.py`): a frame's payload is
what was sent.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any

import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State
from websockets.speedups import apply_mask

from phonebot import wsframe

# The uvicorn releases whose sans-I/O protocol this one was written and tested against (it uses
# that protocol's attributes); on others `serving.py` runs uvicorn's own.
TESTED_UVICORN = ((0, 54), (0, 54))
DIRECT = "phonebot.direct"  # the scope's extension: this protocol, for an app that reads and writes directly
MAX_QUEUED = 64  # messages read ahead of the app before the socket is left unread (~1 s of audio)
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((CONT, TEXT, BINARY, CLOSE, PING, PONG))
_CLOSE_CODES_RESERVED = {1004, 1005, 1006, 1015}


def usable(version: str = uvicorn.__version__) -> bool:
    """Whether this protocol fits the installed uvicorn (a release it was tested with)."""
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return TESTED_UVICORN[0] <= release <= TESTED_UVICORN[1]


class _Inbox:
    """What uvicorn's protocol needs of a queue (`put_nowait`, `get`, `empty`, `qsize`), for one
    reader: a deque and at most one waiter."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop  # (asyncio.get_running_loop() makes a system call per use on Python 3.11)
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> Any:
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Fail(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class MediaWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox(self.loop)  # type: ignore[assignment]
        self._framing = False  # frames are read here, not by websockets
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None  # a message arriving in fragments
        self._fragment_text = False
        self._fragment_size = 0
        self._peer_closed = False  # the peer's close frame came first (and was answered)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and not self.close_sent:  # the app's task is made, not started
            self.scope["extensions"][DIRECT] = self  # type: ignore[index, assignment]

    # -- reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._framing:
            self._buffer += data
            try:
                self._read_frames()
            except _Fail as failed:
                self._fail(failed.code, failed.reason)
        elif self.handshake_initiated and not self.handshake_complete:
            # Frames sent before our answer wait here, unparsed, and are read once it has gone: fed
            # to websockets, its parser could stop inside a frame where this one cannot take over.
            self._buffer += data
            if len(self._buffer) > self.config.ws_max_size + 14 and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
        else:
            super().data_received(data)

    def _take_over(self) -> None:
        """The handshake is done: read frames here from now on (any that came early first), unless
        websockets holds bytes of its own or is not the websockets this was written against."""
        held = getattr(getattr(self.conn, "reader", None), "buffer", None)
        self._framing = isinstance(held, bytearray) and not held and self.conn.state is State.OPEN
        early, self._buffer = bytes(self._buffer), bytearray()
        if early:
            self.data_received(early)
        if self.read_paused and self.queue.qsize() < MAX_QUEUED and not self.transport.is_closing():
            self.read_paused = False  # (paused with a frame's worth waiting, maybe no whole message)
            self.transport.resume_reading()

    def _read_frames(self) -> None:
        """Whole frames off the buffer, checked in the order websockets checks them (so a frame with
        several faults is refused with the same code)."""
        buffer, pos, end = self._buffer, 0, len(self._buffer)
        max_size = self.config.ws_max_size
        while end - pos >= 2 and not self.transport.is_closing():  # (after our close: for the peer's reply)
            first, second = buffer[pos], buffer[pos + 1]
            opcode = first & 0x0F
            if opcode not in _OPCODES:
                raise _Fail(1002, f"invalid opcode: {opcode}")
            if not second & 0x80:
                raise _Fail(1002, "incorrect masking")
            if (header := wsframe.payload_length(buffer, pos)) is None:
                break
            length, at = header
            if self._fragment_size + length > max_size:  # before a byte of the payload is read
                raise _Fail(1009, f"frame with {length} bytes exceeds limit of {max_size - self._fragment_size} bytes")
            if end - at < 4 + length:
                break
            if first & 0x70:
                raise _Fail(1002, "reserved bits must be 0")
            fin = bool(first & 0x80)
            if opcode >= CLOSE and (length > 125 or not fin):
                raise _Fail(1002, "control frame too long" if length > 125 else "fragmented control frame")
            mask = bytes(buffer[at : at + 4])
            payload = apply_mask(bytes(buffer[at + 4 : at + 4 + length]), mask)
            pos = at + 4 + length
            self._frame(opcode, fin, payload)
        del buffer[:pos]

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode in (TEXT, BINARY):
            if self._fragments is not None:
                raise _Fail(1002, "expected a continuation frame")
            if fin:
                self._message(opcode == TEXT, payload)
            else:
                self._fragments, self._fragment_text, self._fragment_size = [payload], opcode == TEXT, len(payload)
        elif opcode == CONT:
            if self._fragments is None:
                raise _Fail(1002, "unexpected continuation frame")
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if fin:
                parts, self._fragments, self._fragment_size = self._fragments, None, 0
                self._message(self._fragment_text, b"".join(parts))
        elif opcode == PING:
            if not self.transport.is_closing():
                self.transport.write(wsframe.server_frame(PONG, payload))
        elif opcode == CLOSE:
            self._closed_by_peer(payload)
        # PONG: no pings are sent (ws_ping_interval is None); one is ignored, as uvicorn does

    def _message(self, text: bool, payload: bytes) -> None:
        if self.close_sent:  # as uvicorn: past `websocket.close`, reads go on until the peer's reply
            return
        if text:
            try:
                message: Any = {"type": "websocket.receive", "text": payload.decode()}
            except UnicodeDecodeError:
                raise _Fail(1007, "invalid UTF-8 in a text message") from None
        else:
            message = {"type": "websocket.receive", "bytes": payload}
        self.queue.put_nowait(message)
        if not self.read_paused and self.queue.qsize() >= MAX_QUEUED:
            self.read_paused = True
            self.transport.pause_reading()

    def _closed_by_peer(self, payload: bytes) -> None:
        if self.close_sent:  # the peer answered our close: the closing handshake is complete
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
            return
        code, reason = _close_payload(payload)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(wsframe.server_frame(CLOSE, payload))  # echoed, as websockets does
        self._peer_closed = True  # as uvicorn: a later send raises ClientDisconnected, a close is a no-op
        self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error: close with `code`, and the app hears of it (as uvicorn does)."""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if not self.close_sent and not self.transport.is_closing():
            self.transport.write(wsframe.server_frame(CLOSE, struct.pack("!H", code) + reason.encode()[:123]))
        self.close_sent = True
        self._buffer.clear()
        self.transport.close()

    def receive_nowait(self) -> Any | None:
        """A message already received, or None (`receive` would wait)."""
        if self.queue.empty():
            return None
        return self._took(self.queue.get_nowait())

    async def receive(self) -> Any:
        return self._took(await self.queue.get())

    def _took(self, message: Any) -> Any:
        if self.read_paused and self.queue.qsize() < MAX_QUEUED // 2:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    # -- writing ------------------------------------------------------------------------------

    def send_text_now(self, text: str) -> bool:
        """Write a text message at once if the connection is open and not flow-controlled;
        whether it was (if not, `send` it: uvicorn waits, or raises)."""
        if self._framing and not self.close_sent and self.writable.is_set() and not self.transport.is_closing():
            self.transport.write(wsframe.server_text(text.encode()))
            return True
        return False

    def send_texts_now(self, texts: list[str]) -> bool:
        """`send_text_now` of several messages, in order, in one write."""
        if self._framing and not self.close_sent and self.writable.is_set() and not self.transport.is_closing():
            self.transport.write(b"".join([wsframe.server_text(text.encode()) for text in texts]))
            return True
        return False

    async def send(self, message: Any) -> None:
        text = message.get("text") if message["type"] == "websocket.send" else None
        if text is not None and self.send_text_now(text):
            return
        if self._peer_closed and message["type"] == "websocket.send":
            raise ClientDisconnected()  # what uvicorn's websockets connection, closing, makes of it
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete and not self.close_sent:
            self._take_over()


def _close_payload(payload: bytes) -> tuple[int, str]:
    """A close frame's code and reason (RFC 6455 7.1.5: none is 1005); _Fail if malformed."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise _Fail(1002, "close frame too short")
    (code,) = struct.unpack("!H", payload[:2])
    if not (1000 <= code <= 4999) or code in _CLOSE_CODES_RESERVED or 1016 <= code <= 2999:
        raise _Fail(1002, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise _Fail(1007, "invalid UTF-8 in a close reason") from None
