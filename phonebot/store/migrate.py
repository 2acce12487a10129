"""Alembic, run from code: `phonebot db upgrade`, and a fresh SQLite file made ready on start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from phonebot.store.engine import exclusive

MIGRATIONS = Path(__file__).parent / "migrations"


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
