"""Alembic migrations, run by `phonebot.store.migrate` (no alembic.ini)."""
