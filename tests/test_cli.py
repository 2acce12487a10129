"""The smaller commands, run as a person runs them: `--version`, `db upgrade` against a database
that is not there."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from tests.command import closed_port, environment, run


def test_version(tmp_path: Path) -> None:
    done = run("--version", cwd=tmp_path, env=environment(tmp_path))
    assert (done.status, done.out) == (0, f"phonebot {version('phonebot')}\n")


def test_db_upgrade_against_a_database_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    env = environment(tmp_path, DATABASE_URL=f"postgres://phonebot:secret@127.0.0.1:{port}/phonebot")
    done = run("db", "upgrade", cwd=tmp_path, env=env)
    assert (done.status, done.out) == (1, "")
    assert done.err == (
        f"phonebot db upgrade: cannot reach postgresql+asyncpg://phonebot:***@127.0.0.1:{port}/phonebot: "
        "connection refused: nothing is listening there\n"
    )


def test_db_upgrade_says_where_the_sqlite_file_is(tmp_path: Path) -> None:
    done = run("db", "upgrade", cwd=tmp_path, env=environment(tmp_path))
    assert done.status == 0
    assert done.out.startswith(f"phonebot db upgrade: SQLite file {tmp_path}/phonebot.db is at schema revision ")
