"""Store fixtures: a small business, a SQLite file per test, and a PostgreSQL cluster per session
with a fresh database per test."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from phonebot.business import Business, parse_business
from phonebot.store import Desk, migrate
from phonebot.store.engine import make_engine
from tests.store.postgres import Cluster

# Monday 30 November 2026, 10:00 in New York (UTC-5 in winter).
NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)

BUSINESS = {
    "name": "Test Clinic",
    "timezone": "America/New_York",
    "slot_step_minutes": 15,
    "capacity": 2,
    "closed": ["2026-12-25"],
    "hours": {
        day: ["09:00-12:00", "13:00-17:00"]
        for day in ("monday", "tuesday", "wednesday", "thursday", "friday")
    },
    "services": [
        {"name": "Check-up", "duration_minutes": 30},
        {"name": "Filling", "duration_minutes": 60},
    ],
}


@pytest.fixture
def business() -> Business:
    return parse_business(BUSINESS)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    cluster = Cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


_databases = itertools.count()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bookings.db'}"


@pytest.fixture
async def postgres_url(postgres: Cluster) -> str:
    """A new, empty database in the session's cluster."""
    name = f"test_{next(_databases)}"
    admin = await asyncpg.connect(postgres.admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return postgres.url(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend in turn."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def desk(business: Business, sqlite_url: str) -> AsyncIterator[Desk]:
    """A desk over a migrated SQLite file."""
    engine = make_engine(sqlite_url)
    await migrate.upgrade(engine)
    async with Desk(business, engine) as opened:
        yield opened
