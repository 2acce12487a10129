"""Writes call records as calls go, without ever making a call wait for the database.

`Recorder` is the calls' `RecordSink`: the record hands it each finished entry, and it queues
it and returns. One writer task per process takes everything queued so far and writes it in
one transaction: a busy minute of calls is a few transactions, never a round trip per frame or
per turn on a call's own path. A call's end is written with its whole record (so entries lost to
a database outage are written then) and its webhook queued in the same transaction.

It also finalises calls nobody will end: at start, then every `SWEEP_S`, it looks at calls not
ended and ends those whose process has died (`service_restart`, see `liveness.py`: on PostgreSQL
that takes a second look, `CONFIRM_S` later), and those whose media stream never started
(`no_stream`). For as long as it runs, it holds this process's own lock (`Liveness.keep`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from phonebot import metrics
from phonebot.call.record import CallRecord, EndReason, Entry
from phonebot.store import liveness as _liveness
from phonebot.store import records
from phonebot.store.engine import writing
from phonebot.store.liveness import Liveness
from phonebot.store.records import ENDED, EventRow
from phonebot.store.tables import call_events

log = structlog.get_logger(__name__)

SWEEP_S = 30.0
# After a write, what is queued in the next COALESCE_S waits to be written together: at 100 calls
# a transaction per finished entry kept aiosqlite's thread busy for ~13% of the core the calls'
# audio runs on (py-spy, bench.load --calls 100 --profile); a few transactions a second cost
# nothing measurable, and a record or a webhook is at most this much later.
COALESCE_S = 0.25
NO_STREAM_AFTER = timedelta(minutes=15)  # a call whose stream has not started by then never will
UNCLAIMED_AFTER = timedelta(minutes=2)  # a started stream no process has said it runs
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0
SPLIT_AFTER_FAILURES = 3  # then write items one by one, to get past one that can never be written

# Twilio's final statuses for a call that never reached its stream, as end reasons.
STATUS_END_REASONS = {
    "completed": EndReason.CALLER_HUNG_UP,
    "busy": EndReason.BUSY,
    "no-answer": EndReason.NO_ANSWER,
    "failed": EndReason.FAILED,
    "canceled": EndReason.CANCELED,
}


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Start:
    call_sid: str
    direction: str
    from_number: str
    to_number: str
    started_at: datetime

    @classmethod
    def of(cls, record: CallRecord) -> _Start:
        info = record.info
        return cls(info.call_sid, info.direction, info.from_number, info.to_number, record.started_at)


@dataclass(slots=True)
class _Events:
    rows: list[EventRow]


@dataclass(slots=True)
class _End:
    start: _Start
    reason: EndReason
    ended_at: datetime
    rows: list[EventRow] = field(default_factory=list)


_Item = _Start | _Events | _End


class Recorder:
    def __init__(
        self,
        engine: AsyncEngine,
        liveness: Liveness,
        *,
        webhook: bool,
        on_queued: Callable[[], None] = lambda: None,
        coalesce_s: float = COALESCE_S,
    ) -> None:
        """`webhook`: queue a report of every finished call; `on_queued` hears when some are."""
        self.engine = engine
        self._coalesce_s = coalesce_s
        self.liveness = liveness
        self._webhook = webhook
        self._on_queued = on_queued
        self._queue: list[_Item] = []
        self._queued = asyncio.Event()
        self._written = asyncio.Event()  # set while nothing is waiting to be written
        self._written.set()
        self._live: set[str] = set()  # calls this process runs
        self._second_look = False  # the last sweep found processes that may be dead: look again soon
        self._tasks: list[asyncio.Task[None]] = []

    # -- RecordSink: called from the calls; each returns at once ----------------------------

    def started(self, record: CallRecord) -> None:
        self._live.add(record.call_sid)
        self._put(_Start.of(record))

    def entry(self, record: CallRecord, entry: Entry) -> None:
        self._put(_Events([EventRow.of(record.call_sid, entry)]))

    def progress(self, record: CallRecord, entry: Entry) -> None:
        pass  # only finished entries are written: a turn is written once, when it is over

    def ended(self, record: CallRecord) -> None:
        assert record.end_reason is not None and record.ended_at is not None
        rows = [EventRow.of(record.call_sid, entry) for entry in record.entries()]
        self._put(_End(_Start.of(record), record.end_reason, record.ended_at, rows))
        self._live.discard(record.call_sid)

    def _put(self, item: _Item) -> None:
        self._queue.append(item)
        self._written.clear()
        self._queued.set()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            # First: on SQLite the lock is taken before the writer's first step names this process on a call.
            asyncio.create_task(self.liveness.keep(), name="liveness"),
            asyncio.create_task(self._write_loop(), name="records writer"),
            asyncio.create_task(self._sweep_loop(), name="records sweeper"),
        ]

    async def close(self, flush_s: float = 10.0) -> None:
        """Write what is queued (for up to `flush_s`), then stop and let go of this process's lock."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._written.wait(), flush_s)
        if self._queue:
            log.error("records.unwritten_at_exit", items=len(self._queue))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.liveness.release()

    # -- Twilio's status callbacks ------------------------------------------------------------

    async def status(self, call_sid: str, status: str, answered_by: str | None) -> bool:
        """Record Twilio's word on a call. True when the call ended before its stream started:
        the record is finished then, and its early model session should be closed."""
        queued, reason = False, STATUS_END_REASONS.get(status)
        async with writing(self.engine) as connection:
            row = await records.update_status(connection, call_sid, status, answered_by)
            ended_early = status in ENDED and (row is None or row["stream_started_at"] is None)
            if row is not None and ended_early and reason is not None:
                queued = await records.finish(
                    connection, call_sid, reason, _now(), webhook=self._webhook, status=status
                )
        if row is None:
            log.warning("records.status_for_unknown_call", call_sid=call_sid, status=status)
        elif queued:  # ended here, once (the record's end is written once, on whichever replica)
            metrics.CALLS.labels(row["direction"], reason).inc()
        if queued and self._webhook:
            self._on_queued()
        return ended_early

    # -- writing ------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        failures, delay = 0, RETRY_FIRST_S
        while True:
            await self._queued.wait()
            self._queued.clear()
            batch, self._queue = self._queue, []
            try:
                queued = await self._write(batch)
            except Exception as error:  # noqa: BLE001 - the database may come back: keep it all and retry
                failures += 1
                log.error("records.write_failed", error=repr(error), items=len(batch), failures=failures)
                if failures >= SPLIT_AFTER_FAILURES:
                    batch = await self._write_each(batch)
                self._queue[:0] = batch
                if self._queue:
                    self._queued.set()
                else:
                    self._written.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            failures, delay = 0, RETRY_FIRST_S
            if not self._queue:
                self._written.set()
            if queued:
                self._on_queued()
            await asyncio.sleep(self._coalesce_s)

    async def _write(self, batch: list[_Item]) -> int:
        """Write a batch in one transaction; returns how many webhooks it queued."""
        queued = 0
        async with writing(self.engine) as connection:
            for item in batch:
                if isinstance(item, _Start):
                    await self._mark_started(connection, item)
            rows = [row for item in batch if not isinstance(item, _Start) for row in item.rows]
            await records.write_events(connection, rows)
            for item in batch:
                if isinstance(item, _End):
                    await self._mark_started(connection, item.start)  # in case its start was never written
                    call_sid, webhook = item.start.call_sid, self._webhook
                    if await records.finish(connection, call_sid, item.reason, item.ended_at, webhook=webhook):
                        queued += webhook
        return queued

    async def _write_each(self, batch: list[_Item]) -> list[_Item]:
        """After repeated failures: if the database answers, write the items one by one and drop
        (and log) those that still fail. Returns what is left to retry."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - out of reach: nothing is dropped
            return batch
        for item in batch:
            try:
                if await self._write([item]):
                    self._on_queued()
            except Exception as error:  # noqa: BLE001
                call_sid = item.rows[0].call_sid if isinstance(item, _Events) else getattr(item, "call_sid", None)
                log.error("records.dropped", error=repr(error), kind=type(item).__name__, call_sid=call_sid)
        return []

    async def _mark_started(self, connection: AsyncConnection, start: _Start) -> None:
        await records.mark_started(
            connection, start.call_sid, start.direction, start.from_number, start.to_number,
            start.started_at, self.liveness.instance,
        )

    # -- finalising what nobody will end ------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            try:
                if finished := await self.sweep():
                    log.info("records.finalised", calls=finished)
            except Exception as error:  # noqa: BLE001 - try again next round
                log.error("records.sweep_failed", error=repr(error))
            await asyncio.sleep(_liveness.CONFIRM_S if self._second_look else SWEEP_S)

    async def sweep(self) -> int:
        """End the calls whose process died or whose stream never started. Returns how many."""
        await self.liveness.hold()
        async with self.engine.connect() as connection:
            rows = await records.unfinished(connection)
        now, dead, finished = _now(), dict[str, bool](), 0
        for row in rows:
            if row.call_sid in self._live or row.instance == self.liveness.instance:
                continue  # ours: running, or its end is queued
            if row.stream_started_at is None:
                reason = EndReason.NO_STREAM if now - row.created_at > NO_STREAM_AFTER else None
            elif row.instance is None:
                reason = EndReason.SERVICE_RESTART if now - row.stream_started_at > UNCLAIMED_AFTER else None
            else:
                if row.instance not in dead:
                    dead[row.instance] = await self.liveness.dead(row.instance)
                reason = EndReason.SERVICE_RESTART if dead[row.instance] else None
            if reason is None:
                continue
            if await self._finalise(row.call_sid, reason, row.stream_started_at or row.created_at):
                metrics.CALLS.labels(row.direction, reason).inc()
                finished += 1
        self._second_look = any(self.liveness.suspected(instance) for instance in dead)
        if finished and self._webhook:
            self._on_queued()
        return finished

    async def _finalise(self, call_sid: str, reason: EndReason, started_at: datetime) -> bool:
        async with writing(self.engine) as connection:
            # It ended after the last thing recorded of it: that moment, not now (a restart may be hours later).
            last = await connection.scalar(
                select(func.max(call_events.c.offset_ms)).where(call_events.c.call_sid == call_sid)
            )
            ended_at = started_at + timedelta(milliseconds=last or 0)
            ended = await records.finish(connection, call_sid, reason, ended_at, webhook=self._webhook)
        if ended:
            log.warning("records.finalised_call", call_sid=call_sid, reason=reason)
        return ended
