"""How phonebot runs under uvicorn, and the bounds on what a client can make it hold.

A slow or silent client must never hold a connection, memory or a call's place for long:
- request heads: uvicorn has no deadline for them (its keep-alive timeout only runs between
  requests), so a client sending a header byte at a time would keep its connection forever.
  `HeadDeadlineProtocol` is uvicorn's own httptools protocol with one: the head must be complete
  within `HEAD_DEADLINE_S` of the connection opening (or of the next request's first byte);
- request bodies: `BodyLimit` refuses one larger than `MAX_BODY_BYTES` (by its Content-Length, before
  reading any of it; or as it arrives) or slower than `BODY_DEADLINE_S`, before the route parses it
  or checks its signature;
- connections: `limit_concurrency` from PHONEBOT_MAX_CALLS (see `uvicorn_options`);
- a media stream's `start` has its own deadline (`phonebot.telephony.stream`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from phonebot import media_socket
from phonebot.errors import error_response
from phonebot.settings import Settings
from phonebot.telephony import messages

log = structlog.get_logger(__name__)

HEAD_DEADLINE_S = 10.0  # a real client sends its whole request head in one packet
KEEP_ALIVE_S = 5.0  # an idle kept-alive connection is closed after this
MAX_BODY_BYTES = 256 * 1024  # Twilio's forms are a few kB; the API's JSON bodies are small too
BODY_DEADLINE_S = 10.0
# Room for every call's media stream, as many short requests again (webhooks, status callbacks,
# API), and some for probes and operators. Past it uvicorn answers new requests 503 at once.
CONNECTIONS_PER_CALL = 2
SPARE_CONNECTIONS = 20


def limit_concurrency(max_calls: int) -> int:
    return CONNECTIONS_PER_CALL * max_calls + SPARE_CONNECTIONS


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The options `phonebot serve` (and the tests) run uvicorn with.

    No WebSocket pings: Twilio streams a frame every 20 ms, and the stream notices a silent line
    by itself; a slow pong must never end a call. ws_max_size: a larger message is refused before
    it is read (close 1009), on every route."""
    return {
        "http": HeadDeadlineProtocol,
        # Cheaper per message than uvicorn's own (media_socket.py); on a uvicorn it was not tested
        # with, uvicorn's own sans-I/O protocol, which it builds on.
        "ws": media_socket.MediaWebSocketProtocol if media_socket.usable() else "websockets-sansio",
        "ws_per_message_deflate": False,  # audio messages: deflating them costs CPU for little
        "ws_max_size": messages.MAX_MESSAGE_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": limit_concurrency(settings.max_calls),
        "ws_ping_interval": None,
        "proxy_headers": True,
        "log_config": None,
    }


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request's head."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEAD_DEADLINE_S, self._head_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a further request on a kept-alive connection
            self._head_timer = self.loop.call_later(HEAD_DEADLINE_S, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info("http.head_too_slow", client=self.client[0] if self.client else None)
            self.transport.close()


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BodyLimit:
    """ASGI middleware: a request body is at most `max_bytes` and arrives within `deadline_s`."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, deadline_s: float = BODY_DEADLINE_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await _refuse(scope, send, _too_large(self.max_bytes))  # none of it read
            return
        bounded = _BoundedReceive(receive, self.max_bytes, asyncio.get_running_loop().time() + self.deadline_s)
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, watched_send)
        except _Refused as refused:
            if started:  # too late to answer otherwise: uvicorn ends the connection
                raise
            await _refuse(scope, send, refused)


class _BoundedReceive:
    def __init__(self, receive: Receive, max_bytes: int, deadline: float) -> None:
        self._receive = receive
        self._left = max_bytes
        self._deadline: float | None = deadline  # None once the whole body is in

    async def __call__(self) -> Message:
        if self._deadline is None:  # the body is in: what follows is the client leaving
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise _Refused(408, "request_timeout", "the request body did not arrive in time") from None
        if message["type"] == "http.request":
            self._left -= len(message.get("body", b""))
            if self._left < 0:
                raise _too_large(0)
            if not message.get("more_body", False):
                self._deadline = None
        return message


def _too_large(max_bytes: int) -> _Refused:
    limit = f" (at most {max_bytes} bytes)" if max_bytes else ""
    return _Refused(413, "too_large", "the request body is too large" + limit)


async def _refuse(scope: Scope, send: Send, refused: _Refused) -> None:
    log.warning("http.body_refused", path=scope.get("path"), status=refused.status)
    response = error_response(refused.status, refused.code, refused.message)
    response.headers["connection"] = "close"  # the rest of the body is not wanted: end the connection
    await response(scope, _never_receive, send)


async def _never_receive() -> Message:
    return {"type": "http.disconnect"}
