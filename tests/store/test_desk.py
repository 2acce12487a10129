"""The desk on a real SQLite file: book, read, move, cancel, and capacity over durations."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from phonebot.business import Service
from phonebot.store import Appointment, Desk, PlaceTaken, UnknownBooking
from phonebot.store import desk as desk_module
from tests.store.conftest import NOW

NY = ZoneInfo("America/New_York")
TUESDAY_9 = datetime(2026, 12, 1, 9, 0, tzinfo=NY)


def service(desk: Desk, name: str) -> Service:
    found = desk.business.service(name)
    assert found is not None
    return found


async def book(desk: Desk, name: str, start: datetime, phone: str = "+12125550100") -> Appointment:
    return await desk.book(
        service(desk, name),
        start,
        customer_name="Ada Lovelace",
        phone=phone,
        notes="",
        call_sid="CA1",
        now=NOW,
    )


async def test_a_booking_is_stored_in_utc_and_read_back_by_reference(desk: Desk) -> None:
    made = await book(desk, "filling", TUESDAY_9)
    assert made.starts_at == datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    assert made.ends_at - made.starts_at == timedelta(hours=1)
    found = await desk.get(f" {made.reference[:3].lower()}-{made.reference[3:]} ")
    assert found == made
    assert found.starts_at.tzinfo is UTC and found.status == "booked" and found.call_sid == "CA1"


async def test_capacity_is_counted_over_durations(desk: Desk) -> None:
    await book(desk, "filling", TUESDAY_9)  # 9:00-10:00
    await book(desk, "check-up", TUESDAY_9 + timedelta(minutes=30))  # 9:30-10:00
    with pytest.raises(PlaceTaken):  # 9:45 overlaps both
        await book(desk, "check-up", TUESDAY_9 + timedelta(minutes=45))
    with pytest.raises(PlaceTaken):  # so does a filling from 9:15
        await book(desk, "filling", TUESDAY_9 + timedelta(minutes=15))
    await book(desk, "check-up", TUESDAY_9)  # 9:00-9:30 runs beside the filling only
    await book(desk, "check-up", TUESDAY_9 + timedelta(hours=1))  # both end at 10:00: room again


async def test_upcoming_finds_a_number_written_either_way(desk: Desk) -> None:
    later = await book(desk, "check-up", TUESDAY_9 + timedelta(days=1))
    sooner = await book(desk, "check-up", TUESDAY_9)
    await book(desk, "check-up", TUESDAY_9, phone="+447700900123")
    assert await desk.upcoming("+1 (212) 555-0100", NOW) == [sooner, later]
    assert await desk.upcoming("212 555 0100", NOW) == [sooner, later]  # no country code
    assert await desk.upcoming("+12125550100", later.starts_at) == [later]  # from then on
    assert [a.phone for a in await desk.upcoming("07700 900123", NOW)] == ["+447700900123"]
    assert await desk.upcoming("+442125550100", NOW) == []  # with "+", the whole number must match


async def test_cancel_frees_the_place_and_happens_once(desk: Desk) -> None:
    first = await book(desk, "filling", TUESDAY_9)
    await book(desk, "filling", TUESDAY_9)
    cancelled = await desk.cancel(first.reference.lower(), NOW)
    assert cancelled.status == "cancelled" and cancelled.reference == first.reference
    with pytest.raises(UnknownBooking):
        await desk.cancel(first.reference, NOW)
    assert (await desk.get(first.reference)) == cancelled
    await book(desk, "filling", TUESDAY_9)  # the place is free again


async def test_move_keeps_the_length_and_does_not_count_its_own_place(desk: Desk) -> None:
    own = await book(desk, "filling", TUESDAY_9)  # 9:00-10:00
    await book(desk, "filling", TUESDAY_9)
    # 9:30-10:30 overlaps itself and the other filling: only the other counts.
    moved = await desk.move(own.reference, TUESDAY_9 + timedelta(minutes=30), NOW)
    assert moved.starts_at == datetime(2026, 12, 1, 14, 30, tzinfo=UTC)
    assert moved.ends_at - moved.starts_at == timedelta(hours=1)
    assert await desk.get(own.reference) == moved
    await book(desk, "filling", TUESDAY_9 + timedelta(hours=2))
    await book(desk, "filling", TUESDAY_9 + timedelta(hours=2))
    with pytest.raises(PlaceTaken):  # 11:00 is full: the booking stays where it was
        await desk.move(own.reference, TUESDAY_9 + timedelta(hours=2), NOW)
    assert await desk.get(own.reference) == moved
    with pytest.raises(UnknownBooking):
        await desk.move("ZZZZZZ", TUESDAY_9, NOW)


async def test_a_reference_already_taken_is_drawn_again(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter(["AAAAAA", "AAAAAA", "BBBBBB"])
    monkeypatch.setattr(desk_module, "new_reference", lambda: next(draws))
    first = await book(desk, "check-up", TUESDAY_9)
    second = await book(desk, "check-up", TUESDAY_9)
    assert (first.reference, second.reference) == ("AAAAAA", "BBBBBB")


async def test_another_business_in_the_same_database_is_invisible(desk: Desk) -> None:
    made = await book(desk, "filling", TUESDAY_9)
    other = Desk(replace(desk.business, key="other-clinic"), desk.engine)
    assert await other.get(made.reference) is None
    assert await other.busy(TUESDAY_9, TUESDAY_9 + timedelta(hours=1)) == []
    await other.book(
        service(desk, "filling"), TUESDAY_9, customer_name="B", phone="", notes="", call_sid="", now=NOW
    )
    await other.book(
        service(desk, "filling"), TUESDAY_9, customer_name="C", phone="", notes="", call_sid="", now=NOW
    )
