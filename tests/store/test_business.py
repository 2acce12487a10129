"""The business file and its calendar rules: hours, grid, closed dates, capacity over durations."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from phonebot.business import (
    DEFAULT_BUSINESS_FILE,
    Business,
    BusinessFileError,
    load_business,
    parse_business,
    peak_overlap,
)
from tests.store.conftest import BUSINESS

NY = ZoneInfo("America/New_York")


def at(day: date, hhmm: str, zone: ZoneInfo = NY) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)


def test_the_shipped_example_is_a_whole_week_of_a_dental_practice() -> None:
    business = load_business(DEFAULT_BUSINESS_FILE)
    assert business.name == "Riverside Dental Practice"
    assert business.key == "riverside-dental"
    assert business.capacity == 2 and business.slot_step == timedelta(minutes=15)
    assert len(business.services) == 4
    assert date(2026, 12, 25) in business.closed
    assert business.hours[0] == ((8 * 60 + 30, 12 * 60 + 30), (13 * 60 + 30, 17 * 60 + 30))  # lunch break
    assert business.hours[2] == ((10 * 60, 19 * 60),)  # Wednesday: no lunch break
    assert 6 not in business.hours  # Sunday: closed
    assert business.service("scale and polish") is business.service("Hygienist clean")


def test_services_are_matched_ignoring_case_spaces_and_punctuation(business: Business) -> None:
    assert business.service("check up") is business.service("CHECKUP") is business.service("Check-up")
    assert business.service("root canal") is None


def test_starts_follow_the_grid_and_leave_room_before_closing(business: Business) -> None:
    monday = date(2026, 11, 30)
    filling = business.service("filling")
    assert filling is not None
    starts = [f"{start:%H:%M}" for start in business.starts(monday, filling)]
    assert starts[:3] == ["09:00", "09:15", "09:30"]
    assert "11:00" in starts and "11:15" not in starts  # a 60-minute filling must end by 12:00
    assert "13:00" in starts and starts[-1] == "16:00"
    assert len(starts) == 9 + 13  # 9:00-11:00 and 13:00-16:00, every quarter hour


def test_closed_dates_and_days_without_hours_have_no_starts(business: Business) -> None:
    checkup = business.services[0]
    assert business.is_closed(date(2026, 12, 25)) and business.starts(date(2026, 12, 25), checkup) == []
    assert business.is_closed(date(2026, 12, 5)) and business.opening(date(2026, 12, 5)) == []  # Saturday


def test_a_spring_forward_day_skips_the_missing_hour() -> None:
    raw: dict[str, Any] = {**BUSINESS, "hours": {"sunday": ["01:00-04:00"]}, "slot_step_minutes": 30}
    business = parse_business(raw)
    checkup = business.services[0]
    starts = business.starts(date(2027, 3, 14), checkup)  # 2:00-3:00 does not exist in New York
    assert [f"{start:%H:%M}" for start in starts] == ["01:00", "01:30", "03:00", "03:30"]
    assert all(start.utcoffset() == timedelta(hours=-4) for start in starts[2:])


def test_peak_overlap_counts_what_runs_at_the_same_time() -> None:
    day = date(2026, 12, 1)
    nine_to_930, nine30_to_10 = (at(day, "09:00"), at(day, "09:30")), (at(day, "09:30"), at(day, "10:00"))
    # Back to back: never together, so a 9:00-10:00 booking only ever runs beside one of them.
    assert peak_overlap([nine_to_930, nine30_to_10], at(day, "09:00"), at(day, "10:00")) == 1
    assert peak_overlap([nine_to_930, nine_to_930], at(day, "09:15"), at(day, "09:45")) == 2
    # Half-open: one ending at 10:00 does not block one starting at 10:00.
    assert peak_overlap([nine30_to_10], at(day, "10:00"), at(day, "11:00")) == 0
    assert peak_overlap([], at(day, "10:00"), at(day, "11:00")) == 0


def test_free_starts_respect_capacity_over_durations(business: Business) -> None:
    day = date(2026, 12, 1)
    filling = business.service("filling")
    assert filling is not None
    busy = [(at(day, "09:00"), at(day, "10:00")), (at(day, "09:45"), at(day, "10:15"))]
    free = {f"{start:%H:%M}" for start in business.free_starts(day, filling, busy)}
    # 8:45-10:15 is full for 15 minutes (9:45-10:00), so no filling may overlap that quarter.
    assert not free & {"09:00", "09:15", "09:30", "09:45"}
    assert {"10:00", "10:15"} <= free


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not an IANA time zone"),
        ({"hours": {"funday": ["09:00-10:00"]}}, "hours.funday: not a weekday"),
        ({"hours": {"monday": ["9-17"]}}, "hours.monday: '9-17' is not a range"),
        ({"hours": {"monday": ["17:00-09:00"]}}, "must open before it closes"),
        ({"hours": {"monday": ["09:00-12:00", "11:00-13:00"]}}, "hours.monday: opening ranges overlap"),
        ({"closed": ["25/12/2026"]}, "closed: '25/12/2026' is not a date"),
        ({"capacity": 0}, "capacity: must be a whole number of at least 1"),
        ({"services": []}, "services: list at least one service"),
        ({"services": [{"name": "X"}]}, "services[0].duration_minutes: must be a whole number"),
        (
            {"services": [{"name": "X", "duration_minutes": 10}, {"name": "x", "duration_minutes": 5}]},
            "two services share a name",
        ),
        ({"name": ""}, "name: required text"),
    ],
)
def test_a_wrong_business_file_says_where(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BusinessFileError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_business({**BUSINESS, **change})


def test_an_unreadable_or_broken_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(BusinessFileError, match=r"missing\.toml cannot be read"):
        load_business(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(BusinessFileError, match=r"broken\.toml is not valid TOML"):
        load_business(broken)
