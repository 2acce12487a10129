"""/healthz answers whenever the process does; /readyz says 200 only when calls can be taken here, and
otherwise 503 with every reason: settings missing, database away, booking desk closed, draining, full."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from phonebot.health import database_problem
from phonebot.store import migrate
from phonebot.store.engine import make_engine
from tests.conftest import Service, make_settings, running
from tests.fakes.gemini_live import FakeLiveServer
from tests.phone import dial


async def get(service: Service, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.http_url) as client:
        return await client.get(path)


async def reasons(service: Service) -> list[str]:
    response = await get(service, "/readyz")
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert error["message"]
    return list(error["reasons"])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once this returns


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says a word (a database behind a dead network)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_ready_when_everything_holds(service: Service) -> None:
    ready = await get(service, "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ready": True, "active_calls": 0}
    assert (await get(service, "/healthz")).json() == {"ok": True}


async def test_not_ready_without_the_settings_calls_need() -> None:
    settings = make_settings(public_url=None, twilio_account_sid=None, twilio_auth_token=None, google_api_key=None)
    async with running(settings) as service:
        found = await reasons(service)
        assert (await get(service, "/healthz")).status_code == 200  # alive all the same
    for variable in ("GOOGLE_API_KEY", "PHONEBOT_PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        assert sum(variable in reason for reason in found) == 1, found
    assert len(found) == 4, found


async def test_not_ready_with_the_database_unreachable() -> None:
    url = f"postgresql+asyncpg://phonebot:s3cret-pw@127.0.0.1:{closed_port()}/phonebot"
    async with running(make_settings(database_url=url)) as service:
        found = await reasons(service)
        assert (await get(service, "/healthz")).status_code == 200
    assert len(found) == 1 and found[0].startswith("database: "), found
    assert "s3cret" not in found[0]


async def test_a_database_that_does_not_answer_is_not_waited_for(silent_server: int) -> None:
    engine = make_engine(f"postgresql+asyncpg://phonebot:pw@127.0.0.1:{silent_server}/phonebot")
    try:
        began = time.monotonic()
        problem = await database_problem(engine, migrate.head(), timeout_s=0.3)
        assert time.monotonic() - began < 1.0
    finally:
        await engine.dispose()
    assert problem == "database: no answer within 0.3 s"


async def test_not_ready_with_the_database_behind_the_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/phonebot.db"
    async with running(make_settings(database_url=url)) as service:
        assert (await get(service, "/readyz")).status_code == 200
        engine = make_engine(url)
        try:  # the database was restored from a backup of an older phonebot's, say
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        finally:
            await engine.dispose()
        found = await reasons(service)
    assert len(found) == 1 and found[0].startswith("database: at schema revision 0001, phonebot needs"), found


async def test_not_ready_with_the_booking_desk_closed(tmp_path: Path) -> None:
    broken = tmp_path / "business.toml"
    broken.write_text("name = \n")
    async with running(make_settings(business_file=broken)) as service:
        found = await reasons(service)
    assert len(found) == 1 and found[0].startswith("booking desk closed: PHONEBOT_BUSINESS_FILE"), found


async def test_not_ready_while_draining(service: Service) -> None:
    service.app.state.drain.begin()
    assert service.app.state.drain.draining
    assert await reasons(service) == ["draining: shutting down, taking no new calls"]


@pytest.mark.parametrize("settings_overrides", [{"max_calls": 1}])
async def test_not_ready_at_the_cap(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    call = await dial(service)  # the webhook holds a place from now on, before any stream
    assert await reasons(service) == ["full: 1 calls held, PHONEBOT_MAX_CALLS is 1"]
    await gemini.next_session()
    await call.connect()
    await call.stop()
    await wait_until(lambda: service.calls.admission.count == 0)
    assert (await get(service, "/readyz")).status_code == 200
