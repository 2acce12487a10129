"""Calls as their signed webhook (or phonebot itself) announced them, and their stream tokens.

A media stream URL carries a token that lets exactly one stream in, for exactly one call:
random, kept only as its sha256, single use, short-lived, and in the database so that any
replica can check it and single use holds across replicas. Claiming the token and marking the
call's one stream started happen in one transaction: of two streams, one gets in.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from phonebot.store.engine import exclusive
from phonebot.store.tables import calls, stream_tokens

KEEP_EXPIRED = timedelta(hours=1)  # expired tokens are kept this long, so a late stream is logged as "expired"
NUMBER_CHARS = 32  # the column's width; a long SIP address is clipped (it is never a bookable number)


@dataclass(frozen=True, slots=True)
class StoredCall:
    call_sid: str
    direction: str  # inbound | outbound | web
    from_number: str
    to_number: str
    created_at: datetime
    stream_started_at: datetime | None

    @classmethod
    def from_values(cls, values: Any) -> StoredCall:
        return cls(**{field.name: values[field.name] for field in fields(cls)})


class StreamRefused(Exception):
    """A stream may not start with this token. `reason` is for logs, never for the peer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NotClaimed(Exception):
    pass


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class CallStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, call_sid: str, direction: str, from_number: str, to_number: str) -> bool:
        """Record a call; False if it was already recorded (Twilio retried its webhook): kept as first said."""
        values = {
            "call_sid": call_sid,
            "direction": direction,
            "from_number": from_number[:NUMBER_CHARS],
            "to_number": to_number[:NUMBER_CHARS],
            "created_at": _now(),
            "stream_started_at": None,
        }
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(calls).values(values))
        except IntegrityError:
            return False
        return True

    async def get(self, call_sid: str) -> StoredCall | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(calls).where(calls.c.call_sid == call_sid))).first()
        return StoredCall.from_values(row._mapping) if row else None

    async def issue_token(self, call_sid: str | None, *, ttl_s: float) -> str:
        """A new token for the call's stream URL, good for `ttl_s` (minutes: the stream of an inbound
        call comes a second after its webhook; an outbound call's once it is answered). Without a
        call_sid (an outbound call Twilio has not named yet) it lets nothing in until `bind_token()`."""
        token = secrets.token_urlsafe(32)
        now = _now()
        async with self.engine.begin() as connection:
            await connection.execute(delete(stream_tokens).where(stream_tokens.c.expires_at < now - KEEP_EXPIRED))
            await connection.execute(
                insert(stream_tokens).values(
                    token_hash=token_hash(token), call_sid=call_sid, expires_at=now + timedelta(seconds=ttl_s)
                )
            )
        return token

    async def bind_token(self, token: str, call_sid: str) -> None:
        """Tie a token issued without a call to `call_sid`; once only. LookupError if that cannot be done."""
        query = (
            update(stream_tokens)
            .where(stream_tokens.c.token_hash == token_hash(token), stream_tokens.c.call_sid.is_(None))
            .values(call_sid=call_sid)
        )
        async with self.engine.begin() as connection:
            if (await connection.execute(query)).rowcount != 1:
                raise LookupError("no unbound stream token like that")

    async def claim_stream(self, token: str, call_sid: str) -> StoredCall:
        """Use the token for `call_sid`'s one stream, or raise StreamRefused saying why not."""
        digest, now = token_hash(token), _now()
        try:
            # One transaction (SQLite: the write lock; PostgreSQL: this call's advisory lock):
            # the token is used and the stream marked started together, or neither.
            async with exclusive(self.engine, f"stream/{call_sid}") as connection:
                return await _claim(connection, digest, call_sid, now)
        except _NotClaimed:
            pass
        raise StreamRefused(await self._refusal(digest, call_sid, now))

    async def _refusal(self, digest: str, call_sid: str, now: datetime) -> str:
        token_query = select(stream_tokens).where(stream_tokens.c.token_hash == digest)
        async with self.engine.connect() as connection:
            token = (await connection.execute(token_query)).first()
            call = (await connection.execute(select(calls).where(calls.c.call_sid == call_sid))).first()
        if token is None:
            return "unknown_token"
        if token.used_at is not None:
            return "token_used"
        if token.expires_at <= now:
            return "token_expired"
        if token.call_sid != call_sid:
            return "other_call"
        if call is None:
            return "unknown_call"
        return "stream_already_started"


async def _claim(connection: AsyncConnection, digest: str, call_sid: str, now: datetime) -> StoredCall:
    used = await connection.execute(
        update(stream_tokens)
        .where(
            stream_tokens.c.token_hash == digest,
            stream_tokens.c.call_sid == call_sid,
            stream_tokens.c.used_at.is_(None),
            stream_tokens.c.expires_at > now,
        )
        .values(used_at=now)
    )
    if used.rowcount != 1:
        raise _NotClaimed
    started = await connection.execute(
        update(calls)
        .where(calls.c.call_sid == call_sid, calls.c.stream_started_at.is_(None))
        .values(stream_started_at=now)
        .returning(*calls.c)
    )
    row = started.first()
    if row is None:
        raise _NotClaimed  # the token's use is rolled back with it
    return StoredCall.from_values(row._mapping)
