"""No double booking, ever: 50 callers racing for the last place get exactly one booking.

The racers are spread over five desks, each with its own engine and connection pool, as five
replicas would be; on SQLite they share one file, on PostgreSQL one database.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from phonebot.business import Business
from phonebot.store import Desk, PlaceTaken, migrate
from phonebot.store.engine import make_engine
from phonebot.store.tables import bookings
from tests.store.conftest import NOW

TUESDAY_9 = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("America/New_York"))
RACERS = 50
REPLICAS = 5


async def test_fifty_callers_racing_for_the_last_place_get_one_booking(
    business: Business, database_url: str
) -> None:
    filling = business.service("filling")
    assert filling is not None and business.capacity == 2
    desks = [Desk(business, make_engine(database_url)) for _ in range(REPLICAS)]
    try:
        await migrate.upgrade(desks[0].engine)
        await desks[0].book(
            filling, TUESDAY_9, customer_name="First", phone="", notes="", call_sid="", now=NOW
        )
        # One place is left for any time from 9:00 to 10:00. The racers ask for 9:00, 9:15, 9:30
        # and 9:45: different starts, but every one of them overlaps 9:45-10:00, so one of them at most.
        starts = [TUESDAY_9 + timedelta(minutes=15 * (n % 4)) for n in range(RACERS)]
        results = await asyncio.gather(
            *(
                desks[n % REPLICAS].book(
                    filling, start, customer_name=f"Racer {n}", phone="", notes="", call_sid="", now=NOW
                )
                for n, start in enumerate(starts)
            ),
            return_exceptions=True,
        )
        won = [result for result in results if not isinstance(result, BaseException)]
        lost = [result for result in results if isinstance(result, BaseException)]
        assert len(won) == 1
        assert all(isinstance(error, PlaceTaken) for error in lost), {type(error) for error in lost}
        async with desks[0].engine.connect() as connection:
            assert await connection.scalar(select(func.count()).select_from(bookings)) == 2
    finally:
        for desk in desks:
            await desk.close()


async def test_fifty_moves_into_the_last_place_move_one(business: Business, database_url: str) -> None:
    checkup = business.service("check-up")
    assert checkup is not None
    desks = [Desk(business, make_engine(database_url)) for _ in range(REPLICAS)]
    try:
        await migrate.upgrade(desks[0].engine)
        book = desks[0].book
        await book(checkup, TUESDAY_9, customer_name="There", phone="", notes="", call_sid="", now=NOW)
        movers = [
            await book(
                checkup,
                TUESDAY_9 + timedelta(hours=4, minutes=15 * n),
                customer_name=f"Mover {n}",
                phone="",
                notes="",
                call_sid="",
                now=NOW,
            )
            for n in range(16)
        ]
        # All sixteen afternoon bookings try to move into the one place left at 9:00.
        results = await asyncio.gather(
            *(desks[n % REPLICAS].move(mover.reference, TUESDAY_9, NOW) for n, mover in enumerate(movers)),
            return_exceptions=True,
        )
        assert sum(not isinstance(result, BaseException) for result in results) == 1
        assert all(isinstance(result, PlaceTaken) for result in results if isinstance(result, BaseException))
        assert len(await desks[0].busy(TUESDAY_9, TUESDAY_9 + timedelta(minutes=30))) == 2
    finally:
        for desk in desks:
            await desk.close()
