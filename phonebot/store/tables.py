"""The tables. Alembic migrations (`migrations/versions/`) create them; this is what the code queries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, Dialect, Index, Integer, MetaData, String, Table, Text, TypeDecorator

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
