"""The recorder on each backend: a call's record written as it goes and ended once with its
report queued; calls left behind by a dead process, or whose stream never came, finalised."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from phonebot.call.playback import Playback
from phonebot.call.ports import CallInfo
from phonebot.call.record import CallRecord, EndReason
from phonebot.store import liveness, migrate, records
from phonebot.store.engine import make_engine, writing
from phonebot.store.liveness import Liveness
from phonebot.store.recorder import Recorder
from phonebot.store.tables import call_events, calls, webhook_outbox


@pytest.fixture
async def recorder(engine: AsyncEngine) -> AsyncIterator[Recorder]:
    recorder = Recorder(engine, Liveness(engine), webhook=True)
    try:
        yield recorder
    finally:
        await recorder.close()


async def add_call(
    engine: AsyncEngine, call_sid: str, *, created: timedelta, started: timedelta | None, instance: str | None,
    last_event_ms: int | None = None,
) -> None:
    """A call as a process that ran it would have left it: not ended. Times are back from now."""
    now = datetime.now(UTC)
    async with writing(engine) as connection:
        await connection.execute(
            insert(calls).values(
                call_sid=call_sid, direction="inbound", from_number="+14155550123", to_number="+14155550199",
                created_at=now - created, stream_started_at=None if started is None else now - started,
                instance=instance, status="in-progress",
            )
        )
        if last_event_ms is not None:
            turn = json.dumps({"role": "caller", "text": "Hello?", "interrupted": False})
            await connection.execute(
                insert(call_events).values(call_sid=call_sid, seq=1, kind="turn", offset_ms=last_event_ms, data=turn)
            )


async def ended(engine: AsyncEngine) -> dict[str, tuple[Any, ...]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(calls.c.call_sid, calls.c.end_reason, calls.c.ended_at, webhook_outbox.c.status)
            .outerjoin(webhook_outbox, webhook_outbox.c.call_sid == calls.c.call_sid)
            .where(calls.c.ended_at.is_not(None))
        )
        return {row.call_sid: (row.end_reason, row.ended_at, row.status) for row in rows}


async def report_and_outbox(engine: AsyncEngine, call_sid: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The call's report as the store gives it, and the bodies of every webhook queued."""
    async with engine.connect() as connection:
        stored = await records.load_report(connection, call_sid)
        reports = (await connection.execute(select(webhook_outbox.c.body))).scalars().all()
    return stored, list(reports)


async def test_calls_nobody_will_end_are_finalised_and_reported(
    engine: AsyncEngine, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(liveness, "CONFIRM_S", 0.5)
    dead, alive = Liveness(engine), Liveness(engine)
    await dead.hold()
    await alive.hold()
    await dead.release()  # the process died
    minute = timedelta(minutes=1)
    await add_call(
        engine, "CAdead", created=10 * minute, started=10 * minute, instance=dead.instance, last_event_ms=95_000
    )
    await add_call(engine, "CAalive", created=10 * minute, started=10 * minute, instance=alive.instance)
    await add_call(engine, "CAunclaimed-old", created=10 * minute, started=5 * minute, instance=None)
    await add_call(engine, "CAunclaimed-new", created=minute, started=timedelta(seconds=5), instance=None)
    await add_call(engine, "CAno-stream-old", created=20 * minute, started=None, instance=None)
    await add_call(engine, "CAno-stream-new", created=minute, started=None, instance=None)
    if engine.dialect.name == "postgresql":  # a free lock proves its owner dead once still free a while later
        assert await recorder.sweep() == 2
        assert "CAdead" not in await ended(engine)
        await asyncio.sleep(liveness.CONFIRM_S)
        assert await recorder.sweep() == 1
    else:  # the kernel lets go of a file lock only with its process
        assert await recorder.sweep() == 3
    finished = await ended(engine)
    assert {sid: (reason, status) for sid, (reason, _at, status) in finished.items()} == {
        "CAdead": ("service_restart", "pending"),
        "CAunclaimed-old": ("service_restart", "pending"),
        "CAno-stream-old": ("no_stream", "pending"),
    }
    # It ended after the last thing recorded of it, not at the restart.
    started = datetime.now(UTC) - 10 * minute
    assert abs(finished["CAdead"][1] - (started + timedelta(seconds=95))) < timedelta(seconds=5)
    assert await recorder.sweep() == 0  # once
    await alive.release()


async def test_a_record_is_written_as_the_call_goes_and_ended_once(engine: AsyncEngine, recorder: Recorder) -> None:
    recorder.start()
    info = CallInfo("CA" + "7" * 32, "+14155550123", "+14155550199")
    playback = Playback(8000)
    record = CallRecord(info, playback, recorder)
    record.said("bot", "Hello.")
    record.said("caller", "Hi, I'd like")
    record.said("caller", " an appointment.")
    record.said("bot", "Of course.")
    await recorder.close(flush_s=5)  # written: the two finished turns; the third is in progress
    async with engine.connect() as connection:
        stored = await records.load_report(connection, info.call_sid)
    assert stored is not None and stored["ended_at"] is None and stored["status"] == "in-progress"
    assert [turn["text"] for turn in stored["turns"]] == ["Hello.", "Hi, I'd like an appointment."]

    # The same process's recorder, reopened: with a new process's, its sweep could find the call's
    # process gone and finalise it (service_restart) before the end is written.
    recorder = Recorder(engine, recorder.liveness, webhook=True)
    recorder.start()
    record._sink = recorder
    record.end(EndReason.BOT_ENDED)
    record.end(EndReason.ERROR)
    await recorder.close(flush_s=5)
    stored, reports = await report_and_outbox(engine, info.call_sid)
    assert stored is not None and stored["end_reason"] == "bot_ended"
    assert [turn["text"] for turn in stored["turns"]] == ["Hello.", "Hi, I'd like an appointment.", "Of course."]
    [body] = reports
    assert json.loads(body)["data"] == stored


async def test_entries_arriving_together_are_written_in_few_transactions(engine: AsyncEngine) -> None:
    """100 calls each finishing a turn every 20 ms for 1 s (5,000 entries): a transaction per entry
    kept a database thread busy beside the calls' audio; coalesced, it is a few a second."""
    commits = 0

    def count(_connection: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine.sync_engine, "commit", count)
    recorder = Recorder(engine, Liveness(engine), webhook=False)
    recorder.start()
    try:
        records_ = [
            CallRecord(CallInfo(f"CA{n:032d}", "+14155550123", "+14155550199"), Playback(8000), recorder)
            for n in range(100)
        ]
        await asyncio.sleep(0.3)  # the calls' starts written
        commits = 0
        for step in range(50):
            for record in records_:
                record.said("caller" if step % 2 else "bot", f"turn {step}")
            await asyncio.sleep(0.02)
        await recorder.close(flush_s=5)
    finally:
        event.remove(engine.sync_engine, "commit", count)
    assert commits <= 8, commits  # 1 s of turns, a write every COALESCE_S (0.25 s); was one per step at least (50)
    async with engine.connect() as connection:
        stored = await connection.scalar(select(func.count()).select_from(call_events))
    assert stored == 100 * 49  # every finished turn (the last one of each call is still going)


async def test_a_process_whose_lock_the_database_dropped_keeps_its_calls(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL drops every session's advisory lock when it drops the session (a restart, a
    failover, a network blip), live processes' included: a call running on one replica is not
    finalised by another meanwhile, and is ended by its own replica with its own reason."""
    monkeypatch.setattr(liveness, "KEEP_S", 0.1)
    monkeypatch.setattr(liveness, "CONFIRM_S", 1.0)
    engine = make_engine(postgres_url)
    await migrate.upgrade(engine)
    running = Recorder(engine, Liveness(engine), webhook=True)
    other = Recorder(engine, Liveness(engine), webhook=True)
    try:
        running.start()
        info = CallInfo("CA" + "8" * 32, "+14155550123", "+14155550199")
        record = CallRecord(info, Playback(8000), running)
        record.said("bot", "Hello.")
        record.said("caller", "Hi.")
        async with asyncio.timeout(5):
            while not await _named(engine, info.call_sid, running.liveness.instance):
                await asyncio.sleep(0.02)
        # The database drops every session but this one, as a restart does.
        async with engine.connect() as connection:
            await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        assert await other.sweep() == 0  # the running replica may not have its lock back yet
        await asyncio.sleep(liveness.CONFIRM_S)
        assert await other.sweep() == 0  # it has: it lives
        assert await other.liveness.alive(running.liveness.instance)
        record.end(EndReason.CALLER_HUNG_UP)
        await running.close(flush_s=5)
        stored, reports = await report_and_outbox(engine, info.call_sid)
        assert stored is not None and stored["end_reason"] == "caller_hung_up"
        assert [json.loads(body)["data"]["end_reason"] for body in reports] == ["caller_hung_up"]
    finally:
        await running.close(flush_s=0)
        await other.close(flush_s=0)
        await engine.dispose()


async def _named(engine: AsyncEngine, call_sid: str, instance: str) -> bool:
    async with engine.connect() as connection:
        return await connection.scalar(select(calls.c.instance).where(calls.c.call_sid == call_sid)) == instance
