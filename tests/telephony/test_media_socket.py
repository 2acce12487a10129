"""phonebot's media socket protocol (`phonebot.media_socket`) reads WebSocket frames itself; this
holds it to uvicorn's own sans-I/O protocol, frame for frame: the same bytes sent by a client over a
real socket (well-formed, split anyhow, or broken in every way RFC 6455 names) give the app the
same messages and the client the same frames and close code from both."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from websockets.speedups import apply_mask

from phonebot import media_socket
from phonebot.media_socket import MediaWebSocketProtocol

MAX_SIZE = 64 * 1024  # as `serving.uvicorn_options`: messages.MAX_MESSAGE_BYTES
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
PROTOCOLS = {"uvicorn": "websockets-sansio", "phonebot": MediaWebSocketProtocol}


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True,
          length: int | None = None) -> bytes:
    """A client frame as it goes on the wire; `length` overrides the declared payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


def close(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts, echoes every message as text, and reports how the connection ended as its last."""
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)  # the client's first frames arrive before the answer
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            scope["state"]["ended"].append(message["code"])
            scope["state"]["done"].set()
            return
        echo = f"text:{message['text']}" if message.get("text") is not None else f"bytes:{message['bytes'].hex()}"
        try:
            await send({"type": "websocket.send", "text": echo})
        except OSError:  # uvicorn's ClientDisconnected: the peer's close came first
            scope["state"]["ended"].append("send refused")


class Served:
    def __init__(self, ws: Any) -> None:
        self.ended: list[int | str] = []
        self.done = asyncio.Event()
        state = {"ended": self.ended, "done": self.done}

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                return
            scope["state"] = state
            await echo_app(scope, receive, send)

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, ws=ws, ws_max_size=MAX_SIZE, ws_ping_interval=None,
                                ws_per_message_deflate=False, lifespan="off", log_config=None)
        self.server = uvicorn.Server(config)


@pytest.fixture
async def served() -> AsyncIterator[dict[str, Served]]:
    servers = {name: Served(ws) for name, ws in PROTOCOLS.items()}
    tasks = [asyncio.create_task(s.server.serve(sockets=[s.sock])) for s in servers.values()]
    while not all(s.server.started for s in servers.values()):
        await asyncio.sleep(0.01)
    yield servers
    for s in servers.values():
        s.server.should_exit = True
    await asyncio.gather(*tasks)


def _request(port: int, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole frame the server sent (unmasked, as a server's must be)."""
    frames, pos = [], 0
    while len(data) - pos >= 2:
        first, length, at = data[pos], data[pos + 1] & 0x7F, pos + 2
        assert not data[pos + 1] & 0x80, "a server frame must not be masked"
        if length == 126:
            (length,) = struct.unpack_from("!H", data, at)
            at += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, at)
            at += 8
        frames.append((first & 0x0F, data[at : at + length]))
        pos = at + length
    return frames


Outcome = tuple[list[tuple[int, bytes]], list[int | str]]  # the server's frames; what the app heard last


async def exchange(served: Served, chunks: list[bytes], early: bool = False) -> Outcome:
    """Send `chunks` (a pause between them) after the handshake, or `early`: all but the last before
    its answer; what came back until the server closed the connection: its frames (a close frame
    as its code alone) and how the app saw the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(_request(served.port, "/slow" if early else "/media"))
    if not early:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
    for n, chunk in enumerate(chunks, 1):
        last = n == len(chunks) > 1
        if early and (last or n == 1 == len(chunks)):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101"), head
            early = False
        # The last (usually a close) once the app has answered the rest: what it answers is compared too.
        await asyncio.sleep(0.2 if last else 0.01)
        writer.write(chunk)
    received = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    writer.close()
    await asyncio.wait_for(served.done.wait(), 5)  # the app's last receive
    frames = [(op, payload[:2] if op == CLOSE else payload) for op, payload in _server_frames(received)]
    return frames, list(served.ended)


async def both(served: dict[str, Served], chunks: list[bytes], early: bool = False) -> dict[str, Any]:
    return {name: await exchange(s, list(chunks), early) for name, s in served.items()}


def _bye() -> bytes:
    return close(1000, b"bye")


_EARLY = frame(TEXT, b"early")
CASES: dict[str, list[bytes]] = {
    "messages, one write each": [frame(TEXT, b'{"event":"media"}'), frame(BINARY, b"\x00\xff"), _bye()],
    "many messages in one write": [b"".join(frame(TEXT, f"m{k}".encode()) for k in range(100)), _bye()],
    "messages and the close in one write": [b"".join(frame(TEXT, f"m{k}".encode()) for k in range(3)) + _bye()],
    "a frame split byte by byte": [bytes([b]) for b in frame(TEXT, "é".encode() * 200)] + [_bye()],
    "a 64 KiB message, then a short one": [frame(TEXT, b"x" * (MAX_SIZE - 1)), frame(TEXT, b"y" * 200), _bye()],
    "fragments with a ping between": [
        frame(TEXT, b"ab", fin=False), frame(PING, b"p1"), frame(CONT, b"cd", fin=False), frame(CONT, b"ef"), _bye()],
    "an unsolicited pong is ignored": [frame(PONG, b"x"), frame(TEXT, b"after"), _bye()],
    "a close with no code": [frame(TEXT, b"a"), frame(CLOSE, b"")],
    "a close with a reason": [close(4000, "ça va".encode())],
    "invalid UTF-8 in a text message": [frame(TEXT, b"ok"), frame(TEXT, b"\xff\xfe")],
    "invalid UTF-8 across fragments": [frame(TEXT, b"\xc3", fin=False), frame(CONT, b"\x28")],
    "a reserved bit": [frame(TEXT, b"ok"), frame(TEXT, b"x", rsv=4)],
    "an unmasked client frame": [frame(TEXT, b"x", masked=False)],
    "a reserved opcode": [frame(0x3, b"x")],
    "a reserved control opcode": [frame(0xB, b"x")],
    "a continuation with nothing to continue": [frame(CONT, b"x")],
    "a new message inside a fragmented one": [frame(TEXT, b"a", fin=False), frame(TEXT, b"b")],
    "a control frame over 125 bytes": [frame(PING, b"p" * 126)],
    "a fragmented control frame": [frame(PING, b"p", fin=False)],
    "a frame over the size limit": [frame(TEXT, b"", length=MAX_SIZE + 1)],
    "fragments over the size limit together": [frame(TEXT, b"a" * 40000, fin=False), frame(CONT, b"b" * 40000)],
    "a close code out of range": [close(999)],
    "a reserved close code": [close(1005)],
    "an undefined close code": [close(2000)],
    "a one-byte close payload": [frame(CLOSE, b"\x03")],
    "invalid UTF-8 in a close reason": [close(1000, b"\xff")],
    "a frame in two parts before the answer": [_EARLY[:3], _EARLY[3:], _bye()],
    "over 64 KiB before the answer": [frame(TEXT, b"z" * (MAX_SIZE - 1)) + _EARLY[:9], _EARLY[9:] + _bye()],
}


@pytest.mark.parametrize("case", list(CASES))
async def test_frames_as_uvicorn_reads_them(served: dict[str, Served], case: str) -> None:
    results = await both(served, CASES[case], early=case.endswith("before the answer"))
    assert results["phonebot"] == results["uvicorn"]
    frames, ended = results["phonebot"]
    assert frames and frames[-1][0] == CLOSE and isinstance(ended[-1], int)  # a close, and the app heard of it


async def test_a_frame_over_the_limit_is_refused_before_its_payload(served: dict[str, Served]) -> None:
    # Only the header is sent: the server must not wait for 64 KiB that never come.
    for s in served.values():
        frames, ended = await exchange(s, [frame(TEXT, b"", length=MAX_SIZE + 1)[:10]])
        assert frames == [(CLOSE, struct.pack("!H", 1009))] and ended == [1009]


def test_it_runs_on_the_uvicorn_it_was_tested_with_only() -> None:
    assert media_socket.usable()  # the release pyproject.toml pins: moving the pin means testing it here
    assert not media_socket.usable("0.53.1") and not media_socket.usable("0.55.0") and not media_socket.usable("x")
