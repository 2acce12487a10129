"""Twilio's status callbacks: signed, never moving a call back, and a call that ends before its
stream starts is recorded at once and its early model session closed at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver, verify
from tests.phone import CALLER, FORM, answer

CALL_SID = FORM["CallSid"]


@pytest.fixture
def settings_overrides(webhook_receiver: WebhookReceiver) -> dict[str, Any]:
    return {"transcript_webhook_url": webhook_receiver.url, "transcript_webhook_secret": SECRET, "api_key": "k"}


def status_form(status: str, **extra: str) -> dict[str, str]:
    return {**FORM, "CallStatus": status, "Timestamp": "Tue, 01 Dec 2026 15:00:00 +0000", **extra}


async def test_a_caller_who_hangs_up_before_the_stream_is_recorded_and_the_model_let_go_at_once(
    service: Service, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver
) -> None:
    assert (await service.post_voice(FORM)).status_code == 200
    early = await gemini.next_session()  # opened at the webhook, to greet without delay
    await early.wait_for_text("Greet")
    sent = time.monotonic()
    response = await service.post_status(status_form("completed", CallDuration="0"))
    assert response.status_code == 204
    await asyncio.wait_for(early.closed.wait(), 2)
    assert time.monotonic() - sent < 2  # not the 30 s an unclaimed session would live
    [delivered] = await webhook_receiver.wait_for(1)
    verify(SECRET, delivered.headers, delivered.body)
    data = delivered.json()["data"]
    assert (data["call_sid"], data["from"], data["end_reason"], data["duration_s"]) == (
        CALL_SID, CALLER, "caller_hung_up", 0.0
    )
    assert data["turns"] == [] and data["ended_at"] is not None
    record = await service.call_record(CALL_SID)
    assert (record["status"], record["end_reason"]) == ("completed", "caller_hung_up")


@pytest.mark.parametrize(
    ("status", "reason"), [("busy", "busy"), ("no-answer", "no_answer"), ("failed", "failed"), ("canceled", "canceled")]
)
async def test_calls_that_never_connected_end_with_twilios_reason(
    service: Service, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver, status: str, reason: str
) -> None:
    assert (await service.post_voice(FORM)).status_code == 200
    assert (await service.post_status(status_form(status))).status_code == 204
    [delivered] = await webhook_receiver.wait_for(1)
    assert delivered.json()["data"]["end_reason"] == reason
    assert (await service.call_record(CALL_SID))["status"] == status


async def test_statuses_never_move_a_call_back_and_a_streamed_call_is_ended_by_its_stream(
    service: Service, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver, wait_until: Any
) -> None:
    call, _session = await answer(service, gemini)
    await wait_until(lambda: CALL_SID in service.calls.active)
    assert (await service.post_status(status_form("in-progress", AnsweredBy="machine_end_beep"))).status_code == 204
    assert (await service.post_status(status_form("ringing"))).status_code == 204  # late, out of order
    record = await service.call_record(CALL_SID)
    assert (record["status"], record["answered_by"], record["ended_at"]) == ("in-progress", "machine", None)
    await call.stop()
    assert (await service.post_status(status_form("completed", CallDuration="3"))).status_code == 204
    [delivered] = await webhook_receiver.wait_for(1)
    assert delivered.json()["data"]["end_reason"] == "caller_hung_up"  # as the stream said, once
    await asyncio.sleep(0.2)
    assert len(webhook_receiver.received) == 1


async def test_status_callbacks_must_be_signed_and_well_formed(service: Service) -> None:
    for signature in (None, "bm90IGEgc2lnbmF0dXJl"):
        response = await service.post_status(status_form("completed"), signature=signature)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "bad_signature"
    response = await service.post_status(status_form("exploded"))
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"
