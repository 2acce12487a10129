"""PHONEBOT_MAX_CALLS: a call holds a place from its webhook until it ends; past the cap, and while
draining, an inbound caller hears a short message and is not streamed; each refusal is counted."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from prometheus_client import REGISTRY

from phonebot.call.admission import Admission, Refusal
from tests.conftest import Service, make_settings, running
from tests.fakes.gemini_live import FakeLiveServer
from tests.phone import FORM, another_caller, dial

BUSY_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Sorry, all our lines are busy right now. '
    "Please call again in a few minutes.</Say><Hangup /></Response>"
)
DRAINING_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Sorry, we can\'t take your call on this line just now. '
    "Please call again in a moment.</Say><Hangup /></Response>"
)


def refused(reason: Refusal) -> float:
    return REGISTRY.get_sample_value("phonebot_calls_refused_total", {"reason": reason}) or 0.0


def active() -> float:
    return REGISTRY.get_sample_value("phonebot_calls_active") or 0.0


# -- the admission itself ---------------------------------------------------------------------


async def test_a_call_holds_its_place_from_admission_until_released() -> None:
    admission, gauge = Admission(max_calls=2), active()
    assert admission.admit("CA1", "inbound", stream_within_s=60) is None
    assert admission.admit("CA1", "inbound", stream_within_s=60) is None  # Twilio retried its webhook
    assert admission.admit("CA2", "inbound", stream_within_s=60) is None
    assert admission.count == 2 and admission.full and active() == gauge + 2
    full = refused(Refusal.FULL)
    assert admission.admit("CA3", "inbound", stream_within_s=60) == Refusal.FULL
    assert refused(Refusal.FULL) == full + 1
    admission.release("CA1")
    admission.release("CA1")  # once only
    assert admission.count == 1 and active() == gauge + 1
    assert admission.admit("CA3", "inbound", stream_within_s=60) is None
    for call_sid in ("CA2", "CA3"):
        admission.release(call_sid)
    assert admission.count == 0 and active() == gauge


async def test_a_call_whose_stream_never_starts_is_let_go() -> None:
    admission = Admission(max_calls=1)
    admission.admit("CA1", "inbound", stream_within_s=0.05)
    admission.admit("CA2", "inbound", stream_within_s=0.05)  # refused: full
    await asyncio.wait_for(admission.empty(), 1)
    assert admission.admit("CA2", "inbound", stream_within_s=0.05) is None
    admission.streaming("CA2", "inbound")  # it started in time: held until it ends
    await asyncio.sleep(0.1)
    assert "CA2" in admission
    admission.release("CA2")


async def test_a_stream_admitted_elsewhere_is_held_and_never_refused() -> None:
    admission = Admission(max_calls=1)
    admission.admit("CA1", "inbound", stream_within_s=60)
    admission.streaming("CA2", "inbound")  # its webhook went to another replica
    assert admission.count == 2
    admission.drain()
    admission.streaming("CA3", "inbound")  # nor while draining: the caller is connected already
    assert admission.count == 3
    for call_sid in ("CA1", "CA2", "CA3"):
        admission.release(call_sid)
    await asyncio.wait_for(admission.empty(), 1)


async def test_an_outbound_call_is_admitted_before_twilio_names_it() -> None:
    admission = Admission(max_calls=1)
    assert admission.admit("pending-1", "outbound", stream_within_s=0.1) is None
    admission.rename("pending-1", "CA9")
    assert "CA9" in admission and "pending-1" not in admission
    await asyncio.wait_for(admission.empty(), 1)  # its expiry follows it under the new name


async def test_draining_admits_nothing_new() -> None:
    admission = Admission(max_calls=5)
    admission.admit("CA1", "inbound", stream_within_s=60)
    admission.drain()
    before = refused(Refusal.DRAINING)
    assert admission.admit("CA2", "inbound", stream_within_s=60) == Refusal.DRAINING
    assert refused(Refusal.DRAINING) == before + 1
    assert "CA1" in admission  # the calls held go on
    admission.release("CA1")


# -- through the voice webhook ----------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"max_calls": 2}])
async def test_past_the_cap_a_caller_hears_busy_and_is_not_streamed(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    first = await dial(service)
    await dial(service, another_caller(2))  # its stream has not come yet: it counts all the same
    sessions = len(gemini.sessions)
    full = refused(Refusal.FULL)
    busy = await service.post_voice(another_caller(3))
    assert busy.status_code == 200
    assert busy.text == BUSY_TWIML
    assert refused(Refusal.FULL) == full + 1
    await asyncio.sleep(0.2)
    assert len(gemini.sessions) == sessions  # no model session for a call turned away
    # A retried webhook of a call held is that call, not a new one.
    again = await service.post_voice(FORM)
    assert re.search(r"<Stream url=", again.text)
    # Once a call ends, its place is free.
    await gemini.next_session()
    await first.connect()
    await first.stop()
    await wait_until(lambda: service.calls.admission.count == 1)
    assert "<Stream url=" in (await service.post_voice(another_caller(3))).text


async def test_while_draining_a_caller_hears_a_polite_message(service: Service, gemini: FakeLiveServer) -> None:
    service.app.state.drain.begin()
    before = refused(Refusal.DRAINING)
    response = await service.post_voice(FORM)
    assert response.text == DRAINING_TWIML
    assert refused(Refusal.DRAINING) == before + 1
    await asyncio.sleep(0.2)
    assert not gemini.sessions


async def test_a_call_that_cannot_be_recorded_gives_its_place_back(gemini: FakeLiveServer) -> None:
    # Nothing listens on port 9: the webhook cannot record the call, the caller hears why.
    settings = make_settings(database_url="postgresql+asyncpg://phonebot:pw@127.0.0.1:9/phonebot")
    async with running(settings) as service:
        before = refused(Refusal.UNAVAILABLE)
        response = await service.post_voice(FORM)
        assert "<Say>Sorry, we can't take your call right now." in response.text
        assert "<Stream" not in response.text
        assert refused(Refusal.UNAVAILABLE) == before + 1
        assert service.calls.admission.count == 0


def calls_ended(direction: str, reason: str) -> float:
    labels = {"direction": direction, "end_reason": reason}
    return REGISTRY.get_sample_value("phonebot_calls_total", labels) or 0.0


@pytest.mark.parametrize("settings_overrides", [{"max_calls": 1}])
async def test_a_call_twilio_says_ended_before_its_stream_gives_its_place_back_at_once(
    service: Service, gemini: FakeLiveServer
) -> None:
    before = calls_ended("inbound", "caller_hung_up")
    await dial(service)
    early = await gemini.next_session()
    assert service.calls.admission.full
    status = {**FORM, "CallStatus": "completed", "CallDuration": "0"}
    assert (await service.post_status(status)).status_code == 204
    assert service.calls.admission.count == 0  # at once, not after the 30 s a stream may take
    await asyncio.wait_for(early.closed.wait(), 2)
    assert calls_ended("inbound", "caller_hung_up") == before + 1
    assert (await service.post_status(status)).status_code == 204  # Twilio may say it twice
    assert calls_ended("inbound", "caller_hung_up") == before + 1  # one call, counted once
    assert "<Stream url=" in (await service.post_voice(another_caller(2))).text
