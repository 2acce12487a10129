"""A business's webhook endpoint, for the finished-call webhook tests: a real HTTP server on
127.0.0.1 (uvicorn) that keeps every request, and that can be down, failing or slow.

Its port is taken at once but not listened on until `up()`: a connection before then is
refused, as by a receiver that is down. `answers` is the status codes to give, one per request,
in order (then 200); `delays` how long to hold each answer back, in order (then none). `verify()` checks a Standard
Webhooks signature by hand (hmac and base64), independently of the `standardwebhooks` package.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TOLERANCE_S = 300  # what the Standard Webhooks libraries accept between timestamp and now
SECRET = "whsec_" + base64.b64encode(b"phonebot test webhook secret, 38 bytes").decode()


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
    """Raise AssertionError unless `headers` sign `body` with `secret` per Standard Webhooks."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    event_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs((now or time.time()) - int(timestamp)) <= TOLERANCE_S, "timestamp out of tolerance"
    signed = f"{event_id}.{timestamp}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = headers["webhook-signature"].split(" ")
    assert any(hmac.compare_digest(expected, signature) for signature in given), "no matching v1 signature"


class WebhookReceiver:
    def __init__(self, answers: list[int] | None = None, delays: list[float] | None = None) -> None:
        self.answers = list(answers or [])
        self.delays = list(delays or [])
        self.received: list[Received] = []  # every request, answered or not
        self.accepted: list[Received] = []  # those answered 2xx
        self._changed = asyncio.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/phonebot"

    async def up(self) -> None:
        app = Starlette(routes=[Route("/hooks/phonebot", self._endpoint, methods=["POST"])])
        # A request left hanging (its sender was killed) holds the shutdown up a second at most.
        config = uvicorn.Config(app, log_config=None, lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def down(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None

    async def close(self) -> None:
        await self.down()
        self._sock.close()

    async def _endpoint(self, request: Request) -> Response:
        received = Received(dict(request.headers), await request.body(), time.monotonic())
        self.received.append(received)
        self._changed.set()
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        status = self.answers.pop(0) if self.answers else 200
        if 200 <= status < 300:
            self.accepted.append(received)
            self._changed.set()
        return Response(status_code=status)

    async def wait_for(self, accepted: int = 1, timeout: float = 10.0) -> list[Received]:
        """Wait until `accepted` requests have been answered 2xx; returns them."""
        async with asyncio.timeout(timeout):
            while len(self.accepted) < accepted:
                self._changed.clear()
                await self._changed.wait()
        return self.accepted
