"""A fake of Twilio's REST API for the real `twilio` client (pointed at it by TWILIO_API_BASE_URL).

Only what phonebot uses: updating a live call (POST .../Calls/{CallSid}.json) and creating one.
Requests are recorded as (method, path, form); authentication is checked like Twilio does.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class FakeTwilioRest:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self._auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.request_times: list[float] = []  # time.monotonic() of each request's arrival
        self.changed = asyncio.Event()
        self.base_url = ""

    def _call_json(self, call_sid: str, form: dict[str, str]) -> dict[str, Any]:
        return {
            "sid": call_sid,
            "account_sid": self.account_sid,
            "status": form.get("Status", "in-progress"),
            "to": form.get("To", ""),
            "from": form.get("From", ""),
            "direction": "outbound-api",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call_sid}.json",
        }

    async def _update_call(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != self._auth:
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.requests.append((request.method, request.url.path, form))
        self.request_times.append(time.monotonic())
        self.changed.set()
        return JSONResponse(self._call_json(request.path_params["call_sid"], form))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeTwilioRest]:
        app = Starlette(
            routes=[Route("/2010-04-01/Accounts/{account}/Calls/{call_sid}.json", self._update_call, methods=["POST"])]
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            yield self
        finally:
            server.should_exit = True
            await task
            sock.close()
