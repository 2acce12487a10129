"""The tables. Alembic migrations (`migrations/versions/`) create them; this is what the code queries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

metadata = MetaData()


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones and would hand back naive values,
    so UTC is written there naive and made aware again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


bookings = Table(
    "bookings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reference", String(12), nullable=False, unique=True),
    Column("business", String(100), nullable=False),
    Column("service", String(200), nullable=False),
    # The place a booking holds is [starts_at, ends_at); ends_at is kept rather than derived so
    # that changing a service's duration later does not move existing bookings.
    Column("starts_at", UtcDateTime, nullable=False),
    Column("ends_at", UtcDateTime, nullable=False),
    Column("customer_name", String(200), nullable=False),
    Column("phone", String(32), nullable=False, default=""),  # "+" and digits only
    Column("notes", Text, nullable=False, default=""),
    Column("status", String(16), nullable=False, default="booked"),  # booked | cancelled
    Column("call_sid", String(64), nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_bookings_business_starts_at", "business", "starts_at"),
    Index("ix_bookings_phone", "phone"),
)


# A call as the signed webhook (or the API that started it) described it. The stream's own `start`
# message is never trusted for these: only what Twilio signed, or what phonebot itself created.
calls = Table(
    "calls",
    metadata,
    Column("call_sid", String(64), primary_key=True),
    Column("direction", String(16), nullable=False),  # inbound | outbound | web
    Column("from_number", String(32), nullable=False),
    Column("to_number", String(32), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("stream_started_at", UtcDateTime, nullable=True),  # set once: a call has one stream
    # The rest of the record (0003).
    Column("status", String(16), nullable=True),  # Twilio's CallStatus, as last known
    Column("answered_by", String(16), nullable=True),  # human | machine | unknown
    Column("instructions", Text, nullable=True),
    Column("metadata", Text, nullable=True),  # JSON object
    Column("ended_at", UtcDateTime, nullable=True),
    Column("end_reason", String(32), nullable=True),  # phonebot.call.record.EndReason
    Column("instance", String(64), nullable=True),  # the process that runs (ran) the call
    Index("ix_calls_created_at", "created_at", "call_sid"),
    Index("ix_calls_ended_at", "ended_at"),
    Index("ix_calls_from_number", "from_number"),
    Index("ix_calls_to_number", "to_number"),
)

# The per-call secret in a stream URL, kept only as its sha256 (a database leak opens no stream).
stream_tokens = Table(
    "stream_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("call_sid", String(64), nullable=True),  # an outbound call's is bound once Twilio names the call
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime, nullable=True),
    Index("ix_stream_tokens_expires_at", "expires_at"),
)

# A call's timeline: turns, tool calls and digits, numbered in order, each written (and rewritten,
# as a turn grows or is cut short) as the call goes.
call_events = Table(
    "call_events",
    metadata,
    Column("call_sid", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(8), nullable=False),  # turn | tool | dtmf
    Column("offset_ms", Integer, nullable=False),
    Column("data", Text, nullable=False),  # JSON: the entry's own fields
    PrimaryKeyConstraint("call_sid", "seq"),
)

# Webhook events waiting to be delivered, delivered, or given up on (kept, never deleted).
# `id` is the webhook-id of every attempt. A replica works an event while it holds its lease.
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("call_sid", String(64), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("body", Text, nullable=False),  # the exact JSON that is signed and sent
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_attempt_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("lease", String(32), nullable=True),  # the claim working it now ...
    Column("leased_by", String(64), nullable=True),  # ... by which process (see store/liveness.py) ...
    Column("lease_until", UtcDateTime, nullable=True),  # ... until when at the latest
    UniqueConstraint("call_sid", "event_type", name="uq_webhook_outbox_call_event"),
    Index("ix_webhook_outbox_due", "status", "next_attempt_at"),
)
