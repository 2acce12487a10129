"""The five booking tools: free times, book, find, cancel, move. They talk only to the desk.

Dates and times cross this border as the business's local wall time, written the way the model
reads and passes them (`2026-12-01`, `14:30`) and the way it should say them ("Tuesday the 1st
of December", "2:30 pm"). Inside, every moment is an aware datetime; the desk stores UTC.
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime, timedelta
from typing import Any

import structlog

from phonebot.business import WEEKDAYS, Business, Service
from phonebot.store.desk import Appointment, Desk, PlaceTaken, StoreUnavailable, UnknownBooking, clean_phone
from phonebot.store.reference import spoken
from phonebot.tools.context import ToolContext, ToolError
from phonebot.tools.ownership import MIN_PHONE_DIGITS, check_owner, same_number
from phonebot.tools.spec import ToolFunction

MAX_DAYS_SEARCHED = 31  # one call looks at most this many days ahead of date_from
MAX_DAYS_LISTED = 4  # and offers times on at most this many days...
MAX_TIMES_PER_DAY = 5  # ...with at most this many times each: a list a caller can take in by ear
LOOKAHEAD_DAYS = 60  # when nothing is free in the range asked, how far on to find the next free day

DIARY_UNREACHABLE = (
    "The booking diary cannot be reached just now, so this could not be done. Apologise, and offer "
    "to try again in a minute or to take a message."
)

log = structlog.get_logger(__name__)


def _uses_the_diary(function: ToolFunction) -> ToolFunction:
    """The database being locked or down (past its own short timeouts) becomes something the bot
    can tell the caller, well within the tool's timeout."""

    @functools.wraps(function)
    async def tool(ctx: ToolContext, *arguments: Any, **named: Any) -> dict[str, Any]:
        try:
            return await function(ctx, *arguments, **named)
        except StoreUnavailable as error:
            log.warning("booking.diary_unreachable", tool=function.__name__, error=str(error))
            raise ToolError("diary_unreachable", DIARY_UNREACHABLE) from None

    return tool


_CLOCK = re.compile(r"^(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?$", re.IGNORECASE)
Preference = tuple[int, int] | int | None  # a period of the day (minutes from, to), a time, or none
_PERIODS = {"morning": (0, 12 * 60), "afternoon": (12 * 60, 17 * 60), "evening": (17 * 60, 24 * 60)}


@_uses_the_diary
async def check_availability(
    ctx: ToolContext,
    service: str,
    date_from: str,
    date_to: str | None = None,
    time_preference: str | None = None,
) -> dict[str, Any]:
    """Find free appointment times for a service, before booking or moving an appointment.
    Returns a few free start times per day in the business's local time, with spoken_date and
    spoken_times to say them by; offer two or three, not the whole list. If nothing is free in
    the dates asked, next_available holds the next day that has free times. The result's today
    is today's date at the business.

    Args:
        service: The service the caller wants, as they named it (for example "check-up").
        date_from: First day to look at, as an ISO date like 2026-12-01 ("today" and "tomorrow" work too).
        date_to: Last day to look at, ISO date; leave out to look at date_from only.
        time_preference: "morning", "afternoon" or "evening", or a time like 14:30 to get the
            nearest free times to it; leave out for times spread over the day.
    """
    desk = _desk(ctx)
    business, now = desk.business, ctx.now()
    wanted = _service(business, service)
    today = business.local_date(now)
    first = _day(date_from, today, "date_from")
    last = _day(date_to, today, "date_to") if date_to else first
    if last < first:
        raise ToolError("bad_input", "date_to is before date_from; pass the earlier date first.")
    if last < today:
        raise ToolError(
            "in_past", f"Those dates have passed; today is {spoken_date(today, today, relative=False)}."
        )
    first = max(first, today)
    last = min(last, first + timedelta(days=MAX_DAYS_SEARCHED - 1))
    prefer = _preference(time_preference)

    days = await _free_days(desk, wanted, first, last, now, prefer)
    result: dict[str, Any] = {
        "service": wanted.name,
        "duration_minutes": wanted.minutes,
        "today": today.isoformat(),
        "days": [_day_entry(day, times, today) for day, times in days[:MAX_DAYS_LISTED]],
    }
    if len(days) > MAX_DAYS_LISTED:
        result["more_days_available"] = True
    if not days:
        later = await _free_days(
            desk,
            wanted,
            last + timedelta(days=1),
            last + timedelta(days=LOOKAHEAD_DAYS),
            now,
            prefer,
            stop_after=1,
        )
        closed = [
            spoken_date(day, today, relative=False) for day in _dates(first, last) if business.is_closed(day)
        ]
        result["message"] = (
            "Nothing is free then" + (f"; closed on {', '.join(closed)}" if closed else "") + "."
        )
        if later:
            result["next_available"] = _day_entry(*later[0], today)
    return result


@_uses_the_diary
async def book_appointment(
    ctx: ToolContext,
    service: str,
    date: str,
    time: str,
    customer_name: str,
    phone: str | None = None,
    notes: str = "",
) -> dict[str, Any]:
    """Book an appointment once the caller has chosen a free time and given their name. Then tell
    the caller the booking reference one character at a time, as in spoken_reference.

    Args:
        service: The service to book, as named by the caller or by check_availability.
        date: The day, as an ISO date like 2026-12-01.
        time: The start time in the business's local time, 24-hour, like 14:30.
        customer_name: The caller's name, as they gave it.
        phone: A number to reach them on; leave out to use the number they are calling from.
        notes: Anything the business should know (for example "first visit"), or leave empty.
    """
    desk = _desk(ctx)
    business, now = desk.business, ctx.now()
    wanted = _service(business, service)
    day = _day(date, business.local_date(now), "date")
    start = _place(business, wanted, day, _clock(time), now)
    name = customer_name.strip()
    if not name:
        raise ToolError("bad_input", "Ask for the caller's name before booking.")
    number = clean_phone(phone if phone else ctx.caller_number)
    if phone and len(number.lstrip("+")) < MIN_PHONE_DIGITS:
        raise ToolError("bad_input", f"{phone!r} is not a full phone number; ask for it again.")
    try:
        booked = await desk.book(
            wanted,
            start,
            customer_name=name[:200],
            phone=number,
            notes=notes.strip()[:2000],
            call_sid=ctx.call_sid,
            now=now,
        )
    except PlaceTaken:
        raise await _taken(desk, wanted, start, now) from None
    return {"booked": True, **describe(booked, business, now)}


@_uses_the_diary
async def find_booking(
    ctx: ToolContext, reference: str | None = None, customer_name: str | None = None
) -> dict[str, Any]:
    """Look up a caller's bookings. Without a reference: the upcoming bookings made with the number
    they are calling from. With a reference: that booking (even if cancelled), if it was made with
    the number they are calling from; otherwise only with the name it was booked under, so ask the
    caller for the reference and that name. A booking is only ever discussed with its owner.

    Args:
        reference: The booking reference, like K7M4PX (spaces, dashes and case do not matter).
        customer_name: The name the booking was made under, as the caller says it; needed when they
            call from a number other than the booking's.
    """
    desk = _desk(ctx)
    business, now = desk.business, ctx.now()
    if reference:
        found = await _owned(ctx, desk, reference, customer_name)
        return {"bookings": [describe(found, business, now, _their_number(ctx, found))]}
    if not ctx.caller_number:
        raise ToolError(
            "needs_reference",
            "The caller's number is withheld: ask for their booking reference and the name it was booked under.",
        )
    upcoming = await desk.upcoming(ctx.caller_number, now)
    if not upcoming:
        raise ToolError(
            "not_found",
            "No upcoming bookings were made with the number the caller is calling from. Ask for the "
            "booking reference and the name it was booked under.",
        )
    return {"bookings": [describe(appointment, business, now) for appointment in upcoming]}


@_uses_the_diary
async def cancel_booking(ctx: ToolContext, reference: str, customer_name: str | None = None) -> dict[str, Any]:
    """Cancel a booking, once the caller has confirmed which one (see find_booking) and that they
    want it cancelled. Only the owner may: a booking made with the number they are calling from,
    or else they give the name it was booked under.

    Args:
        reference: The booking reference, like K7M4PX.
        customer_name: The name the booking was made under, as the caller says it; needed when they
            call from a number other than the booking's.
    """
    desk = _desk(ctx)
    business, now = desk.business, ctx.now()
    found = await _owned(ctx, desk, reference, customer_name)
    mine = _their_number(ctx, found)
    if found.status == "cancelled":
        return {"cancelled": True, "already_cancelled": True, **describe(found, business, now, mine)}
    if found.starts_at <= now:
        raise ToolError(
            "in_past", "That appointment has already started or taken place; it cannot be cancelled."
        )
    try:
        cancelled = await desk.cancel(found.reference, now)
    except UnknownBooking:  # cancelled by someone else a moment ago
        cancelled = found
    return {"cancelled": True, **describe(cancelled, business, now, mine)}


@_uses_the_diary
async def reschedule_booking(
    ctx: ToolContext, reference: str, date: str, time: str, customer_name: str | None = None
) -> dict[str, Any]:
    """Move a booking to another time, keeping its service, name and reference; find a free time
    with check_availability first. If the new time cannot be booked, the booking stays as it was.
    Only the owner may: a booking made with the number they are calling from, or else they give
    the name it was booked under.

    Args:
        reference: The booking reference, like K7M4PX.
        date: The new day, as an ISO date like 2026-12-01.
        time: The new start time in the business's local time, 24-hour, like 14:30.
        customer_name: The name the booking was made under, as the caller says it; needed when they
            call from a number other than the booking's.
    """
    desk = _desk(ctx)
    business, now = desk.business, ctx.now()
    found = await _owned(ctx, desk, reference, customer_name)
    if found.status == "cancelled":
        raise ToolError(
            "not_found", f"Booking {found.reference} was cancelled; book a new appointment instead."
        )
    if found.starts_at <= now:
        raise ToolError(
            "in_past", "That appointment has already started or taken place; book a new one instead."
        )
    # The booking keeps the length it was made with, even if the service has changed since.
    kept = Service(found.service, found.ends_at - found.starts_at)
    start = _place(business, kept, _day(date, business.local_date(now), "date"), _clock(time), now)
    try:
        moved = await desk.move(found.reference, start, now)
    except UnknownBooking:
        raise ToolError("not_found", f"Booking {found.reference} was just cancelled.") from None
    except PlaceTaken:
        raise await _taken(desk, kept, start, now) from None
    return {"rescheduled": True, **describe(moved, business, now, _their_number(ctx, found))}


BOOKING_TOOLS = (check_availability, book_appointment, find_booking, cancel_booking, reschedule_booking)


# -- what the model is told ------------------------------------------------------------------


def describe(appointment: Appointment, business: Business, now: datetime, full_phone: bool = True) -> dict[str, Any]:
    """What the model is told of a booking; its phone number only in part unless it is the caller's own."""
    start = appointment.starts_at.astimezone(business.timezone)
    minutes = start.hour * 60 + start.minute
    phone = {"phone": appointment.phone} if full_phone else {"phone_ending": appointment.phone[-4:]}
    return {
        "reference": appointment.reference,
        "spoken_reference": spoken(appointment.reference),
        "status": appointment.status,
        "service": appointment.service,
        "date": start.date().isoformat(),
        "time": f"{start:%H:%M}",
        "spoken_date": spoken_date(start.date(), business.local_date(now)),
        "spoken_time": spoken_time(minutes),
        "duration_minutes": int((appointment.ends_at - appointment.starts_at).total_seconds() // 60),
        "customer_name": appointment.customer_name,
        **phone,
    }


def spoken_date(day: date, today: date, relative: bool = True) -> str:
    """`Tuesday the 1st of December`, with the year only when it is not this year's, and
    "today, " or "tomorrow, " before it when it is (and `relative`)."""
    suffix = "th" if 11 <= day.day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day.day % 10, "th")
    text = f"{day:%A} the {day.day}{suffix} of {day:%B}"
    if day.year != today.year:
        text += f" {day.year}"
    near = {0: "today", 1: "tomorrow"}.get((day - today).days) if relative else None
    return f"{near}, {text}" if near else text


def spoken_time(minutes: int) -> str:
    """`9 am`, `9:30 am`, `noon`, `2:15 pm`."""
    hour, minute = divmod(minutes % (24 * 60), 60)
    if minute == 0 and hour in (0, 12):
        return "midnight" if hour == 0 else "noon"
    clock = str(hour % 12 or 12) + (f":{minute:02d}" if minute else "")
    return f"{clock} {'am' if hour < 12 else 'pm'}"


def _day_entry(day: date, times: list[datetime], today: date) -> dict[str, Any]:
    shown = [start.hour * 60 + start.minute for start in times]
    entry: dict[str, Any] = {
        "date": day.isoformat(),
        "spoken_date": spoken_date(day, today),
        "times": [f"{m // 60:02d}:{m % 60:02d}" for m in shown],
        "spoken_times": [spoken_time(m) for m in shown],
    }
    return entry


# -- finding free times ----------------------------------------------------------------------


async def _free_days(
    desk: Desk,
    service: Service,
    first: date,
    last: date,
    now: datetime,
    prefer: Preference,
    stop_after: int = 0,
) -> list[tuple[date, list[datetime]]]:
    """Days from `first` to `last` with free times (as offered: filtered, and cut to a few)."""
    business = desk.business
    bounds = (
        datetime.combine(first, datetime.min.time(), business.timezone),
        datetime.combine(last + timedelta(days=1), datetime.min.time(), business.timezone),
    )
    # One query for the whole range, then each day checked against its own bookings only
    # (a booking never crosses midnight), so a busy month stays quick to scan.
    by_day: dict[date, list[tuple[datetime, datetime]]] = {}
    for held in await desk.busy(*bounds):
        by_day.setdefault(business.local_date(held[0]), []).append(held)
    days = []
    for day in _dates(first, last):
        free = [start for start in business.free_starts(day, service, by_day.get(day, [])) if start > now]
        chosen = _choose(free, prefer)
        if chosen:
            days.append((day, chosen))
            if stop_after and len(days) >= stop_after:
                break
    return days


def _choose(free: list[datetime], prefer: Preference) -> list[datetime]:
    """At most MAX_TIMES_PER_DAY of the free starts: within a period of the day, nearest to a
    time, or else spread over the whole day so the caller hears early and late choices."""
    minutes = [(start.hour * 60 + start.minute, start) for start in free]
    if isinstance(prefer, tuple):
        minutes = [(m, start) for m, start in minutes if prefer[0] <= m < prefer[1]]
    elif isinstance(prefer, int):
        nearest = sorted(minutes, key=lambda item: (abs(item[0] - prefer), item[0]))[:MAX_TIMES_PER_DAY]
        return sorted(start for _, start in nearest)
    starts = [start for _, start in minutes]
    if len(starts) <= MAX_TIMES_PER_DAY:
        return starts
    last = len(starts) - 1
    picks = sorted({round(i * last / (MAX_TIMES_PER_DAY - 1)) for i in range(MAX_TIMES_PER_DAY)})
    return [starts[i] for i in picks]


async def _taken(desk: Desk, service: Service, start: datetime, now: datetime) -> ToolError:
    """`taken`, with the three free times nearest to the one asked for, so the bot can offer them."""
    business = desk.business
    wanted = _minutes_of(start, business)
    free = await _free_days(desk, service, business.local_date(start), business.local_date(start), now, wanted)
    nearest = (
        sorted(free[0][1], key=lambda s: (abs(_minutes_of(s, business) - wanted), s))[:3] if free else []
    )
    others = ", ".join(spoken_time(_minutes_of(s, business)) for s in sorted(nearest))
    offer = f" The nearest free times that day: {others}." if others else " Nothing else is free that day."
    return ToolError("taken", f"{spoken_time(wanted)} is no longer free.{offer}")


# -- checking what the model passed ----------------------------------------------------------


def _desk(ctx: ToolContext) -> Desk:
    if ctx.bookings is None:
        raise ToolError("unavailable", "Booking is not available on this line; offer to take a message.")
    desk: Desk = ctx.bookings
    return desk


def _service(business: Business, said: str) -> Service:
    found = business.service(said)
    if found is None:
        known = ", ".join(f"{service.name} ({service.minutes} minutes)" for service in business.services)
        raise ToolError("unknown_service", f"We do not offer {said!r}. The services are: {known}.")
    return found


async def _owned(ctx: ToolContext, desk: Desk, reference: str, customer_name: str | None) -> Appointment:
    """The booking `reference` names, once the caller has shown it is theirs (tools/ownership.py)."""
    return check_owner(ctx, await desk.get(reference), customer_name)


def _their_number(ctx: ToolContext, appointment: Appointment) -> bool:
    return same_number(ctx.caller_number, appointment.phone)


def _day(text: str, today: date, argument: str) -> date:
    said = text.strip().lower()
    if said in ("today", "tomorrow"):
        return today + timedelta(days=said == "tomorrow")
    try:
        return date.fromisoformat(said)
    except ValueError:
        raise ToolError(
            "bad_input", f"{argument} must be an ISO date like {today.isoformat()} (got {text!r})."
        ) from None


def _clock(text: str) -> int:
    """Minutes after midnight from `14:30`, `9`, `9am`, `2:30 pm`."""
    match = _CLOCK.match(text.strip())
    hour, minute = (int(match.group(1)), int(match.group(2) or 0)) if match else (99, 0)
    half = (match.group(3) or "").replace(".", "").lower() if match else ""
    if half and 1 <= hour <= 12:
        hour = hour % 12 + (12 if half == "pm" else 0)
    elif half:
        hour = 99
    if hour > 23 or minute > 59:
        raise ToolError("bad_input", f"time must be a local time like 14:30 (got {text!r}).")
    return hour * 60 + minute


def _preference(text: str | None) -> Preference:
    if not text or not text.strip():
        return None
    period = _PERIODS.get(text.strip().lower())
    if period is not None:
        return period
    try:
        return _clock(text)
    except ToolError:
        raise ToolError(
            "bad_input",
            f"time_preference must be morning, afternoon, evening, or a time like 14:30 (got {text!r}).",
        ) from None


def _place(business: Business, service: Service, day: date, minutes: int, now: datetime) -> datetime:
    """The aware start for `day` at `minutes`, if the business takes bookings for `service` then."""
    start = business.local(day, minutes)
    if start is None:
        raise ToolError(
            "bad_input", f"{spoken_time(minutes)} does not exist on that day (the clocks change)."
        )
    today = business.local_date(now)
    if start <= now:
        raise ToolError(
            "in_past",
            f"That time has passed: it is now {spoken_time(_minutes_of(now, business))} "
            f"on {spoken_date(today, today, relative=False)}.",
        )
    if business.is_closed(day):
        raise ToolError(
            "closed", f"We are closed on {spoken_date(day, today, relative=False)}. {_open_days(business)}"
        )
    if start in business.starts(day, service):
        return start
    ranges = business.opening(day)
    hours = " and ".join(
        f"{spoken_time(_minutes_of(a, business))} to {spoken_time(_minutes_of(b, business))}"
        for a, b in ranges
    )
    if any(opens <= start and start + service.duration <= closes for opens, closes in ranges):
        step = int(business.slot_step.total_seconds() // 60)
        raise ToolError(
            "bad_input",
            f"Appointments start every {step} minutes from opening; pick a time from check_availability.",
        )
    raise ToolError(
        "closed",
        f"On {spoken_date(day, today, relative=False)} we are open {hours}, and a {service.minutes}-minute "
        f"{service.name} has to end by closing time.",
    )


def _minutes_of(moment: datetime, business: Business) -> int:
    local = moment.astimezone(business.timezone)
    return local.hour * 60 + local.minute


def _open_days(business: Business) -> str:
    days = [WEEKDAYS[index].capitalize() for index in sorted(business.hours)]
    return f"We are open on {', '.join(days)}." if days else ""


def _dates(first: date, last: date) -> list[date]:
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
