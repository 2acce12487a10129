"""Fixtures: the real app under uvicorn on 127.0.0.1, a fake Gemini Live server reached by the
real google-genai SDK through its own environment variables, and fake Twilio callers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from twilio.request_validator import RequestValidator

from phonebot import logs
from phonebot.app import build_app
from phonebot.call.ports import ModelConnector
from phonebot.cli import GC_YOUNG_THRESHOLD
from phonebot.serving import uvicorn_options
from phonebot.settings import Settings
from phonebot.tools.spec import ToolSpec
from tests.databases import database_url, engine, postgres, postgres_url, sqlite_url  # noqa: F401 - fixtures
from tests.fakes.gemini_live import FakeLiveServer, make_tls
from tests.fakes.twilio_media import FakeTwilioCall
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.webhook_receiver import WebhookReceiver

# Credentials of the shapes Twilio and Google issue, so that the service under test is ready.
AUTH_TOKEN = "7e57a07e" * 4
API_KEY = "AIzaTestKeyForTheFakeLiveServer00000000"  # AIza and 35 more
PUBLIC_URL = "https://bot.example.test"


def pytest_collection_finish(session: pytest.Session) -> None:
    """The in-process service runs with the garbage collector as `phonebot serve` sets it (cli.py):
    startup objects frozen out of every collection, the young generation collected less often.
    Here that matters more: every test module, SDK and collected test is ~200k objects, and one
    full collection over them takes 0.1-1.4 s (more under load), long enough to fail any latency
    bound of a test it lands in, for a pause the service in production does not have."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def gemini(tls: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeLiveServer]:
    server_ctx, ca_file = tls
    async with FakeLiveServer(server_ctx) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        monkeypatch.setenv("GOOGLE_API_KEY", API_KEY)
        monkeypatch.delenv("GEMINI_API_KEY", raising=False)
        yield server


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='phonebot-test-')}/phonebot.db",
        "public_url": PUBLIC_URL,
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": AUTH_TOKEN,
        "google_api_key": API_KEY,
        "log_format": "console",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Service:
    settings: Settings
    app: Any
    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def local_url(self, public_url: str) -> str:
        """Where a `wss://` URL of PHONEBOT_PUBLIC_URL is on this test server."""
        return public_url.replace("wss://" + PUBLIC_URL.removeprefix("https://"), f"ws://127.0.0.1:{self.port}", 1)

    def caller(self, stream_url: str, signature: str | None = "valid", **kwargs: Any) -> FakeTwilioCall:
        """A Twilio stream to `stream_url` (the wss:// URL of the TwiML), signed as Twilio signs it."""
        if signature == "valid":
            signature = FakeTwilioCall.sign(AUTH_TOKEN, stream_url)
        return FakeTwilioCall(self.local_url(stream_url), signature=signature, **kwargs)

    async def post_voice(self, form: dict[str, str], signature: str | None = "valid") -> httpx.Response:
        return await self.post_twilio("/twilio/voice", form, signature)

    async def post_status(self, form: dict[str, str], signature: str | None = "valid") -> httpx.Response:
        return await self.post_twilio("/twilio/status", form, signature)

    async def post_twilio(self, path: str, form: dict[str, str], signature: str | None = "valid") -> httpx.Response:
        """A POST as Twilio makes it: the form, signed for its URL under PHONEBOT_PUBLIC_URL."""
        headers = {}
        if signature == "valid":
            signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + path, form)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        async with httpx.AsyncClient(base_url=self.http_url) as client:
            return await client.post(path, data=form, headers=headers)

    def api(self) -> httpx.AsyncClient:
        """A client of the operator API, with the right bearer token."""
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        return httpx.AsyncClient(base_url=self.http_url, headers=headers)

    async def call_record(self, call_sid: str) -> dict[str, Any]:
        """`GET /calls/{call_sid}`, which must answer 200."""
        async with self.api() as api:
            response = await api.get(f"/calls/{call_sid}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    @property
    def calls(self) -> Any:
        return self.app.state.calls


@pytest.fixture
async def twilio_rest() -> AsyncIterator[FakeTwilioRest]:
    """Twilio's REST API, faked (point TWILIO_API_BASE_URL at its base_url)."""
    async with FakeTwilioRest("AC" + "0" * 32, AUTH_TOKEN).running() as rest:
        yield rest


@pytest.fixture
async def webhook_endpoint() -> AsyncIterator[WebhookReceiver]:
    """A business's webhook endpoint, down until a test brings it `up()`."""
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest.fixture
async def webhook_receiver(webhook_endpoint: WebhookReceiver) -> WebhookReceiver:
    """A business's webhook endpoint, up."""
    await webhook_endpoint.up()
    return webhook_endpoint


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def extra_tools() -> list[Any] | None:
    """Tool functions to give the model instead of the configured ones (None: the configured ones)."""
    return None


@contextlib.asynccontextmanager
async def running(
    settings: Settings, tools: list[ToolSpec] | None = None, connector: ModelConnector | None = None
) -> AsyncIterator[Service]:
    """The app for `settings` under uvicorn on a free port of 127.0.0.1 (one replica)."""
    app = build_app(settings, connector, tools=tools)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="on", **uvicorn_options(settings))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield Service(settings, app, sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def service(
    gemini: FakeLiveServer, settings_overrides: dict[str, Any], extra_tools: list[Any] | None
) -> AsyncIterator[Service]:
    settings = make_settings(**settings_overrides)
    logs.configure("debug", "console")
    tools = None if extra_tools is None else [ToolSpec.of(function) for function in extra_tools]
    async with running(settings, tools) as service:
        yield service


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    async def wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    return wait
