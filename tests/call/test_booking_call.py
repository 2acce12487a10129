"""The booking tools through the whole path: the fake Gemini server asks, the running app runs the
tool against its SQLite database, and the answer goes back over the Live connection."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.engine import make_url

from phonebot.business import load_business
from phonebot.store.desk import Desk
from phonebot.tools.spec import DEFAULT_TIMEOUT_S
from tests.call.test_tool_runtime import call_tool, declared, wait_for_response
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.phone import CALLER, Intact, another_caller, answer

_ids = itertools.count()


async def ask(session: FakeLiveSession, name: str, **args: Any) -> dict[str, Any]:
    call_id = f"{name}-{next(_ids)}"
    await call_tool(session, call_id, name, args)
    return (await wait_for_response(session, call_id))["response"]


def next_open_day(service: Service) -> date:
    business = load_business(service.settings.business_file)
    day = business.local_date(datetime.now(UTC)) + timedelta(days=2)
    while business.is_closed(day):
        day += timedelta(days=1)
    return day


def next_closed_day(service: Service) -> date:
    business = load_business(service.settings.business_file)
    day = business.local_date(datetime.now(UTC)) + timedelta(days=1)
    while not business.is_closed(day):
        day += timedelta(days=1)
    return day


async def test_a_booking_conversation(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    assert {"check_availability", "book_appointment", "find_booking", "cancel_booking", "reschedule_booking"} <= set(
        declared(session)
    )
    assert "Riverside Dental Practice" in str(session.setup["systemInstruction"])  # the bot knows whom it answers for
    day = next_open_day(service)

    free = await ask(session, "check_availability", service="cleaning", date_from=day.isoformat())
    times = free["days"][0]["times"]
    assert free["days"][0]["date"] == day.isoformat() and len(times) >= 2

    booking = {"service": "cleaning", "date": day.isoformat(), "time": times[0], "customer_name": "Ada Lovelace"}
    booked = await ask(session, "book_appointment", **booking)
    assert booked["booked"] is True and booked["time"] == times[0]
    reference = booked["reference"]
    assert not set(reference) & set("01OI")  # easy to say and hear

    found = await ask(session, "find_booking")  # by the caller's own number
    assert [b["reference"] for b in found["bookings"]] == [reference]

    moved = await ask(session, "reschedule_booking", reference=reference.lower(), date=day.isoformat(), time=times[1])
    assert moved["rescheduled"] is True and moved["time"] == times[1]

    desk: Desk = service.calls.bookings
    stored = await desk.get(reference)
    assert stored is not None
    assert stored.phone == CALLER and stored.customer_name == "Ada Lovelace"
    assert stored.starts_at.astimezone(desk.business.timezone).strftime("%H:%M") == times[1]

    cancelled = await ask(session, "cancel_booking", reference=reference)
    assert cancelled["cancelled"] is True
    assert (await ask(session, "find_booking"))["error"]["code"] == "not_found"  # nothing upcoming
    await call.stop()


async def test_errors_the_bot_can_explain(service: Service, gemini: FakeLiveServer) -> None:
    call, session = await answer(service, gemini)
    day, closed = next_open_day(service), next_closed_day(service)
    past = (datetime.now(UTC) - timedelta(days=3)).date()

    async def error_of(name: str, **args: Any) -> str:
        response = await ask(session, name, **args)
        assert response["error"]["message"], response
        return response["error"]["code"]

    assert await error_of("check_availability", service="tattoo", date_from=day.isoformat()) == "unknown_service"
    booking = {"service": "check-up", "date": closed.isoformat(), "time": "10:00", "customer_name": "Ada"}
    assert await error_of("book_appointment", **booking) == "closed"
    nothing = await ask(session, "check_availability", service="check-up", date_from=closed.isoformat())
    assert nothing["days"] == [] and "closed on" in nothing["message"] and nothing["next_available"]["times"]
    assert await error_of("check_availability", service="check-up", date_from=past.isoformat()) == "in_past"
    assert await error_of("find_booking", reference="ZZZZZZ") == "needs_name"
    assert await error_of("find_booking", reference="ZZZZZZ", customer_name="Ada") == "not_found"
    assert await error_of("cancel_booking", reference="ZZZZZZ", customer_name="Ada") == "not_found"

    # Two chairs: the third booking at the same time is taken, and the error offers other times.
    free = await ask(session, "check_availability", service="check-up", date_from=day.isoformat())
    time = free["days"][0]["times"][0]
    for name in ("Ada", "Bob"):
        ok = await ask(
            session, "book_appointment", service="check-up", date=day.isoformat(), time=time, customer_name=name
        )
        assert ok["booked"] is True
    taken = await ask(
        session, "book_appointment", service="check-up", date=day.isoformat(), time=time, customer_name="Cy"
    )
    assert taken["error"]["code"] == "taken"
    await call.stop()


async def test_a_locked_diary_is_reported_within_the_tools_timeout(service: Service, gemini: FakeLiveServer) -> None:
    """Another program holds SQLite's write lock (a backup, the sqlite3 shell mid-transaction): a
    booking answers within its timeout that the diary cannot be reached, the call's audio flows
    meanwhile, free times can still be read (WAL), and once the lock is gone the booking goes through."""
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    day = next_open_day(service)
    look = {"service": "cleaning", "date_from": day.isoformat()}
    first = (await ask(session, "check_availability", **look))["days"][0]["times"][0]
    booking = {"service": "cleaning", "date": day.isoformat(), "time": first, "customer_name": "Ada"}
    path = make_url(service.settings.database_url).database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # The write lock, held. Taken from a thread: waiting for it on the event loop would stop the
        # service's own writer (the call record) from finishing the transaction it may be in.
        await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
        asked = time.monotonic()
        answered = asyncio.create_task(ask_within(session, "book_appointment", booking, DEFAULT_TIMEOUT_S + 25))
        await intact.both_ways()  # the call goes on while the tool waits on the database
        response = await answered
        took = time.monotonic() - asked
        assert response["error"]["code"] == "diary_unreachable", response
        assert "cannot be reached" in response["error"]["message"]
        assert took < DEFAULT_TIMEOUT_S, f"answered after {took:.1f}s"
        assert (await ask(session, "check_availability", **look))["days"][0]["times"][0] == first
    finally:
        holder.close()
    booked = await ask(session, "book_appointment", **booking)
    assert booked["booked"] is True
    await intact.both_ways()
    await call.stop()


async def ask_within(session: FakeLiveSession, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    call_id = f"{name}-{next(_ids)}"
    await call_tool(session, call_id, name, args)
    return (await wait_for_response(session, call_id, timeout=timeout))["response"]


async def test_a_booking_is_told_and_changed_only_to_its_owner(service: Service, gemini: FakeLiveServer) -> None:
    """Ada books from her phone; someone calling from another number who knows her reference (or
    her number) hears nothing of it and cancels nothing, unless they also give the name it was
    booked under."""
    ada, ada_session = await answer(service, gemini)
    day = next_open_day(service)
    times = (await ask(ada_session, "check_availability", service="cleaning", date_from=day.isoformat()))["days"][0]
    booking = {"service": "cleaning", "date": day.isoformat(), "time": times["times"][0]}
    booking["customer_name"] = "Ada Lovelace"
    reference = (await ask(ada_session, "book_appointment", **booking))["reference"]
    await ada.stop()

    other, session = await answer(service, gemini, another_caller(2))
    intact = Intact(other, session)
    refused = [
        await ask(session, "find_booking"),  # by their own number: nothing of Ada's
        await ask(session, "find_booking", reference=reference),
        await ask(session, "cancel_booking", reference=reference),
        await ask(session, "reschedule_booking", reference=reference, date=day.isoformat(), time=times["times"][1]),
        await ask(session, "find_booking", reference=reference, customer_name="Grace Hopper"),
        await ask(session, "cancel_booking", reference=reference, customer_name="Grace Hopper"),
    ]
    assert [r["error"]["code"] for r in refused] == [
        "not_found", "needs_name", "needs_name", "needs_name", "not_found", "not_found"
    ]
    told = str(refused)
    assert "Lovelace" not in told and CALLER[-7:] not in told and booking["time"] not in told
    desk: Desk = service.calls.bookings
    stored = await desk.get(reference)
    assert stored is not None and stored.status == "booked" and stored.starts_at.astimezone(
        desk.business.timezone
    ).strftime("%H:%M") == booking["time"]

    found = await ask(session, "find_booking", reference=reference, customer_name="ada lovelace")
    assert found["bookings"][0]["time"] == booking["time"] and "phone" not in found["bookings"][0]
    assert (await ask(session, "cancel_booking", reference=reference, customer_name="Lovelace"))["cancelled"] is True
    await intact.both_ways()
    await other.stop()
