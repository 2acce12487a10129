"""A model service that takes the setup and never answers it: the caller still hears the apology (or
is transferred) once the reconnect budget is spent. The line is not cut before that: a stream
nobody reads yet is not a silent line. The call beside it goes on, losing nothing."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from phonebot import app as app_module
from phonebot.call.reconnect import ReconnectPolicy
from phonebot.call.session import APOLOGY
from phonebot.telephony import stream
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.phone import FORM, Intact, dial

TRANSFER_TO = "+14155550100"
NEIGHBOUR = {**FORM, "CallSid": "CA" + "2" * 32, "From": "+14155550177"}


@pytest.fixture(params=["apology", "transfer"])
def settings_overrides(
    request: pytest.FixtureRequest, twilio_rest: FakeTwilioRest, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    # Shorter than in production, in the same order: the silent-line timeout (1 s) is well inside
    # the reconnect budget (3 s), as 15 s is inside 20 s.
    monkeypatch.setattr(stream, "SILENT_LINE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(stream, "SILENT_LINE_CHECK_S", 0.1)
    policy = functools.partial(ReconnectPolicy, connect_timeout_s=1.5, budget_s=3.0)
    monkeypatch.setattr(app_module, "ReconnectPolicy", policy)
    overrides = {"twilio_api_base_url": twilio_rest.base_url}
    if request.param == "transfer":
        overrides["transfer_number"] = TRANSFER_TO
    return overrides


async def test_a_model_that_never_answers_setup_still_gets_the_caller_an_apology(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, wait_until: Any
) -> None:
    neighbour = await dial(service, NEIGHBOUR)
    neighbour_session = await gemini.next_session()
    await neighbour.connect()
    # The other call talks both ways all through the outage (5 s, in real time) and loses nothing.
    other = asyncio.create_task(Intact(neighbour, neighbour_session).both_ways(250, realtime=True, timeout=10))

    gemini.answer_setup = False  # from now on, the model service swallows every setup
    call = await dial(service)
    await call.connect()
    talking = asyncio.create_task(call.send_audio(b"\xff" * 8000 * 6, realtime=True))  # the caller waits
    await asyncio.wait_for(twilio_rest.changed.wait(), 15)

    _, path, form = twilio_rest.requests[0]
    assert path.endswith(f"/Calls/{FORM['CallSid']}.json")
    assert f"<Say>{APOLOGY}</Say>" in form["Twiml"]
    expected_end = f"<Dial>{TRANSFER_TO}</Dial>" if service.settings.transfer_number else "<Hangup />"
    assert form["Twiml"].endswith(expected_end + "</Response>")
    # The stream was still up when the apology was asked for: Twilio plays it on the live call.
    assert call.closed_at is None or call.closed_at > twilio_rest.request_times[0]
    assert len(gemini.hung_setups) >= 2  # the reconnect budget was spent trying
    talking.cancel()

    await other
    await neighbour.stop()
    await call.hangup()
    await wait_until(lambda: not service.calls.active)
