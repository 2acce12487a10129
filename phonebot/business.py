"""The business the bot books for, read from `PHONEBOT_BUSINESS_FILE`, and its calendar rules.

Everything here is pure: opening hours, the grid appointments start on, and how many
appointments can run at once. Whether a place is still free is decided against the bookings
the store holds (`phonebot.store.desk`), with `peak_overlap` below.

The file (TOML; see `phonebot/examples/business.toml`):

    name = "Riverside Dental"
    timezone = "Europe/London"          # IANA name; hours and dates are local to it
    slot_step_minutes = 15              # appointments start every 15 minutes from opening
    capacity = 2                        # appointments that can run at the same time
    closed = [2026-12-25, "2026-12-26"] # dates closed all day
    [hours]                             # a day left out is closed
    monday = ["08:30-12:30", "13:30-17:30"]
    [[services]]
    name = "Check-up"
    duration_minutes = 30
    aliases = ["checkup", "exam"]       # other names callers use (optional)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_BUSINESS_FILE = Path(__file__).parent / "examples" / "business.toml"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class BusinessFileError(ValueError):
    """The business file is missing or wrong; the message says where and how."""


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    duration: timedelta
    aliases: tuple[str, ...] = ()

    @property
    def minutes(self) -> int:
        return int(self.duration.total_seconds() // 60)

    def answers_to(self, said: str) -> bool:
        wanted = _fold(said)
        return any(_fold(name) == wanted for name in (self.name, *self.aliases))


@dataclass(frozen=True, slots=True)
class Business:
    key: str  # what its bookings are stored under; stays put if the display name changes
    name: str
    timezone: ZoneInfo
    hours: dict[int, tuple[tuple[int, int], ...]]  # weekday (Monday 0) -> (open, close) in minutes
    closed: frozenset[date]
    services: tuple[Service, ...]
    slot_step: timedelta
    capacity: int

    def service(self, said: str) -> Service | None:
        """The service a caller means, by name or alias, ignoring case, spaces and punctuation."""
        return next((service for service in self.services if service.answers_to(said)), None)

    def local_date(self, moment: datetime) -> date:
        """The business's calendar date at `moment` (today's date, given now)."""
        return moment.astimezone(self.timezone).date()

    def local(self, day: date, minutes: int) -> datetime | None:
        """The aware local time `minutes` after midnight on `day`; None if that wall time does not
        exist (skipped by a daylight-saving change)."""
        wall = datetime.combine(day, time()) + timedelta(minutes=minutes)
        moment = wall.replace(tzinfo=self.timezone)
        if moment.astimezone(UTC).astimezone(self.timezone).replace(tzinfo=None) != wall:
            return None
        return moment

    def is_closed(self, day: date) -> bool:
        return day in self.closed or not self.hours.get(day.weekday())

    def opening(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's opening ranges as aware local datetimes; empty when closed all day."""
        if day in self.closed:
            return []
        ranges = []
        for start, end in self.hours.get(day.weekday(), ()):
            opens, closes = self.local(day, start), self.local(day, end)
            if opens is not None and closes is not None:
                ranges.append((opens, closes))
        return ranges

    def starts(self, day: date, service: Service) -> list[datetime]:
        """Every start time on the grid at which `service` fits inside opening hours on `day`."""
        found = []
        for opens, closes in self.opening(day):
            step = 0
            while True:
                wall = opens.replace(tzinfo=None) + step * self.slot_step
                start = self.local(wall.date(), wall.hour * 60 + wall.minute)
                step += 1
                if start is None:
                    continue
                if start + service.duration > closes:
                    break
                found.append(start)
        return found

    def brief(self, now: datetime) -> str:
        """What the bot should know of the business at the start of a call, in plain sentences."""
        local = now.astimezone(self.timezone)
        services = ", ".join(f"{s.name} ({s.minutes} minutes)" for s in self.services)
        days = []
        for number, name in enumerate(WEEKDAYS):
            ranges = self.hours.get(number)
            hours = " and ".join(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in ranges or ())
            days.append(f"{name.title()} {hours or 'closed'}")
        return (
            f"You answer the phone for {self.name}. There it is now {local:%A %d %B %Y, %H:%M} "
            f"({self.timezone.key}). Services: {services}. Opening hours: {'; '.join(days)}. "
            "Use the tools for free times and bookings; never guess them."
        )

    def free_starts(
        self, day: date, service: Service, busy: Sequence[tuple[datetime, datetime]]
    ) -> list[datetime]:
        """The grid starts on `day` where `service` still fits under capacity, given `busy`."""
        return [
            start
            for start in self.starts(day, service)
            if peak_overlap(busy, start, start + service.duration) < self.capacity
        ]


def peak_overlap(busy: Iterable[tuple[datetime, datetime]], start: datetime, end: datetime) -> int:
    """How many of the half-open intervals `busy` run at once, at most, within [start, end).

    Counting every interval that touches [start, end) would be too strict: two short
    appointments at 9:00 and 9:30 never run together, so a 60-minute one from 9:00 only
    ever runs beside one of them.
    """
    events = []
    for other_start, other_end in busy:
        if other_start < end and start < other_end:
            events.append((max(other_start, start), 1))
            events.append((min(other_end, end), -1))
    # At equal times the end sorts first (-1 < 1): one ending at 10:00 frees its place for
    # one starting at 10:00.
    running = peak = 0
    for _, change in sorted(events):
        running += change
        peak = max(peak, running)
    return peak


# -- reading the file ---------------------------------------------------------------------


def load_business(path: Path) -> Business:
    """Read and check the business file. Raises BusinessFileError naming the file and the field."""
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except OSError as error:
        raise BusinessFileError(f"{path} cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise BusinessFileError(f"{path} is not valid TOML: {error}") from None
    try:
        return parse_business(raw)
    except BusinessFileError as error:
        raise BusinessFileError(f"{path}: {error}") from None


def parse_business(raw: dict[str, Any]) -> Business:
    name = _text(raw.get("name"), "name")
    services = tuple(
        _service(item, f"services[{index}]") for index, item in enumerate(_list(raw, "services"))
    )
    if not services:
        raise BusinessFileError("services: list at least one service")
    said = [
        word for service in services for word in {_fold(name) for name in (service.name, *service.aliases)}
    ]
    if len(said) != len(set(said)):
        raise BusinessFileError("services: two services share a name or alias")
    return Business(
        key=str(raw.get("id") or _fold(name) or "business"),
        name=name,
        timezone=_zone(_text(raw.get("timezone"), "timezone")),
        hours=_hours(raw.get("hours", {})),
        closed=frozenset(_date(value, "closed") for value in _list(raw, "closed")),
        services=services,
        slot_step=timedelta(minutes=_positive_int(raw.get("slot_step_minutes", 15), "slot_step_minutes")),
        capacity=_positive_int(raw.get("capacity", 1), "capacity"),
    )


def _fold(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BusinessFileError(f"{field}: required text")
    return value.strip()


def _list(raw: dict[str, Any], field: str) -> list[Any]:
    value = raw.get(field, [])
    if not isinstance(value, list):
        raise BusinessFileError(f"{field}: must be a list")
    return value


def _positive_int(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BusinessFileError(f"{field}: must be a whole number of at least 1 (got {value!r})")
    return value


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BusinessFileError(
            f"timezone: {name!r} is not an IANA time zone such as 'Europe/London'"
        ) from None


def _date(value: Any, field: str) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise BusinessFileError(f"{field}: {value!r} is not a date such as 2026-12-25") from None


def _hours(raw: Any) -> dict[int, tuple[tuple[int, int], ...]]:
    if not isinstance(raw, dict):
        raise BusinessFileError('hours: must be a table of weekday = ["HH:MM-HH:MM", ...]')
    hours = {}
    for day, ranges in raw.items():
        if day.lower() not in WEEKDAYS:
            raise BusinessFileError(f"hours.{day}: not a weekday (use monday ... sunday)")
        if isinstance(ranges, str):
            ranges = [ranges]
        if not isinstance(ranges, list):
            raise BusinessFileError(f'hours.{day}: must be a list such as ["09:00-12:30"]')
        parsed = sorted(_range(text, f"hours.{day}") for text in ranges)
        for (_, first_end), (second_start, _) in pairwise(parsed):
            if second_start < first_end:
                raise BusinessFileError(f"hours.{day}: opening ranges overlap")
        if parsed:
            hours[WEEKDAYS.index(day.lower())] = tuple(parsed)
    return hours


def _range(text: Any, field: str) -> tuple[int, int]:
    match = _RANGE.match(text) if isinstance(text, str) else None
    if match is None:
        raise BusinessFileError(f'{field}: {text!r} is not a range such as "09:00-12:30"')
    open_h, open_m, close_h, close_m = (int(group) for group in match.groups())
    start, end = open_h * 60 + open_m, close_h * 60 + close_m
    if open_m > 59 or close_m > 59 or end > 24 * 60 or start >= end:
        raise BusinessFileError(f"{field}: {text!r} must open before it closes, within the day")
    return start, end


def _service(raw: Any, field: str) -> Service:
    if not isinstance(raw, dict):
        raise BusinessFileError(f"{field}: must be a table with name and duration_minutes")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        raise BusinessFileError(f"{field}.aliases: must be a list of names")
    minutes = _positive_int(raw.get("duration_minutes"), f"{field}.duration_minutes")
    return Service(_text(raw.get("name"), f"{field}.name"), timedelta(minutes=minutes), tuple(aliases))
