"""Migrations: a fresh database is brought to the current schema; SQLite on first start by itself,
PostgreSQL by `phonebot db upgrade`."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from phonebot import cli
from phonebot.business import DEFAULT_BUSINESS_FILE
from phonebot.settings import Settings
from phonebot.store import StoreNotReady, migrate, open_desk
from phonebot.store.engine import make_engine


async def test_a_fresh_database_is_upgraded_to_the_head(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert await migrate.current(engine) is None
        assert await migrate.upgrade(engine) == migrate.head()
        assert await migrate.upgrade(engine) == migrate.head()  # again: nothing to do
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        assert set(tables) == {"alembic_version", "bookings", "calls", "stream_tokens", "call_events", "webhook_outbox"}
    finally:
        await engine.dispose()


async def test_open_desk_makes_a_new_sqlite_file_ready(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/new/dir/phonebot.db", business_file=DEFAULT_BUSINESS_FILE
    )
    async with await open_desk(settings) as desk:
        assert desk.business.name == "Riverside Dental Practice"
        assert await migrate.current(desk.engine) == migrate.head()
    assert (tmp_path / "new" / "dir" / "phonebot.db").is_file()


async def test_open_desk_asks_for_db_upgrade_on_an_unmigrated_postgres(postgres_url: str) -> None:
    settings = Settings(database_url=postgres_url)
    with pytest.raises(StoreNotReady, match="run `phonebot db upgrade`"):
        await open_desk(settings)
    engine = make_engine(postgres_url)
    await migrate.upgrade(engine)
    await engine.dispose()
    desk = await open_desk(settings)
    await desk.close()


def test_db_upgrade_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "sqlite:///./phonebot.db")
    assert cli.main(["db", "upgrade"]) == 0
    assert f"is at schema revision {migrate.head()}" in capsys.readouterr().out
    assert (tmp_path / "phonebot.db").is_file()
