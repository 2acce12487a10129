"""The webhook outbox: events waiting to be delivered, and who is delivering each one now.

An event is worked by one process at a time: `claim()` gives it a lease (a random token, the
process, a time), and an attempt's outcome is written only by the holder of that lease. On
PostgreSQL the claim skips rows another replica is claiming at the same moment (`FOR UPDATE SKIP
LOCKED`); on SQLite the claim is one write under the database's lock. The lease of a process that
died mid-delivery is taken over as soon as its death is known (`store/liveness.py`), or once the
lease runs out: delivered at least once, never lost.
Events are never deleted: `delivered` and `failed` ones stay to be seen in the API.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from phonebot.store.engine import writing
from phonebot.store.tables import webhook_outbox as outbox

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    id: str  # the webhook-id of every attempt
    call_sid: str
    body: str
    attempts: int  # including the one this claim is for
    created_at: datetime
    lease: str
    attempted_at: datetime  # when this attempt was claimed (its last_attempt_at)


class Outbox:
    def __init__(self, engine: AsyncEngine, instance: str) -> None:
        self.engine = engine
        self.instance = instance  # this process, as its leases name it

    async def next_due(self) -> datetime | None:
        """When the next pending event may be claimed (None: there is none). A read, no lock."""
        query = (
            select(outbox.c.next_attempt_at, outbox.c.lease_until)
            .where(outbox.c.status == PENDING)
            .order_by(outbox.c.next_attempt_at)
            .limit(20)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return min((max(row.next_attempt_at, row.lease_until or row.next_attempt_at) for row in rows), default=None)

    async def holders(self, now: datetime) -> list[str]:
        """The processes holding leases on pending events now, but this one."""
        query = select(outbox.c.leased_by).distinct().where(
            outbox.c.status == PENDING, outbox.c.lease_until > now, outbox.c.leased_by != self.instance
        )
        async with self.engine.connect() as connection:
            return [row.leased_by for row in await connection.execute(query)]

    async def claim(self, now: datetime, limit: int, lease_s: float, dead: Sequence[str] = ()) -> list[OutboxEvent]:
        """Take up to `limit` due events for `lease_s`, counting the attempt now (a process that
        dies mid-attempt has made it). Leases held by the `dead` processes are taken over."""
        lease = secrets.token_hex(8)
        free = [outbox.c.lease_until.is_(None), outbox.c.lease_until <= now]
        if dead:
            free.append(outbox.c.leased_by.in_(list(dead)))
        due = (
            select(outbox.c.id)
            .where(outbox.c.status == PENDING, outbox.c.next_attempt_at <= now, or_(*free))
            .order_by(outbox.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(outbox)
            .where(outbox.c.id.in_(due.scalar_subquery()))
            .values(
                lease=lease,
                leased_by=self.instance,
                lease_until=now + timedelta(seconds=lease_s),
                attempts=outbox.c.attempts + 1,
                last_attempt_at=now,
            )
            .returning(outbox.c.id, outbox.c.call_sid, outbox.c.body, outbox.c.attempts, outbox.c.created_at)
        )
        async with writing(self.engine) as connection:
            rows = (await connection.execute(claim)).all()
        return [OutboxEvent(row.id, row.call_sid, row.body, row.attempts, row.created_at, lease, now) for row in rows]

    async def delivered(self, event: OutboxEvent, now: datetime) -> None:
        await self._settle(event, status=DELIVERED, delivered_at=now, last_error=None)

    async def retry(self, event: OutboxEvent, at: datetime, error: str) -> None:
        await self._settle(event, next_attempt_at=at, last_error=error)

    async def failed(self, event: OutboxEvent, error: str) -> None:
        await self._settle(event, status=FAILED, last_error=error)

    async def _settle(self, event: OutboxEvent, **values: object) -> None:
        """Write an attempt's outcome, if the lease is still ours (else another process took over)."""
        query = (
            update(outbox)
            .where(outbox.c.id == event.id, outbox.c.lease == event.lease)
            .values(lease=None, leased_by=None, lease_until=None, **values)
        )
        async with writing(self.engine) as connection:
            await connection.execute(query)
