"""The booking desk: the business plus its bookings in the database, and the only writer of them.

Every write that takes a place (`book`, `move`) checks capacity and writes inside one
`exclusive()` transaction for the business day (see `engine.py`), so two callers can never
both get the last place. Times in and out are aware UTC; the tools convert to local time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy import and_, insert, not_, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from phonebot.business import Business, Service, load_business, peak_overlap
from phonebot.store import migrate
from phonebot.store.engine import exclusive
from phonebot.store.reference import new_reference, normalize
from phonebot.store.tables import bookings

if TYPE_CHECKING:
    from phonebot.settings import Settings

BOOKED, CANCELLED = "booked", "cancelled"
PHONE_TAIL_DIGITS = 9  # "07700 900123" finds "+447700900123": national and E.164 share the tail
_REFERENCE_TRIES = 5


class PlaceTaken(Exception):
    """Capacity is reached at that time."""


class StoreUnavailable(Exception):
    """The database could not be reached, or did not answer in time (see engine.DB_TIMEOUT_S)."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reaching(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """Driver errors (locked, timed out, connection refused) as `StoreUnavailable`: the tools need
    to know that the diary could not be reached, not which driver said so."""

    @functools.wraps(method)
    async def reach(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except IntegrityError:
            raise
        except (DBAPIError, PoolTimeout, OSError, TimeoutError) as error:
            raise StoreUnavailable(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from error

    return reach


class UnknownBooking(Exception):
    """No booked (not cancelled) appointment has that reference."""


@dataclass(frozen=True, slots=True)
class Appointment:
    reference: str
    service: str
    starts_at: datetime  # aware UTC
    ends_at: datetime  # aware UTC; the place is held for [starts_at, ends_at)
    customer_name: str
    phone: str
    notes: str
    status: str  # booked | cancelled
    call_sid: str

    @classmethod
    def from_values(cls, values: Mapping[Any, Any]) -> Appointment:
        return cls(**{field.name: values[field.name] for field in fields(cls)})


def clean_phone(phone: str) -> str:
    """A phone number as stored and compared: a leading "+" if given, then digits only."""
    digits = re.sub(r"\D", "", phone)
    return "+" + digits if phone.strip().startswith("+") and digits else digits


class Desk:
    def __init__(self, business: Business, engine: AsyncEngine) -> None:
        self.business = business
        self.engine = engine

    async def close(self) -> None:
        """Dispose of the engine: only for a desk that has one of its own (`open_desk`)."""
        await self.engine.dispose()

    async def __aenter__(self) -> Desk:
        return self

    async def __aexit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    # -- reading ---------------------------------------------------------------------------

    @_reaching
    async def busy(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """The places held by bookings that overlap [start, end)."""
        async with self.engine.connect() as connection:
            return await self._busy(connection, start, end)

    @_reaching
    async def get(self, reference: str) -> Appointment | None:
        """The appointment with this reference, booked or cancelled, or None."""
        query = select(bookings).where(
            bookings.c.reference == normalize(reference), bookings.c.business == self.business.key
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return Appointment.from_values(row._mapping) if row else None

    @_reaching
    async def upcoming(self, phone: str, now: datetime, limit: int = 5) -> list[Appointment]:
        """Booked appointments from `now` on for this phone number, soonest first.

        Two numbers in E.164 ("+" first) must be equal; when either is written as callers say
        them (a trunk 0, no country code), they match when they end in the same digits.
        """
        wanted = clean_phone(phone)
        same_tail = bookings.c.phone.like("%" + wanted[-PHONE_TAIL_DIGITS:])
        matches = (
            or_(bookings.c.phone == wanted, and_(not_(bookings.c.phone.like("+%")), same_tail))
            if wanted.startswith("+")
            else same_tail
        )
        query = (
            select(bookings)
            .where(
                bookings.c.business == self.business.key,
                bookings.c.status == BOOKED,
                bookings.c.starts_at >= now,
                matches,
            )
            .order_by(bookings.c.starts_at)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return [Appointment.from_values(row._mapping) for row in await connection.execute(query)]

    # -- writing ---------------------------------------------------------------------------

    @_reaching
    async def book(
        self,
        service: Service,
        start: datetime,
        *,
        customer_name: str,
        phone: str,
        notes: str,
        call_sid: str,
        now: datetime,
    ) -> Appointment:
        """Take a place for `service` from `start`, or raise PlaceTaken if capacity is reached."""
        start = start.astimezone(UTC)
        end = start + service.duration
        for _ in range(_REFERENCE_TRIES):
            values = {
                "reference": new_reference(),
                "business": self.business.key,
                "service": service.name,
                "starts_at": start,
                "ends_at": end,
                "customer_name": customer_name,
                "phone": clean_phone(phone),
                "notes": notes,
                "status": BOOKED,
                "call_sid": call_sid,
                "created_at": now,
                "updated_at": now,
            }
            try:
                async with exclusive(self.engine, self._lock(start)) as connection:
                    await self._ensure_room(connection, start, end)
                    await connection.execute(insert(bookings).values(values))
                return Appointment.from_values(values)
            except IntegrityError:
                continue  # the fresh reference was already taken: draw another
        raise RuntimeError("could not draw an unused booking reference")

    @_reaching
    async def move(self, reference: str, start: datetime, now: datetime) -> Appointment:
        """Move a booked appointment to `start`, keeping its length; PlaceTaken if it does not fit.
        The appointment's own current place does not count against it."""
        start = start.astimezone(UTC)
        async with exclusive(self.engine, self._lock(start)) as connection:
            # FOR UPDATE: a cancel or another move of the same booking waits for this one
            # (PostgreSQL; SQLite's write lock already serializes them).
            query = select(bookings).where(*self._booked(reference)).with_for_update()
            row = (await connection.execute(query)).first()
            if row is None:
                raise UnknownBooking(reference)
            end = start + (row.ends_at - row.starts_at)
            await self._ensure_room(connection, start, end, excluding=row.id)
            await connection.execute(
                update(bookings)
                .where(bookings.c.id == row.id)
                .values(starts_at=start, ends_at=end, updated_at=now)
            )
        return Appointment.from_values({**row._mapping, "starts_at": start, "ends_at": end})

    @_reaching
    async def cancel(self, reference: str, now: datetime) -> Appointment:
        """Cancel a booked appointment, freeing its place; UnknownBooking if none is booked."""
        async with self.engine.begin() as connection:
            # The status test in the UPDATE makes it atomic: of two cancels, one wins.
            result = await connection.execute(
                update(bookings)
                .where(*self._booked(reference))
                .values(status=CANCELLED, updated_at=now)
                .returning(*bookings.c)
            )
            row = result.first()
        if row is None:
            raise UnknownBooking(reference)
        return Appointment.from_values(row._mapping)

    # -- inside a transaction ---------------------------------------------------------------

    def _lock(self, start: datetime) -> str:
        # Bookings never cross midnight (they fit inside one day's opening hours), so the
        # business's local day is the unit of contention.
        return f"{self.business.key}/{self.business.local_date(start).isoformat()}"

    def _booked(self, reference: str) -> tuple[Any, ...]:
        return (
            bookings.c.reference == normalize(reference),
            bookings.c.business == self.business.key,
            bookings.c.status == BOOKED,
        )

    async def _busy(
        self, connection: AsyncConnection, start: datetime, end: datetime, excluding: int | None = None
    ) -> list[tuple[datetime, datetime]]:
        query = select(bookings.c.starts_at, bookings.c.ends_at).where(
            bookings.c.business == self.business.key,
            bookings.c.status == BOOKED,
            and_(bookings.c.starts_at < end, bookings.c.ends_at > start),
        )
        if excluding is not None:
            query = query.where(bookings.c.id != excluding)
        return [(row.starts_at, row.ends_at) for row in await connection.execute(query)]

    async def _ensure_room(
        self, connection: AsyncConnection, start: datetime, end: datetime, excluding: int | None = None
    ) -> None:
        busy = await self._busy(connection, start, end, excluding)
        if peak_overlap(busy, start, end) >= self.business.capacity:
            raise PlaceTaken(start)


async def open_desk(settings: Settings) -> Desk:
    """A desk with a database engine of its own (closed with it), the schema ready.

    The service shares one engine between the desk and everything else (see `phonebot.app`);
    this is for code that needs the desk alone.
    """
    business = load_business(settings.business_file)
    return Desk(business, await migrate.open_database(settings.database_url))
