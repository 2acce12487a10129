"""A model that stays down: the caller hears an apology (Twilio <Say>) and the call ends; never a silent line."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.call.test_reconnect import CallerStream, start
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.phone import FORM


@pytest.fixture
def settings_overrides(twilio_rest: FakeTwilioRest) -> dict[str, Any]:
    return {"twilio_api_base_url": twilio_rest.base_url}


async def test_server_that_stays_down_gets_an_apology_not_silence(
    service: Service, gemini: FakeLiveServer, wait_until: Any, twilio_rest: FakeTwilioRest
) -> None:
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    gemini.refuse_connections = True
    await first.close(1011, "Internal error encountered.")
    await asyncio.wait_for(twilio_rest.changed.wait(), 30)
    _, path, form = twilio_rest.requests[0]
    assert path.endswith(f"/Calls/{FORM['CallSid']}.json")
    assert "<Say>" in form["Twiml"] and form["Twiml"].endswith("<Hangup /></Response>")
    await wait_until(lambda: not service.calls.active, timeout=5)
    await call.hangup()
