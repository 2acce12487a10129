"""The softphone's routes: `GET /phone`, its assets, `POST /web/calls`, `WS /web/media/{token}`.

A web call is a call like any other. `POST /web/calls` (bearer PHONEBOT_API_KEY: Gemini minutes
cost money) admits it through the same cap as phone calls, records it with direction `web`, and
issues a stream token bound to its new call id, as the voice webhook does for a phone call. The
page then speaks Twilio's Media Streams protocol to `/web/media/{token}`, and the stream is
claimed and run by exactly the code a Twilio stream is (`telephony.claim`, `telephony.stream`,
`Calls.run`): the token is the only difference, standing where Twilio's signature does.

What is Twilio's alone has a web counterpart here: a call moved out of its stream (the apology
when the model cannot be reached) is told to the page as a `notice` (there is no number to dial);
and the page gets the call's transcript as it goes (`live.py`).

The model session opens when the stream is claimed, not at `POST /web/calls`: the page connects
within a round trip of its POST (a phone call's stream comes a second after its webhook), and a
token that is never used, or is refused, never costs a model session.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import resources

import structlog
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from phonebot.api import authorized
from phonebot.call.admission import Refusal
from phonebot.call.calls import Calls
from phonebot.call.ports import CallInfo
from phonebot.errors import error_response
from phonebot.settings import Settings
from phonebot.store.calls import CallStore
from phonebot.telephony.claim import serve_stream
from phonebot.telephony.stream import MediaStream
from phonebot.web.live import LiveView, PageFeed

log = structlog.get_logger(__name__)

TOKEN_TTL_S = 30.0  # the page connects at once; the call's place under the cap is held this long for it
# The page: only its own scripts, styles and WebSocket; never framed, never a form posted elsewhere.
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "media-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "permissions-policy": "microphone=(self)",
    "cache-control": "no-cache",
}
TURNED_AWAY = {  # status, what the page says, Retry-After (s): as POST /calls answers
    Refusal.FULL: (429, "All lines are busy right now; try again in a few minutes.", 30),
    Refusal.DRAINING: (503, "This replica is shutting down; try again in a moment.", 5),
}


def routes(settings: Settings, store: CallStore, calls: Calls, live: LiveView) -> list[BaseRoute]:
    assets = StaticFiles(packages=[("phonebot.web", "static")])
    return [
        Route("/phone", page, methods=["GET"]),
        Mount("/phone/assets", app=assets, name="phone_assets"),
        Route("/web/calls", start_call(settings, store, calls), methods=["POST"]),
        WebSocketRoute("/web/media/{token}", MediaEndpoint(store, calls, live)),
    ]


async def page(_request: Request) -> Response:
    html = resources.files("phonebot.web").joinpath("static/phone.html").read_bytes()
    return Response(html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def media_url(settings: Settings, request: Request, token: str) -> str:
    """The stream's URL for any client: under PHONEBOT_PUBLIC_URL when it is set, else where this
    request came in (the softphone on 127.0.0.1 needs no public URL). The page uses its own origin."""
    base = settings.public_url or str(request.base_url).rstrip("/")
    return "ws" + base.removeprefix("http") + f"/web/media/{token}"


def start_call(settings: Settings, store: CallStore, calls: Calls) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if (refusal := authorized(settings, request)) is not None:
            return refusal
        info = CallInfo("WC" + secrets.token_hex(16), direction="web")
        structlog.contextvars.bind_contextvars(call_sid=info.call_sid)
        if (turned := calls.admit(info, stream_within_s=TOKEN_TTL_S, early=False)) is not None:
            status, message, retry_after = TURNED_AWAY[turned]
            response = error_response(status, turned.value, message)
            response.headers["retry-after"] = str(retry_after)
            return response
        expires_at = datetime.now(UTC) + timedelta(seconds=TOKEN_TTL_S)  # the stored expiry is a moment later
        try:
            await store.add(info.call_sid, info.direction, info.from_number, info.to_number)
            token = await store.issue_token(info.call_sid, ttl_s=TOKEN_TTL_S)
        except (SQLAlchemyError, OSError) as error:
            log.error("web.store_failed", error=repr(error))
            await calls.release(info.call_sid, refused=Refusal.UNAVAILABLE)
            return error_response(503, "database_unavailable", "the database cannot be reached; try again")
        log.info("web.call_created")
        body = {
            "call_sid": info.call_sid,
            "token": token,
            "media_url": media_url(settings, request, token),
            "expires_at": expires_at.isoformat(timespec="milliseconds"),
        }
        return JSONResponse(body, status_code=201, headers={"cache-control": "no-store"})

    return endpoint


class PageSocket(WebSocket):
    """The page's WebSocket. The call closes its line itself when it ends on its own (the bot's
    goodbye heard, the time limit, a silent line), a moment before its record ends; the page is to
    hear why. So while a call is shown on the page, a close lets the call go on at once and is
    carried out once the page has been sent the call's end (or after `live.FLUSH_S`)."""

    page: PageFeed | None = None
    _closing: asyncio.Task[None] | None = None

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if self._closing is not None:
            return
        if self.page is None:
            await super().close(code, reason)
            return
        self._closing = asyncio.create_task(self._close_when_told(self.page, code, reason), name="page close")

    async def _close_when_told(self, page: PageFeed, code: int, reason: str | None) -> None:
        await page.told()
        if self.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the page went first
                await super().close(code, reason)

    async def closed(self) -> None:
        """Once the call is over: wait for a close it asked for, or close now."""
        if self._closing is not None:
            await self._closing
        elif self.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await super().close()


class MediaEndpoint:
    """`WS /web/media/{token}`: the page's stream, claimed and run as a Twilio stream is (an ASGI app,
    so that the route's socket is a `PageSocket`)."""

    def __init__(self, store: CallStore, calls: Calls, live: LiveView) -> None:
        self._store = store
        self._calls = calls
        self._live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = PageSocket(scope, receive, send)
        await websocket.accept()

        async def run(stream: MediaStream) -> None:
            async with self._live.attach(stream.info.call_sid, websocket) as page:
                websocket.page = page
                try:
                    await self._calls.run(stream)
                finally:
                    websocket.page = None

        async def redirect(call_sid: str, say: str | None, _dial: str | None) -> None:
            # A web call has no number to dial (no transfer is offered to it): the page shows and speaks `say`.
            if say:
                self._live.notice(call_sid, say)

        try:
            await serve_stream(websocket, websocket.path_params["token"], self._store, run, redirect)
        finally:
            await websocket.closed()
