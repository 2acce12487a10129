"""Just enough RFC 6455 for the bench's fakes: the opening handshake and unfragmented frames.

The load generator and the fake model share one core with each other, so they speak WebSocket
over bare asyncio Protocols instead of a full library: a frame in or out is a few microseconds
of Python, and the figures measure the service, not its fakes. No extensions are negotiated
(so no permessage-deflate on either link) and pings are answered with pongs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Iterator

try:
    from websockets.speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - websockets always ships its C speedups on CPython/x86
    _apply_mask_c = None

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEADERS_END = b"\r\n\r\n"


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def client_handshake(host: str, path: str, headers: dict[str, str]) -> tuple[bytes, str]:
    """The upgrade request, and the Sec-WebSocket-Accept value the server must answer with."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept_key(key)


def split_head(buffer: bytearray) -> tuple[bytes, bytes] | None:
    """(HTTP head, the bytes after it) once `buffer` holds the whole head; None until then."""
    end = buffer.find(HEADERS_END)
    if end < 0:
        return None
    return bytes(buffer[:end]), bytes(buffer[end + len(HEADERS_END) :])


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """(first line, lower-cased headers) of an HTTP request or response head."""
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return first, headers


def server_handshake(key: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


def b64_size(text: str) -> int:
    """Bytes encoded by base64 text, standard or URL-safe, padded or not (without decoding it)."""
    return len(text.rstrip("=")) * 3 // 4


def b64_decode(text: str) -> bytes:
    """Bytes of base64 text, standard or URL-safe, padded or not (protobuf JSON allows all four)."""
    return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))


def apply_mask(data: bytes, mask: bytes) -> bytes:
    if _apply_mask_c is not None:
        return _apply_mask_c(data, mask)
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One final frame. Clients must mask (RFC 6455 5.3); servers must not."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, (0x80 if masked else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, (0x80 if masked else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, (0x80 if masked else 0) | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


class FrameReader:
    """Feed it bytes from the socket; it yields whole messages as (opcode, payload)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, at = b1 & 0x7F, pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                (n,) = struct.unpack_from("!H", buf, at)
                at += 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                (n,) = struct.unpack_from("!Q", buf, at)
                at += 8
            mask = None
            if b1 & 0x80:
                if len(buf) - at < 4:
                    break
                mask = bytes(buf[at : at + 4])
                at += 4
            if len(buf) - at < n:
                break
            payload = bytes(buf[at : at + n])
            pos = at + n
            if mask is not None:
                payload = apply_mask(payload, mask)
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode >= CLOSE:  # control frames may arrive between fragments
                yield opcode, payload
                continue
            if opcode != CONTINUATION:
                self._opcode = opcode
            self._parts.append(payload)
            if fin:
                message = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
                self._parts = []
                yield self._opcode, message
        del buf[:pos]
