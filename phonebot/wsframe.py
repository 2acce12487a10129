"""WebSocket frames (RFC 6455) written directly, for the audio hot path.

A WebSocket library's send is a stack of Python calls per message (state checks, an async
context, a frame object, serialisation through a buffer, a fresh random mask from the OS); for a
20 ms audio message that is most of what sending it costs. A frame is only a two- to ten-byte
header, for a client a four-byte mask, and the payload (masked by websockets' C speedup). So
where a connection is open and not flow-controlled, the hot path writes whole frames onto the
library's own transport itself, between the library's own frames (a frame is one write, so
they never interleave), and leaves everything else to the library: the handshake, control
frames, closing, and any send while the transport is paused.

Masks are 32 random bits each from the OS's generator, drawn 4 KiB at a time.
"""

from __future__ import annotations

import os
import struct

from websockets.speedups import apply_mask  # C: websockets always builds it on CPython

TEXT = 0x1
_FIN = 0x80
_MASKED = 0x80
_POOL_BYTES = 4096


class Masks:
    """Unpredictable mask keys (a client must mask, RFC 6455 10.3), 1024 per call to the OS."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(_POOL_BYTES), 0
        self._at += 4
        return self._pool[self._at - 4 : self._at]


_MASKS = Masks()


def _head(opcode: int, length: int, masked: int) -> bytes:
    if length < 126:
        return struct.pack("!BB", _FIN | opcode, masked | length)
    if length < 65536:
        return struct.pack("!BBH", _FIN | opcode, masked | 126, length)
    return struct.pack("!BBQ", _FIN | opcode, masked | 127, length)


def payload_length(buffer: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """The payload length of the frame whose header starts at `at` (its first two bytes are
    there), and where the header's length field ends; None until the extended length is in."""
    length, at = buffer[at + 1] & 0x7F, at + 2
    if length == 126:
        if len(buffer) - at < 2:
            return None
        return struct.unpack_from("!H", buffer, at)[0], at + 2
    if length == 127:
        if len(buffer) - at < 8:
            return None
        return struct.unpack_from("!Q", buffer, at)[0], at + 8
    return length, at


def client_text(payload: bytes) -> bytes:
    """A final text frame from a client: masked."""
    mask = _MASKS.next()
    return _head(TEXT, len(payload), _MASKED) + mask + apply_mask(payload, mask)


def server_text(payload: bytes) -> bytes:
    """A final text frame from a server: unmasked."""
    return _head(TEXT, len(payload), 0) + payload


def server_frame(opcode: int, payload: bytes) -> bytes:
    """A final frame of any kind from a server (a pong, a close)."""
    return _head(opcode, len(payload), 0) + payload
