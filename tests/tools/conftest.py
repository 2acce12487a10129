"""Tool fixtures: a desk opened from settings as the app opens it (business file, SQLite file),
and a ToolContext for a caller, with the clock fixed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from phonebot.settings import Settings
from phonebot.store import Desk, open_desk
from phonebot.tools.context import ToolContext

# Monday 30 November 2026, 10:07 in New York (UTC-5 in winter).
NOW = datetime(2026, 11, 30, 15, 7, tzinfo=UTC)
CALLER = "+12125550100"

BUSINESS_TOML = """
name = "Hudson Dental"
timezone = "America/New_York"
slot_step_minutes = 15
capacity = 2
closed = [2026-12-25]

[hours]
monday = ["09:00-12:00", "13:00-17:00"]
tuesday = ["09:00-12:00", "13:00-17:00"]
wednesday = ["09:00-19:00"]
thursday = ["09:00-12:00", "13:00-17:00"]
friday = ["09:00-12:00", "13:00-17:00"]
saturday = ["10:00-13:00"]

[[services]]
name = "Check-up"
duration_minutes = 30
aliases = ["exam"]

[[services]]
name = "Cleaning"
duration_minutes = 45

[[services]]
name = "Filling"
duration_minutes = 60
"""


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    business_file = tmp_path / "business.toml"
    business_file.write_text(BUSINESS_TOML)
    settings = Settings(
        business_file=business_file, database_url=f"sqlite+aiosqlite:///{tmp_path / 'phonebot.db'}"
    )
    async with await open_desk(settings) as opened:
        yield opened


@pytest.fixture
def make_ctx(desk: Desk) -> Callable[..., ToolContext]:
    def make(caller: str = CALLER, now: datetime = NOW, call_sid: str = "CA0001") -> ToolContext:
        return ToolContext(call_sid=call_sid, caller_number=caller, bookings=desk, now=lambda: now)

    return make


@pytest.fixture
def ctx(make_ctx: Callable[..., ToolContext]) -> ToolContext:
    return make_ctx()
