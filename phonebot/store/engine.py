"""The database engine, and the one kind of transaction that may take a place: `exclusive()`.

No double booking rests on one rule: a booking is checked and written inside `exclusive()`,
which lets no other writer for the same business day run beside it, on any replica:

- SQLite: `BEGIN IMMEDIATE` takes the database's write lock when the transaction starts,
  before the check reads anything, so a second writer waits (busy timeout) and then reads
  what the first one wrote. Without it, sqlite3 would begin lazily at the first INSERT, and
  two writers could both check, both see a free place, and both book it.
- PostgreSQL: `pg_advisory_xact_lock(business/day)` as the transaction's first statement.
  Writers for the same day queue on the lock, which is released at commit; under READ
  COMMITTED each statement after it sees everything committed before it. Chosen over
  SERIALIZABLE, which would get there too, but by aborting all but one of the racing
  transactions and making every caller retry: a busy minute would turn into retry storms,
  and a lock never aborts anybody. Other days and read-only queries are not held up.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# The longest the service waits on the database for any one thing: a lock (SQLite's write lock,
# a PostgreSQL row or advisory lock), a statement, a connection from the pool or to the server.
# Well below a tool's timeout (10 s), so that a booking tool can still tell the caller the diary
# could not be reached, and a webhook still gets its answer, whatever the database does.
DB_TIMEOUT_S = 3.0
_WRITE = "phonebot_exclusive"  # execution option: this connection's transaction takes the write lock


def make_engine(url: str | URL, timeout_s: float | None = DB_TIMEOUT_S) -> AsyncEngine:
    """An engine whose every wait is bounded by `timeout_s`; None for `phonebot db upgrade`, whose
    migrations may rightly take long (a big table's index) or queue behind another replica's."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    pool = {} if timeout_s is None else {"pool_timeout": timeout_s}
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # sqlite3's timeout is its busy timeout: how long to wait for another connection's lock.
        busy = {"timeout": 24 * 3600.0 if timeout_s is None else timeout_s}
        engine = create_async_engine(parsed, connect_args=busy, **pool)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        return create_async_engine(parsed, pool_pre_ping=True, connect_args=_postgres_timeouts(timeout_s), **pool)
    raise ValueError(f"unsupported database {backend!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://")


def _postgres_timeouts(timeout_s: float | None) -> dict[str, Any]:
    if timeout_s is None:
        return {}
    ms = str(int(timeout_s * 1000))
    return {
        "timeout": timeout_s,  # connecting
        # The server gives up a statement, or a wait for a lock, past this; the client gives up on
        # a server that does not answer at all (a dead link) a second later.
        "server_settings": {"statement_timeout": ms, "lock_timeout": ms},
        "command_timeout": timeout_s + 1.0,
    }


@asynccontextmanager
async def exclusive(engine: AsyncEngine, lock: str) -> AsyncIterator[AsyncConnection]:
    """A transaction that no other `exclusive(…, lock)` runs beside, in any process."""
    async with writing(engine) as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(select(func.pg_advisory_xact_lock(lock_key(lock))))
        yield connection


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that writes. On SQLite it takes the write lock as it begins, so a writer
    waits its turn (busy timeout) instead of failing half-way when it reads before it writes."""
    async with engine.connect() as connection:
        await connection.execution_options(**{_WRITE: True})
        async with connection.begin():
            yield connection


def lock_key(lock: str) -> int:
    """A stable signed 64-bit key for an advisory lock. Not `hash()`: that differs per process."""
    return int.from_bytes(hashlib.sha256(lock.encode()).digest()[:8], "big", signed=True)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from the sqlite3 driver (which would emit it lazily, and never for
    # SELECT), so that `_sqlite_begin` decides how each transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: readers (availability) go on while a booking is being written.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    exclusive = connection.get_execution_options().get(_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if exclusive else "BEGIN")
