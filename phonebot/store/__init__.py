"""The database: bookings, calls and their stream tokens. SQLite by default, PostgreSQL for several replicas.

The service opens one engine (`migrate.open_database`) and shares it: `Desk` (the booking
tools' `ToolContext.bookings`), `CallStore` (calls and stream tokens). `open_desk(settings)` is a
desk with an engine of its own. `migrate.upgrade()` is `phonebot db upgrade`.
"""

from phonebot.store.calls import CallStore, StoredCall, StreamRefused
from phonebot.store.desk import Appointment, Desk, PlaceTaken, StoreUnavailable, UnknownBooking, open_desk
from phonebot.store.migrate import StoreNotReady

__all__ = [
    "Appointment",
    "CallStore",
    "Desk",
    "PlaceTaken",
    "StoreNotReady",
    "StoreUnavailable",
    "StoredCall",
    "StreamRefused",
    "UnknownBooking",
    "open_desk",
]
