"""The model's messages read straight off the connection, in one pass per frame.

websockets reads a frame in several generator steps, builds a frame object, checks it, queues it
in its message assembler and hands it to `recv()` through another queue: for the 25 audio
messages a second a model sends while it speaks, that is a good part of what receiving one
costs. So once the SDK has the session set up, `Lane` takes the connection's bytes first: a whole
data frame (final, unmasked, no extension bits: what the service sends) becomes a message here at
once; control frames (ping, pong, close) go on to websockets as they came, so its keepalive and
closing handshake are its own as before. Anything else (a fragment, a frame over the size limit,
reserved bits) and everything after a close goes to websockets from there on, unread here, and
`recv()` reads it: websockets says what is wrong with it, as it always did.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from phonebot import wsframe

CONT, TEXT, BINARY, CLOSE = 0x0, 0x1, 0x2, 0x8


class Lane(asyncio.Protocol):
    def __init__(self, connection: Any, max_size: int | None, max_queue: int) -> None:
        self._ws = connection  # websockets' ClientConnection: the transport's protocol until now
        self._transport = connection.transport
        self._max_size = max_size
        # Messages read ahead of the call before the socket is left unread: as websockets' own
        # max_queue, since what is behind them (the keepalive's pongs) goes unread too.
        self._max_queue = max_queue
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._messages: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.handed_back = False  # websockets reads everything from here on

    @classmethod
    def install(cls, connection: Any, max_size: int | None, max_queue: int) -> Lane | None:
        """Read `connection`'s data frames here from now on; None (websockets keeps reading) when it
        already holds bytes or messages unread, or is not the websockets this was written for."""
        reader = getattr(getattr(connection, "protocol", None), "reader", None)
        frames = getattr(getattr(connection, "recv_messages", None), "frames", None)
        held, queued = getattr(reader, "buffer", None), getattr(frames, "queue", None)
        if not isinstance(held, bytearray) or queued is None or held or queued or not _between_frames(connection):
            return None
        if getattr(connection, "transport", None) is None:
            return None
        lane = cls(connection, max_size, max_queue)
        connection.transport.set_protocol(lane)
        return lane

    def waiting(self) -> bool:
        """Whether a message is here, read and not yet taken."""
        return bool(self._messages)

    def next_nowait(self) -> bytes | None:
        """The next message if one is here (None: `next` would wait, or websockets reads now)."""
        return self._take() if self._messages else None

    async def next(self) -> bytes | None:
        """The next message; None once websockets reads the connection (`recv()` it there)."""
        while not self._messages:
            if self.handed_back:
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take()

    def _take(self) -> bytes:
        message = self._messages.popleft()
        if self._paused and len(self._messages) < self._max_queue // 2:
            self._paused = False
            self._transport.resume_reading()
        return message

    # -- asyncio.Protocol: the bytes here; everything else is websockets' -----------------------

    def data_received(self, data: bytes) -> None:
        if self.handed_back:
            self._ws.data_received(data)
            return
        self._buffer += data
        self._read()

    def eof_received(self) -> bool | None:
        return self._ws.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._hand_back(b"")
        self._ws.connection_lost(exc)

    def pause_writing(self) -> None:
        self._ws.pause_writing()

    def resume_writing(self) -> None:
        self._ws.resume_writing()

    # -- inside ------------------------------------------------------------------------------

    def _read(self) -> None:
        buffer, pos, end = self._buffer, 0, len(self._buffer)
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            if (header := wsframe.payload_length(buffer, pos)) is None:
                break
            length, at = header
            opcode = first & 0x0F
            plain = first & 0xF0 == 0x80 and not second & 0x80  # final, no extension bits, unmasked
            if not plain or opcode == CONT or (opcode < CLOSE and self._max_size and length > self._max_size):
                self._hand_back(bytes(buffer[pos:]))  # unusual: websockets reads it, and says what is wrong
                return
            if end - at < length:
                break
            if opcode in (TEXT, BINARY):
                self._messages.append(bytes(buffer[at : at + length]))
                pos = at + length
                continue
            raw, pos = bytes(buffer[pos : at + length]), at + length
            self._ws.data_received(raw)  # ping, pong, close: websockets answers them
            if opcode == CLOSE:
                self._hand_back(bytes(buffer[pos:]))
                return
        del buffer[:pos]
        if self._messages:
            self._wake()
            if not self._paused and len(self._messages) >= self._max_queue:
                self._paused = True
                self._transport.pause_reading()

    def _hand_back(self, rest: bytes) -> None:
        """websockets reads from here on, starting with `rest`; what is queued here is read first."""
        self.handed_back = True
        self._buffer = bytearray()
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        if rest:
            self._ws.data_received(rest)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _between_frames(connection: Any) -> bool:
    """Whether websockets' parser waits for the first byte of a frame (in `StreamReader.at_eof`),
    not inside one: its header read, the rest still to come, it is the only one that can go on."""
    generator = getattr(getattr(connection, "protocol", None), "parser", None)
    while (inner := getattr(generator, "gi_yieldfrom", None)) is not None:
        generator = inner
    return getattr(generator, "__name__", None) == "at_eof"
