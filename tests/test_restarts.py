"""Call records and their webhook across crashes, against real `phonebot serve` processes killed with
SIGKILL: a report queued before the kill arrives after a restart, always with the same webhook-id
and a valid signature (checked by hand); a call killed mid-way is finalised at the next start; two
replicas on one PostgreSQL deliver each report once, and none is lost when one dies mid-delivery."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from phonebot.store import migrate
from phonebot.store.engine import make_engine
from phonebot.store.records import load_report
from phonebot.store.tables import webhook_outbox
from tests import audio
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall
from tests.fakes.webhook_receiver import SECRET, Received, WebhookReceiver, verify
from tests.phone import FORM, another_caller, answer, expected_mulaw_bytes
from tests.served import Served, serve

CALL_SID = FORM["CallSid"]


def env(webhook_endpoint: WebhookReceiver, database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "TRANSCRIPT_WEBHOOK_URL": webhook_endpoint.url,
        "TRANSCRIPT_WEBHOOK_SECRET": SECRET,
    }


def folder(tmp_path: Path, name: str) -> Path:
    """Each process runs in a folder of its own (its log), sharing the database."""
    path = tmp_path / name
    path.mkdir()
    return path


async def kill(served: Served) -> None:
    served.signal(signal.SIGKILL)
    assert await served.exit_code(timeout=10) == -signal.SIGKILL


async def outbox(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(webhook_outbox).order_by(webhook_outbox.c.created_at))).all())


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def short_call(served: Served, gemini: FakeLiveServer, form: dict[str, str] = FORM) -> None:
    """The bot greets, the caller answers, the caller hangs up."""
    call, session = await answer(served, gemini, form)
    await greet_and_answer(call, session)
    await call.stop()


async def greet_and_answer(call: FakeTwilioCall, session: FakeLiveSession) -> None:
    await session.wait_for_text("Greet")
    await session.send_output_transcription("Hello, thank you for calling.")
    greeting = audio.tone(440, 24000, 0.2)
    await session.send_audio(greeting)
    await session.send_turn_complete()
    await call.wait_for_audio(expected_mulaw_bytes(greeting))
    await call.wait_for_mark("0:1600")  # heard to the end
    await session.send_input_transcription("I'd like to book a check-up.")


def signed_alike(received: list[Received], event_id: str) -> None:
    """Every attempt: the same id, the same body, and a valid signature."""
    assert received
    for request in received:
        verify(SECRET, request.headers, request.body)
        assert request.id == event_id
        assert request.body == received[0].body


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[tuple[str, AsyncEngine]]:
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    engine = make_engine(url)
    await migrate.upgrade(engine)
    try:
        yield url, engine
    finally:
        await engine.dispose()


@pytest.fixture
async def postgresql(postgres_url: str) -> AsyncIterator[tuple[str, AsyncEngine]]:
    engine = make_engine(postgres_url)
    await migrate.upgrade(engine)  # `phonebot db upgrade`, once per release
    try:
        yield postgres_url, engine
    finally:
        await engine.dispose()


async def test_a_report_queued_before_a_sigkill_arrives_after_the_restart(
    tmp_path: Path, gemini: FakeLiveServer, webhook_endpoint: WebhookReceiver, sqlite: tuple[str, AsyncEngine]
) -> None:
    url, engine = sqlite
    async with serve(folder(tmp_path, "first"), **env(webhook_endpoint, url)) as first:
        await short_call(first, gemini)
        # The call is over and its report queued; the webhook_endpoint is down, so it is still to deliver.
        await until(lambda: _attempted(engine), 10, "a first attempt, refused")
        await kill(first)
    [event] = await outbox(engine)
    assert event.status == "pending" and event.last_error.startswith("ConnectError")
    await webhook_endpoint.up()
    async with serve(folder(tmp_path, "second"), **env(webhook_endpoint, url)):
        [delivered] = await webhook_endpoint.wait_for(1, timeout=20)
        await until(lambda: _all_delivered(engine), 5, "the delivery written")
    signed_alike(webhook_endpoint.received, event.id)
    data = delivered.json()["data"]
    assert (data["call_sid"], data["end_reason"]) == (CALL_SID, "caller_hung_up")
    assert [t["text"] for t in data["turns"]] == ["Hello, thank you for calling.", "I'd like to book a check-up."]


async def _attempted(engine: AsyncEngine) -> bool:
    events = await outbox(engine)
    return bool(events) and events[0].attempts >= 1 and events[0].lease is None


async def test_a_report_whose_delivery_was_cut_by_a_sigkill_is_sent_again_with_the_same_id(
    tmp_path: Path, gemini: FakeLiveServer, webhook_endpoint: WebhookReceiver, sqlite: tuple[str, AsyncEngine]
) -> None:
    url, engine = sqlite
    webhook_endpoint.delays = [30.0]  # the first attempt gets no answer before its sender dies
    await webhook_endpoint.up()
    async with serve(folder(tmp_path, "first"), **env(webhook_endpoint, url)) as first:
        await short_call(first, gemini)
        async with asyncio.timeout(10):
            while not webhook_endpoint.received:
                await asyncio.sleep(0.02)
        await kill(first)
    async with serve(folder(tmp_path, "second"), **env(webhook_endpoint, url)):
        await webhook_endpoint.wait_for(1, timeout=10)  # at once: the dead process's lease is taken over
        await until(lambda: _all_delivered(engine), 5, "the delivery written")
    [event] = await outbox(engine)
    assert (event.status, event.attempts) == ("delivered", 2)
    assert len(webhook_endpoint.received) == 2
    signed_alike(webhook_endpoint.received, event.id)


async def test_a_call_killed_mid_way_is_finalised_at_the_next_start(
    tmp_path: Path, gemini: FakeLiveServer, webhook_endpoint: WebhookReceiver, sqlite: tuple[str, AsyncEngine]
) -> None:
    url, engine = sqlite
    await webhook_endpoint.up()
    async with serve(folder(tmp_path, "first"), **env(webhook_endpoint, url)) as first:
        call, session = await answer(first, gemini)
        await greet_and_answer(call, session)
        await session.send_output_transcription("Of course. Which day suits you?")  # the turn in progress
        # The finished turns are in the database before anything ends.
        await until(lambda: _turns_written(engine), 10, "the finished turns written")
        await kill(first)
        await asyncio.wait_for(call.closed.wait(), 5)
    assert not webhook_endpoint.received
    started = time.monotonic()
    async with serve(folder(tmp_path, "second"), **env(webhook_endpoint, url)):
        [delivered] = await webhook_endpoint.wait_for(1, timeout=15)
    assert time.monotonic() - started < 10, "finalised at the start, not after a timeout"
    verify(SECRET, delivered.headers, delivered.body)
    data = delivered.json()["data"]
    assert (data["call_sid"], data["end_reason"]) == (CALL_SID, "service_restart")
    assert [(t["role"], t["text"]) for t in data["turns"]] == [
        ("bot", "Hello, thank you for calling."),
        ("caller", "I'd like to book a check-up."),
    ]  # the turn in progress at the kill is the most that is lost
    assert data["ended_at"] >= data["started_at"]


async def _all_delivered(engine: AsyncEngine) -> bool:
    return all(event.status == "delivered" for event in await outbox(engine))


async def _turns_written(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        report = await load_report(connection, CALL_SID)
    return report is not None and len(report["turns"]) >= 2


async def test_two_replicas_on_postgresql_deliver_each_report_once(
    tmp_path: Path, gemini: FakeLiveServer, webhook_endpoint: WebhookReceiver, postgresql: tuple[str, AsyncEngine]
) -> None:
    url, engine = postgresql
    await webhook_endpoint.up()
    async with (
        serve(folder(tmp_path, "a"), **env(webhook_endpoint, url)) as a,
        serve(folder(tmp_path, "b"), **env(webhook_endpoint, url)) as b,
    ):
        for n in range(1, 7):
            await short_call(a if n % 2 else b, gemini, another_caller(n))
        await webhook_endpoint.wait_for(6, timeout=20)
        await until(lambda: _all_delivered(engine), 5, "the deliveries written")
        await asyncio.sleep(3)  # longer than a poll: a second delivery would have come by now
    events = await outbox(engine)
    assert sorted(r.id for r in webhook_endpoint.received) == sorted(e.id for e in events)  # each once
    assert {(e.status, e.attempts) for e in events} == {("delivered", 1)}
    for request in webhook_endpoint.received:
        verify(SECRET, request.headers, request.body)


async def test_no_report_is_lost_when_the_replica_delivering_it_dies(
    tmp_path: Path, gemini: FakeLiveServer, webhook_endpoint: WebhookReceiver, postgresql: tuple[str, AsyncEngine]
) -> None:
    url, engine = postgresql
    webhook_endpoint.delays = [30.0]  # the first attempt hangs
    await webhook_endpoint.up()
    async with (
        serve(folder(tmp_path, "a"), **env(webhook_endpoint, url)) as a,
        serve(folder(tmp_path, "b"), **env(webhook_endpoint, url)) as b,
    ):
        await short_call(a, gemini)
        async with asyncio.timeout(10):
            while not webhook_endpoint.received:
                await asyncio.sleep(0.02)
        [event] = await outbox(engine)
        holder, other = (a, b) if f"/{a.process.pid}/" in event.leased_by else (b, a)
        await asyncio.sleep(3)  # longer than a poll: while its holder lives, nobody else takes it
        assert len(webhook_endpoint.received) == 1
        await kill(holder)
        await webhook_endpoint.wait_for(1, timeout=10)
        await until(lambda: _all_delivered(engine), 5, "the delivery written")
        assert other.running
    [event] = await outbox(engine)
    assert (event.status, event.attempts) == ("delivered", 2)
    signed_alike(webhook_endpoint.received, event.id)
