"""Alembic, run from code: `phonebot db upgrade`, and a database made ready (or found not ready) on start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from phonebot.store.engine import exclusive, make_engine

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreNotReady(RuntimeError):
    """The database schema is behind this version of phonebot."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this version of phonebot knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None when it has never been migrated."""
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Apply every migration up to `revision`. Replicas running this at once take turns (the
    exclusive transaction), and each migration commits together with its version stamp."""
    async with exclusive(engine, "phonebot/migrations") as connection:
        await connection.run_sync(lambda sync: command.upgrade(_config(sync), revision))
    return await current(engine)


async def make_ready(engine: AsyncEngine) -> None:
    """Bring the database to the schema this version needs, or raise StoreNotReady saying how.

    A SQLite database is brought to the current schema on the spot (created if new): one file,
    one host, nothing to coordinate. A PostgreSQL database shared by replicas is migrated on
    purpose, with `phonebot db upgrade`; until then this raises StoreNotReady.
    """
    if engine.dialect.name == "sqlite":
        await upgrade(engine)
    elif (found := await current(engine)) != head():
        raise StoreNotReady(
            f"the database is at schema revision {found or 'none'}, phonebot needs {head()}: "
            "run `phonebot db upgrade`"
        )


async def open_database(url: str) -> AsyncEngine:
    """An engine for `url` with the schema ready (see `make_ready`); the caller disposes of it."""
    engine = make_engine(url)
    try:
        await make_ready(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine
