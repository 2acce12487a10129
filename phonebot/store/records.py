"""Call records in the database: the call's row, its timeline, and the finished-call report.

A call's row is made by its signed webhook (`store/calls.py`); this adds what happens to it:
who runs it (`instance`), Twilio's status, and at the end the end reason, with the timeline
(`call_events`) written as the call goes. `finish()` ends a record exactly once, and in the same
transaction puts its `call.completed` report in the webhook outbox: a record that is finished has
its webhook queued, or neither happened.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from phonebot.call.record import Digit, EndReason, Entry, ToolRecord, Turn
from phonebot.store.tables import bookings, call_events, calls, webhook_outbox

CALL_COMPLETED = "call.completed"
# Twilio's CallStatus values in the order a call goes through them; a callback that arrives late
# (they may) never moves a call back.
STATUS_RANK = {"queued": 0, "initiated": 0, "ringing": 1, "in-progress": 2}
ENDED = ("completed", "busy", "failed", "no-answer", "canceled")


@dataclass(frozen=True, slots=True)
class EventRow:
    """A timeline entry as stored: its kind and its own fields as JSON."""

    call_sid: str
    seq: int
    kind: str
    offset_ms: int
    data: str

    @classmethod
    def of(cls, call_sid: str, entry: Entry) -> EventRow:
        match entry:
            case Turn(role=role, text=text, interrupted=interrupted):
                kind, data = "turn", {"role": role, "text": text, "interrupted": interrupted}
            case ToolRecord(name=name, args=args, result=result, ok=ok):
                kind, data = "tool", {"name": name, "args": args, "result": result, "ok": ok}
            case Digit(digit=digit):
                kind, data = "dtmf", {"digit": digit}
        return cls(call_sid, entry.seq, kind, entry.offset_ms, to_json(data))


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment is not None else None


def _upsert(connection: AsyncConnection) -> Any:
    return (sqlite.insert if connection.dialect.name == "sqlite" else postgresql.insert)


# -- as the call goes ---------------------------------------------------------------------------


async def mark_started(
    connection: AsyncConnection, call_sid: str, direction: str, from_number: str, to_number: str,
    started_at: datetime, instance: str,
) -> None:
    """This process runs the call now. The row is made if the webhook's never was (then what the
    stream said stands in for it); what the webhook said is never overwritten."""
    statement = _upsert(connection)(calls).values(
        call_sid=call_sid, direction=direction, from_number=from_number[:32], to_number=to_number[:32],
        created_at=started_at, stream_started_at=started_at, status="in-progress", instance=instance,
    )
    not_yet = or_(calls.c.status.is_(None), calls.c.status.in_(list(STATUS_RANK)))
    statement = statement.on_conflict_do_update(
        index_elements=[calls.c.call_sid],
        set_={
            "instance": statement.excluded.instance,
            "stream_started_at": case(
                (calls.c.stream_started_at.is_(None), statement.excluded.stream_started_at),
                else_=calls.c.stream_started_at,
            ),
            "status": case((not_yet, "in-progress"), else_=calls.c.status),
        },
    )
    await connection.execute(statement)


async def write_events(connection: AsyncConnection, rows: Iterable[EventRow]) -> None:
    """Write timeline entries; an entry written before (same call, same seq) is replaced."""
    latest = {(row.call_sid, row.seq): row for row in rows}  # one version each per statement
    if not latest:
        return
    statement = _upsert(connection)(call_events)
    statement = statement.on_conflict_do_update(
        index_elements=[call_events.c.call_sid, call_events.c.seq],
        set_={column: statement.excluded[column] for column in ("kind", "offset_ms", "data")},
    )
    await connection.execute(
        statement,
        [
            {"call_sid": r.call_sid, "seq": r.seq, "kind": r.kind, "offset_ms": r.offset_ms, "data": r.data}
            for r in latest.values()
        ],
    )


async def finish(
    connection: AsyncConnection, call_sid: str, reason: EndReason, ended_at: datetime, *,
    webhook: bool, status: str = "completed",
) -> bool:
    """End the record, and with `webhook` queue its report. False if it had ended already."""
    ended = await connection.execute(
        update(calls)
        .where(calls.c.call_sid == call_sid, calls.c.ended_at.is_(None))
        .values(
            ended_at=ended_at,
            end_reason=str(reason),
            status=case((calls.c.status.in_(ENDED), calls.c.status), else_=status),
        )
    )
    if ended.rowcount != 1:
        return False
    if not webhook:
        return True
    report = await load_report(connection, call_sid)
    assert report is not None
    event_id = "msg_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()
    body = to_json({"type": CALL_COMPLETED, "timestamp": iso(ended_at), "data": report})
    await connection.execute(
        insert(webhook_outbox).values(
            id=event_id, call_sid=call_sid, event_type=CALL_COMPLETED, body=body, status="pending",
            attempts=0, created_at=ended_at, next_attempt_at=ended_at,
        )
    )
    return True


async def update_status(
    connection: AsyncConnection, call_sid: str, status: str, answered_by: str | None
) -> Mapping[Any, Any] | None:
    """Twilio's word on the call's status (never moving it back). Returns the row as it was, or None."""
    row = (await connection.execute(select(calls).where(calls.c.call_sid == call_sid))).first()
    if row is None:
        return None
    values: dict[str, Any] = {}
    if row.status not in ENDED and (status in ENDED or STATUS_RANK.get(status, -1) >= STATUS_RANK.get(row.status, -1)):
        values["status"] = status
    if answered_by is not None:
        values["answered_by"] = answered_by
    if values:
        await connection.execute(update(calls).where(calls.c.call_sid == call_sid).values(**values))
    return row._mapping


async def unfinished(connection: AsyncConnection) -> Sequence[Any]:
    """Rows of calls not ended yet: running somewhere, or left behind by a process that died."""
    query = select(calls.c.call_sid, calls.c.direction, calls.c.instance, calls.c.created_at, calls.c.stream_started_at)
    return (await connection.execute(query.where(calls.c.ended_at.is_(None)))).all()


# -- reading -----------------------------------------------------------------------------------


async def load_report(connection: AsyncConnection, call_sid: str) -> dict[str, Any] | None:
    """The call as the finished-call webhook and `GET /calls/{call_sid}` show it."""
    row = (await connection.execute(select(calls).where(calls.c.call_sid == call_sid))).first()
    if row is None:
        return None
    events = await connection.execute(
        select(call_events).where(call_events.c.call_sid == call_sid).order_by(call_events.c.seq)
    )
    booked = await connection.execute(
        select(bookings).where(bookings.c.call_sid == call_sid).order_by(bookings.c.created_at)
    )
    report = summary(row._mapping)
    report.update(turns=[], tool_calls=[], dtmf=[], bookings=[_booking(b._mapping) for b in booked])
    for event in events:
        data, offset = json.loads(event.data), event.offset_ms
        if event.kind == "turn":
            report["turns"].append({**data, "offset_ms": offset})
        elif event.kind == "tool":
            report["tool_calls"].append({**data, "offset_ms": offset})
        elif event.kind == "dtmf":
            report["dtmf"].append({**data, "offset_ms": offset})
    return report


def summary(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A call's row as the outside sees it (the report without its timeline)."""
    started = row["stream_started_at"] or row["created_at"]
    ended = row["ended_at"]
    return {
        "call_sid": row["call_sid"],
        "direction": row["direction"],
        "from": row["from_number"],
        "to": row["to_number"],
        "status": row["status"],
        "started_at": iso(started),
        "ended_at": iso(ended),
        "duration_s": round((ended - started).total_seconds(), 3) if ended and row["stream_started_at"] else 0.0,
        "end_reason": row["end_reason"],
        "answered_by": row["answered_by"] or "unknown",
        "metadata": json.loads(row["metadata"]) if row["metadata"] else {},
    }


def _booking(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "reference": row["reference"],
        "service": row["service"],
        "starts_at": iso(row["starts_at"]),
        "ends_at": iso(row["ends_at"]),
        "customer_name": row["customer_name"],
        "status": row["status"],
    }


def number_matches(number: str) -> Any:
    """Calls from or to `number` (E.164 exactly, or without "+" by its last digits)."""
    digits = "".join(ch for ch in number if ch.isdigit())
    if number.strip().startswith("+"):
        wanted = "+" + digits
        return or_(calls.c.from_number == wanted, calls.c.to_number == wanted)
    tail = "%" + digits[-9:]
    return or_(calls.c.from_number.like(tail), calls.c.to_number.like(tail))


def page_after(created_at: datetime, call_sid: str) -> Any:
    """Keyset paging, newest first: rows that come after (created_at, call_sid)."""
    return or_(calls.c.created_at < created_at, and_(calls.c.created_at == created_at, calls.c.call_sid < call_sid))
