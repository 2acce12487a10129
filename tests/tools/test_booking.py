"""book_appointment, find_booking, cancel_booking, reschedule_booking on a real SQLite file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from phonebot.store.reference import ALPHABET
from phonebot.tools.booking import (
    BOOKING_TOOLS,
    book_appointment,
    cancel_booking,
    find_booking,
    reschedule_booking,
)
from phonebot.tools.context import ToolContext, ToolError
from phonebot.tools.spec import ToolSpec
from tests.tools.conftest import CALLER, NOW


async def code_of(call: Any) -> tuple[str, str]:
    with pytest.raises(ToolError) as raised:
        await call
    return raised.value.code, raised.value.message


async def test_a_booking_has_a_reference_easy_to_say(ctx: ToolContext) -> None:
    result = await book_appointment(
        ctx, "Filling", "2026-12-01", "14:30", " Ada Lovelace ", notes="first visit"
    )
    reference = result.pop("reference")
    assert len(reference) == 6 and set(reference) <= set(ALPHABET)
    assert not set(reference) & set("0O1IL")
    assert result.pop("spoken_reference") == f"{' '.join(reference[:3])}, {' '.join(reference[3:])}"
    assert result == {
        "booked": True,
        "status": "booked",
        "service": "Filling",
        "date": "2026-12-01",
        "time": "14:30",
        "spoken_date": "tomorrow, Tuesday the 1st of December",
        "spoken_time": "2:30 pm",
        "duration_minutes": 60,
        "customer_name": "Ada Lovelace",
        "phone": CALLER,
    }
    stored = await ctx.bookings.get(reference)
    assert stored.notes == "first visit" and stored.call_sid == "CA0001"


async def test_references_differ(ctx: ToolContext) -> None:
    made = [
        await book_appointment(ctx, "exam", "2026-12-02", f"{9 + n // 2}:00", f"Caller {n}") for n in range(8)
    ]
    assert len({result["reference"] for result in made}) == 8


async def test_a_phone_given_is_kept_over_the_callers(ctx: ToolContext) -> None:
    result = await book_appointment(ctx, "exam", "2026-12-01", "9:00 am", "Ada", phone="(646) 555-0199")
    assert result["phone"] == "6465550199" and result["time"] == "09:00"


@pytest.mark.parametrize(
    ("date", "time", "code", "message"),
    [
        (
            "2026-12-06",
            "10:00",
            "closed",
            (
                "We are closed on Sunday the 6th of December. "
                "We are open on Monday, Tuesday, Wednesday, Thursday, Friday, Saturday."
            ),
        ),
        (
            "2026-12-25",
            "10:00",
            "closed",
            (
                "We are closed on Friday the 25th of December. "
                "We are open on Monday, Tuesday, Wednesday, Thursday, Friday, Saturday."
            ),
        ),
        (
            "2026-12-01",
            "12:15",
            "closed",
            (
                "On Tuesday the 1st of December we are open 9 am to noon and 1 pm to 5 pm, and a 60-minute "
                "Filling has to end by closing time."
            ),
        ),
        (
            "2026-12-01",
            "11:30",
            "closed",  # would run into the lunch closure
            (
                "On Tuesday the 1st of December we are open 9 am to noon and 1 pm to 5 pm, and a 60-minute "
                "Filling has to end by closing time."
            ),
        ),
        (
            "2026-11-30",
            "09:30",
            "in_past",
            "That time has passed: it is now 10:07 am on Monday the 30th of November.",
        ),
        (
            "2026-12-01",
            "09:10",
            "bad_input",
            "Appointments start every 15 minutes from opening; pick a time from check_availability.",
        ),
        ("2026-12-01", "25:00", "bad_input", "time must be a local time like 14:30 (got '25:00')."),
        ("2026-12-01", "13:00 pm", "bad_input", "time must be a local time like 14:30 (got '13:00 pm')."),
        ("01/12/2026", "10:00", "bad_input", "date must be an ISO date like 2026-11-30 (got '01/12/2026')."),
    ],
)
async def test_a_time_that_cannot_be_booked_is_explained(
    ctx: ToolContext, date: str, time: str, code: str, message: str
) -> None:
    assert await code_of(book_appointment(ctx, "filling", date, time, "Ada")) == (code, message)


async def test_other_booking_errors(ctx: ToolContext) -> None:
    code, message = await code_of(book_appointment(ctx, "whitening", "2026-12-01", "10:00", "Ada"))
    assert (
        code == "unknown_service"
        and "Check-up (30 minutes), Cleaning (45 minutes), Filling (60 minutes)" in message
    )
    assert await code_of(book_appointment(ctx, "exam", "2026-12-01", "10:00", "  ")) == (
        "bad_input",
        "Ask for the caller's name before booking.",
    )
    assert (await code_of(book_appointment(ctx, "exam", "2026-12-01", "10:00", "Ada", phone="555")))[
        0
    ] == "bad_input"


async def test_the_last_place_goes_once_and_the_next_caller_hears_alternatives(ctx: ToolContext) -> None:
    await book_appointment(ctx, "filling", "2026-12-01", "10:00", "Ada")
    await book_appointment(ctx, "check-up", "2026-12-01", "10:30", "Grace")
    assert await code_of(book_appointment(ctx, "cleaning", "2026-12-01", "10:15", "Alan")) == (
        "taken",
        "10:15 am is no longer free. The nearest free times that day: 9:30 am, 9:45 am, 11 am.",
    )


async def test_find_by_reference_ignores_case_spaces_and_dashes(ctx: ToolContext) -> None:
    made = await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Ada")
    reference = made["reference"]
    said = f"{reference[:3].lower()} - {reference[3:]}"
    found = await find_booking(ctx, reference=said)
    assert found == {"bookings": [{key: value for key, value in made.items() if key != "booked"}]}
    assert (await code_of(find_booking(ctx, reference="ZZZZZZ")))[0] == "needs_name"
    assert (await code_of(find_booking(ctx, reference="ZZZZZZ", customer_name="Ada")))[0] == "not_found"


async def test_find_by_phone_lists_the_callers_upcoming_bookings(
    ctx: ToolContext, make_ctx: Callable[..., ToolContext]
) -> None:
    await book_appointment(ctx, "exam", "2026-12-02", "10:00", "Ada")
    await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Ada")
    await book_appointment(make_ctx(caller="+16465550199"), "exam", "2026-12-01", "11:00", "Grace")
    mine = await find_booking(ctx)
    assert [(b["date"], b["time"]) for b in mine["bookings"]] == [
        ("2026-12-01", "10:00"),
        ("2026-12-02", "10:00"),
    ]
    theirs = await find_booking(make_ctx(caller="+16465550199"))
    assert [b["customer_name"] for b in theirs["bookings"]] == ["Grace"]
    later = make_ctx(now=NOW + timedelta(days=2))
    assert (await code_of(find_booking(later)))[0] == "not_found"  # both are past by then
    assert (await code_of(find_booking(make_ctx(caller=""))))[0] == "needs_reference"  # withheld number


async def test_cancel_frees_the_place(ctx: ToolContext) -> None:
    first = await book_appointment(ctx, "filling", "2026-12-01", "10:00", "Ada")
    await book_appointment(ctx, "filling", "2026-12-01", "10:00", "Grace")
    cancelled = await cancel_booking(ctx, first["reference"].lower())
    assert cancelled["cancelled"] is True and cancelled["status"] == "cancelled"
    assert (await find_booking(ctx, reference=first["reference"]))["bookings"][0]["status"] == "cancelled"
    again = await cancel_booking(ctx, first["reference"])
    assert again["already_cancelled"] is True
    await book_appointment(ctx, "filling", "2026-12-01", "10:00", "Alan")  # the place is free again


async def test_cancel_errors(ctx: ToolContext, make_ctx: Callable[..., ToolContext]) -> None:
    assert (await code_of(cancel_booking(ctx, "ZZZZZZ")))[0] == "needs_name"
    assert (await code_of(cancel_booking(ctx, "ZZZZZZ", customer_name="Ada")))[0] == "not_found"
    made = await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Ada")
    after = make_ctx(now=NOW + timedelta(days=1))
    assert (await code_of(cancel_booking(after, made["reference"])))[0] == "in_past"


async def test_reschedule_keeps_the_reference_and_frees_the_old_time(ctx: ToolContext) -> None:
    made = await book_appointment(ctx, "filling", "2026-12-01", "10:00", "Ada")
    await book_appointment(ctx, "filling", "2026-12-01", "10:00", "Grace")
    moved = await reschedule_booking(ctx, made["reference"], "2026-12-02", "17:30")
    assert moved["rescheduled"] is True and moved["reference"] == made["reference"]
    assert (moved["date"], moved["time"], moved["duration_minutes"]) == ("2026-12-02", "17:30", 60)
    await book_appointment(ctx, "filling", "2026-12-01", "10:00", "Alan")  # its old place
    # Moving within its own time (10:00-11:00 to 10:30-11:30) counts only the others.
    other = await book_appointment(ctx, "filling", "2026-12-03", "10:00", "Edsger")
    assert (await reschedule_booking(ctx, other["reference"], "2026-12-03", "10:30"))["time"] == "10:30"


async def test_reschedule_to_a_full_time_leaves_the_booking_where_it_was(ctx: ToolContext) -> None:
    made = await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Ada")
    for name in ("Grace", "Alan"):
        await book_appointment(ctx, "exam", "2026-12-01", "15:00", name)
    code, _ = await code_of(reschedule_booking(ctx, made["reference"], "2026-12-01", "15:00"))
    assert code == "taken"
    assert (await find_booking(ctx, reference=made["reference"]))["bookings"][0]["time"] == "10:00"


async def test_reschedule_errors(ctx: ToolContext, make_ctx: Callable[..., ToolContext]) -> None:
    made = await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Ada")
    reference = made["reference"]
    assert (await code_of(reschedule_booking(ctx, "ZZZZZZ", "2026-12-02", "10:00", "Ada")))[0] == "not_found"
    assert (await code_of(reschedule_booking(ctx, reference, "2026-12-06", "10:00")))[0] == "closed"
    assert (await code_of(reschedule_booking(ctx, reference, "2026-11-30", "09:00")))[0] == "in_past"
    assert (await code_of(reschedule_booking(ctx, reference, "2026-12-02", "10:05")))[0] == "bad_input"
    assert (
        await code_of(
            reschedule_booking(make_ctx(now=NOW + timedelta(days=1)), reference, "2026-12-02", "10:00")
        )
    )[0] == "in_past"
    await cancel_booking(ctx, reference)
    assert (await code_of(reschedule_booking(ctx, reference, "2026-12-02", "10:00")))[0] == "not_found"


async def test_without_a_desk_the_tools_say_booking_is_unavailable(ctx: ToolContext) -> None:
    assert (await code_of(find_booking(replace(ctx, bookings=None), reference="ABCDEF")))[0] == "unavailable"


def test_every_tool_declares_itself_to_the_model() -> None:
    assert [tool.__name__ for tool in BOOKING_TOOLS] == [
        "check_availability",
        "book_appointment",
        "find_booking",
        "cancel_booking",
        "reschedule_booking",
    ]
    for tool in BOOKING_TOOLS:
        spec = ToolSpec.of(tool)
        assert spec.description
        assert all(prop.get("description") for prop in spec.parameters["properties"].values()), spec.name


async def test_errors_reach_the_model_as_results_through_the_runtime(ctx: ToolContext) -> None:
    spec = ToolSpec.of(book_appointment)
    result, ok = await spec.invoke(
        ctx, {"service": "exam", "date": "2026-12-06", "time": "10:00", "customer_name": "Ada"}
    )
    assert not ok and result["error"]["code"] == "closed"
    result, ok = await spec.invoke(
        ctx, {"service": "exam", "date": "2026-12-01", "time": "10:00", "customer_name": "Ada"}
    )
    assert ok and result["booked"] is True


# -- a booking is discussed and changed only with its owner -------------------------------------

STRANGER = "+16465550111"


async def test_another_number_hears_nothing_of_a_booking_without_its_name(
    ctx: ToolContext, make_ctx: Callable[..., ToolContext]
) -> None:
    made = await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Zoë O'Brien")
    reference = made["reference"]
    stranger = make_ctx(caller=STRANGER)
    assert (await code_of(find_booking(stranger)))[0] == "not_found"  # nothing made with their number
    for attempt in (find_booking(stranger, reference=reference), cancel_booking(stranger, reference)):
        code, message = await code_of(attempt)
        assert code == "needs_name" and "name" in message and "Zo" not in message and "10:00" not in message
    assert (await code_of(reschedule_booking(stranger, reference, "2026-12-02", "10:00")))[0] == "needs_name"
    wrong = await code_of(find_booking(stranger, reference=reference, customer_name="Grace Hopper"))
    unknown = await code_of(find_booking(stranger, reference="ZZZZZZ", customer_name="Grace Hopper"))
    assert wrong == unknown and wrong[0] == "not_found"  # a wrong name says no more than a wrong reference
    found = await ctx.bookings.get(reference)
    assert found is not None and found.status == "booked"  # nothing changed


async def test_reference_and_name_prove_it_from_any_number(
    ctx: ToolContext, make_ctx: Callable[..., ToolContext]
) -> None:
    made = await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Zoë O'Brien-Smith")
    reference = made["reference"]
    stranger = make_ctx(caller=STRANGER)
    for said in ("zoe obrien-smith", "ZOË O\u2019BRIEN SMITH", "Ms O'Brien-Smith", "Zoe", "  o'brien smith "):
        found = await find_booking(stranger, reference=reference.lower(), customer_name=said)
        booking = found["bookings"][0]
        assert booking["reference"] == reference
        assert "phone" not in booking and booking["phone_ending"] == "0100"  # not the caller's own: in part
    moved = await reschedule_booking(stranger, reference, "2026-12-02", "10:00", customer_name="Zoe O'Brien-Smith")
    assert moved["rescheduled"] is True
    cancelled = await cancel_booking(stranger, reference, customer_name="o'brien-smith")
    assert cancelled["cancelled"] is True


async def test_the_calling_number_proves_it_whichever_way_it_was_written(
    ctx: ToolContext, make_ctx: Callable[..., ToolContext]
) -> None:
    made = await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Ada", phone="(212) 555-0123")
    assert made["phone"] == "2125550123"  # as given, without a country code
    owner = make_ctx(caller="+12125550123")
    assert [b["reference"] for b in (await find_booking(owner))["bookings"]] == [made["reference"]]
    found = await find_booking(owner, reference=made["reference"])
    assert found["bookings"][0]["phone"] == "2125550123"
    assert (await cancel_booking(owner, made["reference"]))["cancelled"] is True


async def test_a_few_wrong_names_and_the_call_is_told_nothing_more(
    ctx: ToolContext, make_ctx: Callable[..., ToolContext]
) -> None:
    made = await book_appointment(ctx, "exam", "2026-12-01", "10:00", "Ada Lovelace")
    stranger = make_ctx(caller=STRANGER)
    for name in ("Grace", "Alan", "Edsger", "Barbara", "Donald"):
        code, _ = await code_of(find_booking(stranger, reference=made["reference"], customer_name=name))
        assert code == "not_found"
    code, _ = await code_of(find_booking(stranger, reference=made["reference"], customer_name="Ada Lovelace"))
    assert code == "too_many_attempts"
    fresh_call = make_ctx(caller=STRANGER)
    assert (await find_booking(fresh_call, reference=made["reference"], customer_name="Ada"))["bookings"]


def test_the_descriptions_say_what_to_ask_for() -> None:
    from phonebot.tools.spec import ToolSpec

    for tool in (find_booking, cancel_booking, reschedule_booking):
        spec = ToolSpec.of(tool)
        assert "name it was booked under" in spec.description or "name the booking was made under" in spec.description
        assert "customer_name" in spec.parameters["properties"]
        assert "phone" not in spec.parameters["properties"]
