"""The database never keeps a tool waiting past its timeout: on SQLite and on PostgreSQL, a lock
held by another connection makes the desk give up after DB_TIMEOUT_S with StoreUnavailable, and a
booking tool then answers the model within its own timeout that the diary cannot be reached."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from phonebot.business import Business
from phonebot.store import Desk, StoreUnavailable, migrate
from phonebot.store.engine import DB_TIMEOUT_S, lock_key, make_engine
from phonebot.tools import booking
from phonebot.tools.context import ToolContext
from phonebot.tools.spec import DEFAULT_TIMEOUT_S, ToolSpec
from tests.store.conftest import NOW

TUESDAY_9 = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("America/New_York"))
GIVE_UP_BY = DB_TIMEOUT_S + 1.5  # the timeout and some slack for a busy machine


@pytest.fixture
async def shared_desk(business: Business, database_url: str) -> AsyncIterator[Desk]:
    engine = make_engine(database_url)
    await migrate.upgrade(engine)
    async with Desk(business, engine) as desk:
        yield desk


class Holder:
    """Another program holding the database's lock: SQLite's write lock, or on PostgreSQL the
    bookings table (readers too) or the advisory lock of one business day."""

    def __init__(self, database_url: str) -> None:
        self._url = make_url(database_url)
        self._sqlite: sqlite3.Connection | None = None
        self._postgres: Any = None

    async def hold(self, what: str = "table", day_lock: str = "") -> None:
        if self._url.get_backend_name() == "sqlite":
            assert self._url.database is not None
            self._sqlite = sqlite3.connect(self._url.database, isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
            return
        self._postgres = await asyncpg.connect(self._url.set(drivername="postgresql").render_as_string(False))
        await self._postgres.execute("BEGIN")
        if what == "table":
            await self._postgres.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
        else:
            await self._postgres.execute("SELECT pg_advisory_xact_lock($1)", lock_key(day_lock))

    async def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._postgres is not None:
            await self._postgres.close()


async def _book(desk: Desk) -> None:
    checkup = desk.business.service("check-up")
    assert checkup is not None
    await desk.book(checkup, TUESDAY_9, customer_name="Ada", phone="+12125550100", notes="", call_sid="CA1", now=NOW)


async def test_a_held_lock_makes_the_desk_give_up_in_time(shared_desk: Desk, database_url: str) -> None:
    holder = Holder(database_url)
    await holder.hold()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await _book(shared_desk)
        assert time.monotonic() - started < GIVE_UP_BY
    finally:
        await holder.release()
    await _book(shared_desk)  # free again: the same booking goes through
    assert len(await shared_desk.busy(TUESDAY_9, TUESDAY_9.replace(hour=10))) == 1


async def test_postgres_readers_and_the_days_lock_are_bounded_too(business: Business, postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    await migrate.upgrade(engine)
    async with Desk(business, engine) as desk:
        holder = Holder(postgres_url)
        await holder.hold("table")  # even readers wait for an ACCESS EXCLUSIVE lock
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await desk.get("K7M4PX")
            assert time.monotonic() - started < GIVE_UP_BY
        finally:
            await holder.release()
        holder = Holder(postgres_url)
        await holder.hold("day", desk._lock(TUESDAY_9))  # another replica booking that day, stuck
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await _book(desk)
            assert time.monotonic() - started < GIVE_UP_BY
        finally:
            await holder.release()


async def test_a_booking_tool_answers_within_its_timeout_that_the_diary_is_unreachable(
    shared_desk: Desk, database_url: str
) -> None:
    tool = ToolSpec.of(booking.book_appointment)
    ctx = ToolContext(call_sid="CA1", caller_number="+12125550100", bookings=shared_desk, now=lambda: NOW)
    args = {"service": "check-up", "date": "2026-12-01", "time": "09:00", "customer_name": "Ada"}
    holder = Holder(database_url)
    await holder.hold()
    try:
        started = time.monotonic()
        result, ok = await tool.invoke(ctx, args)
        took = time.monotonic() - started
    finally:
        await holder.release()
    assert not ok and result["error"]["code"] == "diary_unreachable"
    assert took < min(GIVE_UP_BY, DEFAULT_TIMEOUT_S)
    result, ok = await tool.invoke(ctx, args)
    assert ok and result["booked"] is True


async def test_db_upgrade_waits_as_long_as_a_migration_needs(postgres_url: str) -> None:
    engine = make_engine(postgres_url, timeout_s=None)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SHOW statement_timeout"))).scalar() == "0"
            assert (await connection.execute(text("SHOW lock_timeout"))).scalar() == "0"
    finally:
        await engine.dispose()
    engine = make_engine(postgres_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SHOW statement_timeout"))).scalar() == f"{int(DB_TIMEOUT_S)}s"
    finally:
        await engine.dispose()
