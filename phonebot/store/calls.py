"""Calls as their signed webhook (or phonebot itself) announced them, and their stream tokens.

A media stream URL carries a token that lets exactly one stream in, for exactly one call:
random, kept only as its sha256, single use, short-lived, and in the database so that any
replica can check it and single use holds across replicas. Claiming the token and marking the
call's one stream started happen in one transaction: of two streams, one gets in. The claim also
says which process runs the call, so that a replica that took the call's webhook can tell its
stream went elsewhere (`gone_elsewhere`).

An outbound call's token is issued before Twilio names the call and bound to its CallSid once
Twilio has (`add_outbound`, with the call's row, in one transaction). A callee can answer before
that bind is written (a fast pickup, a slow response): its stream waits for the bind a few
seconds (`BIND_WAIT_S`) rather than being refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from phonebot.store.engine import exclusive
from phonebot.store.records import ENDED
from phonebot.store.tables import calls, stream_tokens

KEEP_EXPIRED = timedelta(hours=1)  # expired tokens are kept this long, so a late stream is logged as "expired"
NUMBER_CHARS = 32  # the column's width; a long SIP address is clipped (it is never a bookable number)
BIND_WAIT_S = 5.0  # a stream whose outbound token is not bound yet waits this long for the bind
BIND_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class StoredCall:
    call_sid: str
    direction: str  # inbound | outbound | web
    from_number: str
    to_number: str
    created_at: datetime
    stream_started_at: datetime | None
    instructions: str | None = None  # an outbound call's own, added to the bot's for this call
    metadata: str | None = None  # the JSON object the API was given with it

    @classmethod
    def from_values(cls, values: Any) -> StoredCall:
        return cls(**{field.name: values[field.name] for field in fields(cls)})

    @property
    def metadata_object(self) -> dict[str, Any]:
        return dict(json.loads(self.metadata)) if self.metadata else {}


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
    def __init__(self, engine: AsyncEngine, instance: str | None = None, token_tag: str = "") -> None:
        """`instance`: this process (`store/liveness.py`), written on the streams it claims.
        `token_tag` ends every token issued here: under `serve --workers N`, which worker the call's
        stream belongs to (`phonebot.siblings`); part of the token, so hashed and checked with it."""
        self.engine = engine
        self.instance = instance
        self.token_tag = token_tag

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

    async def add_outbound(
        self,
        token: str,
        call_sid: str,
        from_number: str,
        to_number: str,
        *,
        status: str,
        instructions: str | None,
        metadata: Mapping[str, Any],
    ) -> None:
        """Record an outbound call Twilio has just created, and bind its stream token to it: one
        transaction, so a stream that gets in finds everything it needs. LookupError if the token
        cannot be bound (revoked, or bound already)."""
        values = {
            "call_sid": call_sid,
            "direction": "outbound",
            "from_number": from_number[:NUMBER_CHARS],
            "to_number": to_number[:NUMBER_CHARS],
            "created_at": _now(),
            "stream_started_at": None,
            "status": status,
            "instructions": instructions,
            "metadata": json.dumps(dict(metadata), separators=(",", ":"), ensure_ascii=False) if metadata else None,
        }
        bind = (
            update(stream_tokens)
            .where(stream_tokens.c.token_hash == token_hash(token), stream_tokens.c.call_sid.is_(None))
            .values(call_sid=call_sid)
        )
        async with self.engine.begin() as connection:
            await connection.execute(insert(calls).values(values))
            if (await connection.execute(bind)).rowcount != 1:
                raise LookupError("no unbound stream token like that")  # the row goes with the rollback

    async def revoke_token(self, token: str) -> None:
        """Forget a token whose call was never placed (or may not have been): no stream gets in with it."""
        async with self.engine.begin() as connection:
            await connection.execute(delete(stream_tokens).where(stream_tokens.c.token_hash == token_hash(token)))

    async def answered_by(self, call_sid: str) -> str | None:
        """Who answered the call, as answering-machine detection said (None: not said yet)."""
        async with self.engine.connect() as connection:
            query = select(calls.c.answered_by).where(calls.c.call_sid == call_sid)
            return (await connection.execute(query)).scalar_one_or_none()

    async def set_answered_by(self, call_sid: str, answered_by: str) -> bool:
        """Record who answered; False if there is no such call."""
        query = update(calls).where(calls.c.call_sid == call_sid).values(answered_by=answered_by)
        async with self.engine.begin() as connection:
            return (await connection.execute(query)).rowcount == 1

    async def get(self, call_sid: str) -> StoredCall | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(calls).where(calls.c.call_sid == call_sid))).first()
        return StoredCall.from_values(row._mapping) if row else None

    async def issue_token(self, call_sid: str | None, *, ttl_s: float) -> str:
        """A new token for the call's stream URL, good for `ttl_s` (minutes: the stream of an inbound
        call comes a second after its webhook; an outbound call's once it is answered). Without a
        call_sid (an outbound call Twilio has not named yet) it lets nothing in until `bind_token()`."""
        token = secrets.token_urlsafe(32) + self.token_tag
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

    async def claim_stream(self, token: str, call_sid: str, *, bind_wait_s: float = BIND_WAIT_S) -> StoredCall:
        """Use the token for `call_sid`'s one stream, or raise StreamRefused saying why not. A token
        not bound yet (an outbound call Twilio has just named) is waited for, up to `bind_wait_s`."""
        deadline, changes = time.monotonic() + bind_wait_s, 0
        while True:
            digest, now = token_hash(token), _now()
            try:
                # One transaction (SQLite: the write lock; PostgreSQL: this call's advisory lock):
                # the token is used and the stream marked started together, or neither.
                async with exclusive(self.engine, f"stream/{call_sid}") as connection:
                    return await _claim(connection, digest, call_sid, now, self.instance)
            except _NotClaimed:
                pass
            reason = await self._refusal(digest, call_sid, now)
            if reason == "changed" and changes < 2:  # bound between the claim and the look: claim again
                changes += 1
                continue
            if reason != "token_unbound" or time.monotonic() >= deadline:
                raise StreamRefused(reason)
            await asyncio.sleep(BIND_POLL_S)

    async def gone_elsewhere(self, call_sids: Collection[str]) -> set[str]:
        """Of these calls, announced to this process and not streaming here, those whose stream
        another process has claimed, and those that ended (Twilio's final status) before any stream."""
        query = select(calls.c.call_sid).where(
            calls.c.call_sid.in_(list(call_sids)),
            or_(
                and_(calls.c.stream_started_at.is_not(None), calls.c.instance != self.instance),
                and_(calls.c.stream_started_at.is_(None), calls.c.status.in_(ENDED)),
            ),
        )
        async with self.engine.connect() as connection:
            return set((await connection.scalars(query)).all())

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
        if token.call_sid is None:
            return "token_unbound"
        if token.call_sid != call_sid:
            return "other_call"
        if call is None:
            return "unknown_call"
        if call.stream_started_at is not None:
            return "stream_already_started"
        return "changed"  # it could be claimed now: it was bound after the claim was tried


async def _claim(
    connection: AsyncConnection, digest: str, call_sid: str, now: datetime, instance: str | None
) -> StoredCall:
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
        .values(stream_started_at=now, instance=instance)
        .returning(*calls.c)
    )
    row = started.first()
    if row is None:
        raise _NotClaimed  # the token's use is rolled back with it
    return StoredCall.from_values(row._mapping)
