"""Bookings in a database: SQLite by default, PostgreSQL for several replicas.

`open_desk(settings)` gives the `Desk` the booking tools use (`ToolContext.bookings`);
`await desk.close()` releases its connections. `migrate.upgrade()` is `phonebot db upgrade`.
"""

from phonebot.store.desk import Appointment, Desk, PlaceTaken, StoreNotReady, UnknownBooking, open_desk

__all__ = ["Appointment", "Desk", "PlaceTaken", "StoreNotReady", "UnknownBooking", "open_desk"]
