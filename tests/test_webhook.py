"""The finished-call webhook against a real local receiver that is down, failing or slow: every
attempt carries the same webhook-id and a valid Standard Webhooks signature (checked by hand),
retries back off, and an event given up on is kept, marked failed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from phonebot import logs, webhook
from phonebot.call.record import EndReason
from phonebot.settings import Settings
from phonebot.store import records
from phonebot.store.engine import writing
from phonebot.store.liveness import Liveness
from phonebot.store.outbox import Outbox
from phonebot.store.tables import calls, webhook_outbox
from phonebot.webhook import Deliveries, Outcome
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver, verify


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries in tenths of a second, and an attempt given up after half a second, so the
    schedule shows in a test; the logic is the same at the real scale."""
    logs.configure("debug", "console")  # onto this test's stderr
    monkeypatch.setattr(webhook, "FIRST_RETRY_S", 0.1)
    monkeypatch.setattr(webhook, "MAX_RETRY_S", 0.4)
    monkeypatch.setattr(webhook, "DELIVERY_TIMEOUT_S", 0.5)
    monkeypatch.setattr(webhook, "IDLE_POLL_S", 0.1)


@dataclass
class Replica:
    """What one process has for delivering webhooks."""

    liveness: Liveness
    outbox: Outbox
    deliveries: Deliveries

    async def stop(self) -> None:
        await self.deliveries.close()
        await self.liveness.release()


@pytest.fixture
async def replicas(engine: AsyncEngine, webhook_endpoint: WebhookReceiver) -> AsyncIterator[Callable[..., Any]]:
    made: list[Replica] = []

    async def make(give_up_s: float = 60.0, start: bool = True) -> Replica:
        settings = Settings(
            transcript_webhook_url=webhook_endpoint.url, transcript_webhook_secret=SECRET, webhook_give_up_s=give_up_s
        )
        liveness = Liveness(engine)
        await liveness.hold()
        outbox = Outbox(engine, liveness.instance)
        replica = Replica(liveness, outbox, Deliveries(settings, outbox, liveness))
        made.append(replica)
        if start:
            replica.deliveries.start()
        return replica

    yield make
    for replica in made:
        await replica.stop()


async def finished_call(engine: AsyncEngine, call_sid: str = "CA" + "5" * 32) -> str:
    """A call that has just ended, its report queued; returns its webhook-id."""
    now = datetime.now(UTC)
    async with writing(engine) as connection:
        await connection.execute(
            insert(calls).values(
                call_sid=call_sid, direction="inbound", from_number="+14155550123", to_number="+14155550199",
                created_at=now, stream_started_at=now,
            )
        )
        assert await records.finish(connection, call_sid, EndReason.BOT_ENDED, now, webhook=True)
    return await outbox_row(engine, call_sid, "id")


async def outbox_row(engine: AsyncEngine, call_sid: str, *columns: str) -> Any:
    async with engine.connect() as connection:
        row = (await connection.execute(select(webhook_outbox).where(webhook_outbox.c.call_sid == call_sid))).one()
    values = tuple(row._mapping[column] for column in columns)
    return values[0] if len(values) == 1 else values


async def wait_for_status(engine: AsyncEngine, call_sid: str, status: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while await outbox_row(engine, call_sid, "status") != status:
            await asyncio.sleep(0.02)


def assert_all_signed_alike(webhook_endpoint: WebhookReceiver, event_id: str) -> None:
    assert webhook_endpoint.received, "nothing arrived"
    for request in webhook_endpoint.received:
        verify(SECRET, request.headers, request.body)
        assert request.id == event_id
        assert request.body == webhook_endpoint.received[0].body  # the same event, byte for byte
        assert request.headers["content-type"] == "application/json"


async def test_a_receiver_that_is_down_gets_the_event_once_it_is_up(
    engine: AsyncEngine, webhook_endpoint: WebhookReceiver, replicas: Callable[..., Any]
) -> None:
    event_id = await finished_call(engine)
    await replicas()
    async with asyncio.timeout(5):
        while await outbox_row(engine, "CA" + "5" * 32, "attempts") < 2:  # refused, and refused again
            await asyncio.sleep(0.02)
    assert not webhook_endpoint.received
    status, error = await outbox_row(engine, "CA" + "5" * 32, "status", "last_error")
    assert status == "pending" and error.startswith("ConnectError")
    await webhook_endpoint.up()
    [delivered] = await webhook_endpoint.wait_for(1)
    assert_all_signed_alike(webhook_endpoint, event_id)
    body = delivered.json()
    assert body["type"] == "call.completed" and body["data"]["call_sid"] == "CA" + "5" * 32
    assert body["data"]["end_reason"] == "bot_ended" and body["data"]["from"] == "+14155550123"
    await wait_for_status(engine, "CA" + "5" * 32, "delivered")


async def test_a_receiver_answering_500_for_a_while_gets_the_same_event_again(
    engine: AsyncEngine, webhook_endpoint: WebhookReceiver, replicas: Callable[..., Any]
) -> None:
    webhook_endpoint.answers = [500, 502, 503]
    await webhook_endpoint.up()
    event_id = await finished_call(engine)
    await replicas()
    await webhook_endpoint.wait_for(1)
    assert len(webhook_endpoint.received) == 4
    assert_all_signed_alike(webhook_endpoint, event_id)
    gaps = [b.at - a.at for a, b in zip(webhook_endpoint.received, webhook_endpoint.received[1:], strict=False)]
    assert all(gap >= 0.04 for gap in gaps), gaps  # backed off (0.1 s doubling, jittered +-50 %)
    await wait_for_status(engine, "CA" + "5" * 32, "delivered")
    assert await outbox_row(engine, "CA" + "5" * 32, "attempts", "last_error") == (4, None)


async def test_a_receiver_slower_than_the_timeout_is_tried_again(
    engine: AsyncEngine, webhook_endpoint: WebhookReceiver, replicas: Callable[..., Any]
) -> None:
    webhook_endpoint.delays = [1.5]  # three times the delivery timeout, then prompt
    await webhook_endpoint.up()
    event_id = await finished_call(engine)
    await replicas()
    await wait_for_status(engine, "CA" + "5" * 32, "delivered")
    first, second = webhook_endpoint.received[:2]
    assert second.at - first.at < 1.5, "the second attempt did not wait for the slow first one"
    assert_all_signed_alike(webhook_endpoint, event_id)
    await webhook_endpoint.wait_for(2, timeout=3)  # the slow answer was 200 too, late: at least once, same id


async def test_an_event_is_given_up_after_the_give_up_time_and_kept_as_failed(
    engine: AsyncEngine, webhook_endpoint: WebhookReceiver, replicas: Callable[..., Any]
) -> None:
    webhook_endpoint.answers = [500] * 1000
    await webhook_endpoint.up()
    event_id = await finished_call(engine)
    await replicas(give_up_s=1.0)
    await wait_for_status(engine, "CA" + "5" * 32, "failed")
    attempts, error, created_at, last = await outbox_row(
        engine, "CA" + "5" * 32, "attempts", "last_error", "created_at", "last_attempt_at"
    )
    assert error == "HTTP 500" and attempts == len(webhook_endpoint.received) >= 3
    assert 1.0 <= (last - created_at).total_seconds() < 1.5  # the last try falls at the give-up time
    assert_all_signed_alike(webhook_endpoint, event_id)
    await asyncio.sleep(0.3)
    assert len(webhook_endpoint.received) == attempts  # and then no more


async def test_a_try_that_fails_after_the_give_up_time_is_not_the_last(
    engine: AsyncEngine,
    webhook_endpoint: WebhookReceiver,
    replicas: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook, "DELIVERY_TIMEOUT_S", 3.0)
    webhook_endpoint.answers = [500, 500]
    webhook_endpoint.delays = [1.5]  # the first try, made within the give-up time, fails after it
    await webhook_endpoint.up()
    await finished_call(engine)
    await replicas(give_up_s=1.0)
    await wait_for_status(engine, "CA" + "5" * 32, "failed")
    attempts, created_at, last = await outbox_row(engine, "CA" + "5" * 32, "attempts", "created_at", "last_attempt_at")
    assert attempts == len(webhook_endpoint.received) == 2  # so one more, at once
    assert (last - created_at).total_seconds() >= 1.0


async def test_an_event_leased_by_a_process_that_died_is_taken_over_at_once(
    engine: AsyncEngine, webhook_endpoint: WebhookReceiver, replicas: Callable[..., Any]
) -> None:
    await webhook_endpoint.up()
    event_id = await finished_call(engine)
    dead = await replicas(start=False)
    [claimed] = await dead.outbox.claim(datetime.now(UTC), 1, lease_s=3600)  # then it dies mid-delivery
    await dead.liveness.release()
    await replicas()
    [delivered] = await webhook_endpoint.wait_for(1, timeout=3)
    assert delivered.id == claimed.id == event_id
    await wait_for_status(engine, "CA" + "5" * 32, "delivered")
    assert await outbox_row(engine, "CA" + "5" * 32, "attempts") == 2


async def test_replicas_deliver_each_event_once(
    engine: AsyncEngine, webhook_endpoint: WebhookReceiver, replicas: Callable[..., Any]
) -> None:
    await webhook_endpoint.up()
    first, second = await replicas(start=False), await replicas(start=False)
    ids = [await finished_call(engine, f"CA{n:032d}") for n in range(24)]
    first.deliveries.start()
    second.deliveries.start()
    await webhook_endpoint.wait_for(24)
    await asyncio.sleep(0.3)
    assert sorted(r.id for r in webhook_endpoint.received) == sorted(ids)  # each once, none twice
    for request in webhook_endpoint.received:
        verify(SECRET, request.headers, request.body)


def test_retries_back_off_with_jitter_and_honour_retry_after() -> None:
    delays = [webhook.retry_delay(attempt) for attempt in range(1, 20)]
    assert all(0.05 <= d <= 0.4 for d in delays)
    assert webhook.retry_delay(1, retry_after=0.3) >= 0.3


async def test_an_attempt_reports_one_outcome(
    engine: AsyncEngine, webhook_endpoint: WebhookReceiver, replicas: Callable[..., Any]
) -> None:
    webhook_endpoint.answers = [500]
    await webhook_endpoint.up()
    await finished_call(engine)
    replica = await replicas(start=False)
    [event] = await replica.outbox.claim(datetime.now(UTC), 1, 30)
    assert await replica.deliveries.attempt(event) == Outcome.RETRY
    [event] = await replica.outbox.claim(datetime.now(UTC) + timedelta(seconds=1), 1, 30)
    assert await replica.deliveries.attempt(event) == Outcome.DELIVERED
    body = json.loads(webhook_endpoint.accepted[0].body)
    assert set(body["data"]) >= {"turns", "tool_calls", "dtmf", "bookings", "metadata", "answered_by"}

