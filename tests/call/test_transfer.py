"""transfer_call: the caller is connected to PHONEBOT_TRANSFER_NUMBER through Twilio's REST API (a fake of it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from phonebot.app import tool_specs
from tests import audio
from tests.call.test_tool_runtime import call_tool, declared, wait_for_response
from tests.conftest import Service, make_settings
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.phone import FORM, answer


def test_transfer_call_is_offered_only_with_a_number() -> None:
    booking = ["check_availability", "book_appointment", "find_booking", "cancel_booking", "reschedule_booking"]
    assert [s.name for s in tool_specs(make_settings())] == [*booking, "end_call"]
    with_number = make_settings(transfer_number="+14155550100")
    assert [s.name for s in tool_specs(with_number)] == [*booking, "end_call", "transfer_call"]


@pytest.fixture
def settings_overrides(twilio_rest: FakeTwilioRest) -> dict[str, Any]:
    return {"transfer_number": "+14155550100", "twilio_api_base_url": twilio_rest.base_url}


async def test_transfer_call_dials_the_transfer_number(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest
) -> None:
    call, session = await answer(service, gemini)
    assert {"end_call", "transfer_call"} <= set(declared(session))
    await call_tool(session, "t", "transfer_call", {"reason": "wants a person"})
    assert (await wait_for_response(session, "t"))["response"]["ok"] is True
    await session.send_audio(audio.tone(440, 24000, 0.3))  # "I'll put you through now"
    await session.send_turn_complete()
    await asyncio.wait_for(twilio_rest.changed.wait(), 5)
    _method, path, form = twilio_rest.requests[0]
    assert path == f"/2010-04-01/Accounts/AC{'0' * 32}/Calls/{FORM['CallSid']}.json"
    assert form["Twiml"].endswith("<Dial>+14155550100</Dial></Response>")
    assert call.played_bytes() >= 2400 - 160  # after the bot finished speaking
    await asyncio.wait_for(session.closed.wait(), 5)
    await call.hangup()
