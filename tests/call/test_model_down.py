"""A model that stays down: the caller hears an apology (Twilio <Say>) and the call ends; never a silent line."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.call.test_reconnect import CallerStream, start
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.phone import FORM, another_caller, answer


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


async def test_a_model_side_that_breaks_ends_only_its_call_with_the_apology(
    service: Service, gemini: FakeLiveServer, wait_until: Any, twilio_rest: FakeTwilioRest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug, not a bad message (those are skipped): the model adapter raises on one message.
    from phonebot.gemini import wire

    parse = wire.parse

    def buggy(raw: str | bytes, skip: Any = None) -> list[Any]:
        if b"trigger-the-bug" in (raw if isinstance(raw, bytes) else raw.encode()):
            raise RuntimeError("a bug in the model adapter")
        return parse(raw) if skip is None else parse(raw, skip)

    monkeypatch.setattr(wire, "parse", buggy)
    other, other_session = await answer(service, gemini, another_caller(2))
    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    await first.send({"serverContent": {"outputTranscription": {"text": "trigger-the-bug"}}})
    await asyncio.wait_for(twilio_rest.changed.wait(), 10)
    _, path, form = twilio_rest.requests[0]
    assert path.endswith(f"/Calls/{FORM['CallSid']}.json")
    assert "<Say>" in form["Twiml"] and "technical difficulties" in form["Twiml"]
    await wait_until(lambda: FORM["CallSid"] not in service.calls.active, timeout=5)
    assert other.call_sid in service.calls.active and not other_session.closed.is_set()
    await call.hangup()
    await other.stop()
