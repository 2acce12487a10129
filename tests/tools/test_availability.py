"""check_availability: free times the model can say, within the hours, under capacity, few enough."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from phonebot.tools.booking import book_appointment, check_availability, spoken_date, spoken_time
from phonebot.tools.context import ToolContext, ToolError


async def test_today_offers_times_after_now_spread_over_the_day(ctx: ToolContext) -> None:
    result = await check_availability(ctx, "check up", "2026-11-30")
    assert result["service"] == "Check-up" and result["duration_minutes"] == 30
    assert result["today"] == "2026-11-30"
    [day] = result["days"]
    assert day["date"] == "2026-11-30"
    assert day["spoken_date"] == "today, Monday the 30th of November"
    # Now is 10:07: from 10:15, morning and afternoon both offered, five at most.
    assert day["times"] == ["10:15", "11:30", "14:00", "15:15", "16:30"]
    assert day["spoken_times"] == ["10:15 am", "11:30 am", "2 pm", "3:15 pm", "4:30 pm"]


@pytest.mark.parametrize(
    ("preference", "times"),
    [
        ("afternoon", ["13:00", "14:00", "14:45", "15:30", "16:30"]),
        ("14:30", ["14:00", "14:15", "14:30", "14:45", "15:00"]),
        ("2:30 pm", ["14:00", "14:15", "14:30", "14:45", "15:00"]),
        ("morning", ["09:00", "09:30", "10:15", "11:00", "11:30"]),
    ],
)
async def test_a_time_preference_narrows_the_offer(
    ctx: ToolContext, preference: str, times: list[str]
) -> None:
    result = await check_availability(ctx, "check-up", "2026-12-01", time_preference=preference)
    assert result["days"][0]["times"] == times


async def test_evenings_exist_only_on_the_late_day(ctx: ToolContext) -> None:
    result = await check_availability(ctx, "filling", "2026-11-30", "2026-12-06", time_preference="evening")
    assert [day["date"] for day in result["days"]] == ["2026-12-02"]  # Wednesday, open to 19:00
    assert result["days"][0]["times"] == ["17:00", "17:15", "17:30", "17:45", "18:00"]  # must end by 19:00


async def test_a_range_skips_closed_days_and_lists_a_few_days(ctx: ToolContext) -> None:
    result = await check_availability(ctx, "cleaning", "2026-12-24", "2026-12-31")
    # Christmas is closed and Sunday has no hours; four days at most are listed.
    assert [day["date"] for day in result["days"]] == ["2026-12-24", "2026-12-26", "2026-12-28", "2026-12-29"]
    assert result["more_days_available"] is True
    assert all(len(day["times"]) <= 5 for day in result["days"])


async def test_a_closed_day_points_to_the_next_free_one(ctx: ToolContext) -> None:
    result = await check_availability(ctx, "exam", "2026-12-06")
    assert result["days"] == []
    assert result["message"] == "Nothing is free then; closed on Sunday the 6th of December."
    assert result["next_available"]["date"] == "2026-12-07"
    assert result["next_available"]["spoken_date"] == "Monday the 7th of December"


async def test_full_times_are_not_offered(ctx: ToolContext) -> None:
    for _ in range(2):
        await book_appointment(ctx, "filling", "2026-12-01", "09:00", "Grace Hopper")
    result = await check_availability(ctx, "check-up", "2026-12-01", time_preference="09:00")
    assert result["days"][0]["times"] == ["10:00", "10:15", "10:30", "10:45", "11:00"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            {"service": "root canal", "date_from": "2026-12-01"},
            "unknown_service",
            (
                "We do not offer 'root canal'. The services are: Check-up (30 minutes), Cleaning (45 minutes), "
                "Filling (60 minutes)."
            ),
        ),
        (
            {"service": "exam", "date_from": "next tuesday"},
            "bad_input",
            "date_from must be an ISO date like 2026-11-30 (got 'next tuesday').",
        ),
        (
            {"service": "exam", "date_from": "2026-12-03", "date_to": "2026-12-01"},
            "bad_input",
            "date_to is before date_from; pass the earlier date first.",
        ),
        (
            {"service": "exam", "date_from": "2026-11-01", "date_to": "2026-11-29"},
            "in_past",
            "Those dates have passed; today is Monday the 30th of November.",
        ),
        (
            {"service": "exam", "date_from": "2026-12-01", "time_preference": "lunchtime"},
            "bad_input",
            "time_preference must be morning, afternoon, evening, or a time like 14:30 (got 'lunchtime').",
        ),
    ],
)
async def test_what_cannot_be_answered_is_explained(
    ctx: ToolContext, args: dict[str, Any], code: str, message: str
) -> None:
    with pytest.raises(ToolError) as raised:
        await check_availability(ctx, **args)
    assert (raised.value.code, raised.value.message) == (code, message)


async def test_tomorrow_is_understood(ctx: ToolContext) -> None:
    result = await check_availability(ctx, "exam", "tomorrow")
    assert result["days"][0]["spoken_date"] == "tomorrow, Tuesday the 1st of December"


@pytest.mark.parametrize(
    ("day", "said"),
    [
        (date(2026, 12, 2), "Wednesday the 2nd of December"),
        (date(2026, 12, 3), "Thursday the 3rd of December"),
        (date(2026, 12, 11), "Friday the 11th of December"),
        (date(2026, 12, 12), "Saturday the 12th of December"),
        (date(2026, 12, 13), "Sunday the 13th of December"),
        (date(2026, 12, 21), "Monday the 21st of December"),
        (date(2026, 12, 22), "Tuesday the 22nd of December"),
        (date(2027, 1, 1), "Friday the 1st of January 2027"),
    ],
)
def test_spoken_dates(day: date, said: str) -> None:
    assert spoken_date(day, today=date(2026, 11, 30)) == said


def test_spoken_times() -> None:
    assert [spoken_time(m) for m in (0, 9 * 60, 9 * 60 + 30, 12 * 60, 12 * 60 + 15, 17 * 60 + 45)] == [
        "midnight",
        "9 am",
        "9:30 am",
        "noon",
        "12:15 pm",
        "5:45 pm",
    ]
