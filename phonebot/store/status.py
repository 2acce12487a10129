"""The database in plain words: where it is, whether it answers, and at which schema
(`phonebot serve`'s banner, `phonebot doctor --online`, `phonebot db upgrade`, /readyz's reasons)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from phonebot.store import migrate
from phonebot.store.engine import make_engine

CONNECT_TIMEOUT_S = 10.0
# What connecting to a database can raise: the driver's errors, the network's, and our timeout.
UNREACHABLE = (SQLAlchemyError, OSError, TimeoutError)


def where(url: str) -> str:
    """The database as a person finds it: a SQLite file's full path, or the URL without its password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return f"SQLite file {Path(parsed.database).resolve()}"
    return parsed.render_as_string(hide_password=True)


def describe(error: BaseException) -> str:
    """A database error in one line, without a traceback."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: nothing is listening there"
    if isinstance(error, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
    if isinstance(error, DBAPIError) and error.orig is not None:
        text = str(error.orig)
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": {error.filename}" if error.filename else "")
    else:
        text = str(error) or type(error).__name__
    return text.strip().splitlines()[0]


async def check(url: str) -> tuple[bool, str]:
    """(holds, what was found): the database connects and is at the latest migration. A SQLite
    file may be behind, or not made yet: `serve` creates and migrates it on start."""
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and not await asyncio.to_thread(Path(parsed.database).exists):
        return _new_sqlite_file(Path(parsed.database))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            engine = make_engine(url)
            try:
                found = await migrate.current(engine)
            finally:
                await engine.dispose()
    except UNREACHABLE as error:
        return False, f"cannot reach {where(url)}: {describe(error)}"
    latest, at = migrate.head(), f"{where(url)} is at schema revision {found or 'none'}"
    if found == latest:
        return True, f"{at}, the latest"
    if sqlite:
        return True, f"{at}; `serve` brings it to {latest} on start"
    return False, f"{at}, phonebot needs {latest}: run `phonebot db upgrade`"


def _new_sqlite_file(path: Path) -> tuple[bool, str]:
    parent = next((folder for folder in path.resolve().parents if folder.exists()), Path("/"))
    if not os.access(parent, os.W_OK):
        return False, f"SQLite file {path.resolve()} does not exist, and {parent} is not writable to create it"
    return True, f"SQLite file {path.resolve()} does not exist yet; `serve` creates it on start"
