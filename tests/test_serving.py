"""What a slow, silent or oversized client can make `phonebot serve` hold: nothing for long. A real
process with the options `phonebot serve` gives uvicorn; its memory read from /proc; a good call
through it all the while, losing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from phonebot import serving
from phonebot.telephony import stream
from tests.conftest import AUTH_TOKEN, PUBLIC_URL
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_media import FakeTwilioCall
from tests.phone import assert_lossless, dial
from tests.served import Served, serve

MB = 1024 * 1024
FORM_BYTES = 45 * MB


async def _post_raw(served: Served, head: bytes, body_chunks: int, chunk: bytes) -> tuple[bytes, int, float]:
    """Send a request head, then body chunks until the server answers or hangs up. Returns the
    answer's status line (empty if the server reset the connection first: it closed it with body
    bytes unread), how many body bytes the socket took, and how long the server took to end it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    started, sent = time.monotonic(), 0
    writer.write(head)

    async def send_body() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            for _ in range(body_chunks):
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    sender = asyncio.create_task(send_body())
    status = b""
    with contextlib.suppress(ConnectionError):
        status = await asyncio.wait_for(reader.readline(), 30)
        await asyncio.wait_for(reader.read(), 5)  # and the server ends the connection
    took = time.monotonic() - started
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    writer.close()
    return status, sent, took


def _head(content_length: int | None) -> bytes:
    length = f"Content-Length: {content_length}" if content_length is not None else "Transfer-Encoding: chunked"
    return (
        "POST /twilio/voice HTTP/1.1\r\nHost: bot.example.test\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n{length}\r\n\r\n"
    ).encode()


async def test_an_unsigned_45_mb_form_is_refused_before_it_is_read(tmp_path: Path) -> None:
    async with serve(tmp_path) as served, httpx.AsyncClient(base_url=served.http_url) as client:
        # Warm up what a form post loads (a small unsigned form: 403), then measure.
        assert (await client.post("/twilio/voice", data={"CallSid": "CA1"})).status_code == 403
        before = served.peak_rss_bytes()
        # Refused on its Content-Length alone: answered without waiting for any of the body.
        status, _, took = await _post_raw(served, _head(FORM_BYTES), 0, b"")
        assert b" 413 " in status and took < 2.0
        # Sent anyway, as fast as the socket takes it: the server hangs up at once.
        chunk = b"From=" + b"1" * (64 * 1024 - 6) + b"&"
        status, sent, took = await _post_raw(served, _head(FORM_BYTES), FORM_BYTES // len(chunk), chunk)
        assert status in (b"", b"HTTP/1.1 413 Request Entity Too Large\r\n") and took < 2.0
        assert sent < FORM_BYTES // 3, f"{sent / MB:.1f} MB were taken"
        # Without a Content-Length, counted as it comes: refused once past the cap.
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        status, sent, took = await _post_raw(served, _head(None), FORM_BYTES // len(chunk), framed)
        assert status in (b"", b"HTTP/1.1 413 Request Entity Too Large\r\n") and took < 2.0
        assert sent < FORM_BYTES // 3, f"{sent / MB:.1f} MB were taken"
        grown = served.peak_rss_bytes() - before
        assert grown < 5 * MB, f"peak RSS grew by {grown / MB:.1f} MB"
        # The service is none the worse: a normal form is answered as before.
        assert (await client.post("/twilio/voice", data={"CallSid": "CA1"})).status_code == 403


async def test_slow_and_silent_clients_are_cut_and_the_call_goes_on(tmp_path: Path, gemini: FakeLiveServer) -> None:
    async with serve(tmp_path, PHONEBOT_MAX_CALLS="10") as served:
        call = await dial(served)
        session = await gemini.next_session()
        await call.connect()
        await session.wait_for_text("Greet")

        slow_bodies = [await _dribbling_body(served) for _ in range(10)]  # (first: under the limit)
        slow_heads = [await _dribbling_head(served) for _ in range(100)]
        silent = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(20)]
        no_start = [await _stream_without_start(served, chatty=False) for _ in range(10)]
        chatty = [await _stream_without_start(served, chatty=True) for _ in range(10)]
        all_open = time.monotonic()  # each one's deadline runs from its own opening, before this

        # Over the connection limit (2 x 10 calls + 20), new requests are turned away at once...
        async with httpx.AsyncClient(base_url=served.http_url) as client:
            assert (await client.get("/healthz")).status_code == 503
        # ...while the call in progress loses nothing either way.
        await assert_lossless(call, session)

        deadline = max(serving.HEAD_DEADLINE_S, serving.BODY_DEADLINE_S, stream.START_DEADLINE_S)
        results = await asyncio.gather(
            *(_closed(reader) for reader, _ in slow_bodies + slow_heads + silent),
            *(_ws_closed(ws) for ws in no_start + chatty),
        )
        assert max(at for at, _ in results) - all_open < deadline + 4.0  # (slack for a busy machine)
        assert [answer.split(b"\r\n")[0] for _, answer in results[:10]] == [b"HTTP/1.1 408 Request Timeout"] * 10
        async with httpx.AsyncClient(base_url=served.http_url) as client:
            assert (await client.get("/healthz")).status_code == 200
        assert not call.closed.is_set()
        await call.stop()


async def _dribbling_head(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)

    async def dribble() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)

    _keep(asyncio.create_task(dribble()))
    return reader, writer


async def _dribbling_body(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A whole head, then a byte of its 1000-byte body every 0.5 s; quiet before the deadline, so
    that no byte of ours is in flight when the server answers (which would reset the socket)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(_head(1000))

    async def dribble() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(int(serving.BODY_DEADLINE_S / 0.5) - 4):
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.5)

    _keep(asyncio.create_task(dribble()))
    return reader, writer


async def _stream_without_start(served: Served, chatty: bool) -> object:
    """A media stream, validly signed, that never sends `start` (chatty: says `connected` again and again)."""
    url = f"{PUBLIC_URL.replace('https://', 'wss://')}/twilio/media/any-token"
    headers = {"X-Twilio-Signature": FakeTwilioCall.sign(AUTH_TOKEN, url)}
    ws = await connect(f"ws://127.0.0.1:{served.port}/twilio/media/any-token", additional_headers=headers)

    async def chatter() -> None:
        with contextlib.suppress(Exception):
            while True:
                await ws.send('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
                await asyncio.sleep(0.5)

    if chatty:
        _keep(asyncio.create_task(chatter()))
    return ws


async def _closed(reader: asyncio.StreamReader) -> tuple[float, bytes]:
    """When the server ended the connection, and what it said first."""
    answer = b""
    with contextlib.suppress(ConnectionError):  # a reset is an end too
        answer = await asyncio.wait_for(reader.read(), 30)
    return time.monotonic(), answer


async def _ws_closed(ws: object) -> tuple[float, bytes]:
    await asyncio.wait_for(ws.wait_closed(), 30)  # type: ignore[attr-defined]
    return time.monotonic(), b""


_tasks: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
