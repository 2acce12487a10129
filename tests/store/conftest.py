"""Store fixtures: a small business and a desk over a migrated SQLite file (the databases
themselves come from tests/databases.py, for every test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from phonebot.business import Business, parse_business
from phonebot.store import Desk, migrate
from phonebot.store.engine import make_engine

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


@pytest.fixture
async def desk(business: Business, sqlite_url: str) -> AsyncIterator[Desk]:
    """A desk over a migrated SQLite file."""
    engine = make_engine(sqlite_url)
    await migrate.upgrade(engine)
    async with Desk(business, engine) as opened:
        yield opened
