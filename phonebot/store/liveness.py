"""Which phonebot processes are alive, so that calls left behind by a dead one can be finalised.

Each process holds a lock for as long as it lives, which is released the moment it dies, by
whoever holds it for it: on PostgreSQL a session advisory lock on a connection of its own (the
server drops it with the connection); on SQLite an `flock` on a file beside the database (the
kernel drops it with the process). Another process that can take the lock knows its owner is
gone: no heartbeat to tune, no clock to trust, and a restarted process knows at once.

One case this cannot tell apart: a PostgreSQL connection lost while its process lives on (a
network partition from the database). Its calls then look orphaned to the other replicas;
such a process cannot record them anyway, and it takes its lock again as soon as it can.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
from pathlib import Path
from typing import IO

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from phonebot.store.engine import lock_key

log = structlog.get_logger(__name__)


def new_instance() -> str:
    """This process's name in the calls it runs: host, pid and a nonce (pids are reused)."""
    return f"{socket.gethostname()[:40]}/{os.getpid()}/{secrets.token_hex(4)}"


class Liveness:
    def __init__(self, engine: AsyncEngine, instance: str | None = None) -> None:
        self.engine = engine
        self.instance = instance or new_instance()
        self._postgres = engine.dialect.name == "postgresql"
        self._held: AsyncConnection | None = None  # PostgreSQL: the connection holding our lock
        self._file: IO[bytes] | None = None  # SQLite: our locked file
        self._folder = _lock_folder(engine)

    @property
    def holding(self) -> bool:
        return self._held is not None or self._file is not None

    async def hold(self) -> None:
        """Take (or check, and take again) this process's lock. Raises if the database is out of reach."""
        if self._postgres:
            await self._hold_postgres()
        elif self._file is None and self._folder is not None:
            self._file = _lock(self._folder / _file_name(self.instance))

    async def alive(self, instance: str) -> bool:
        """Whether the process that wrote `instance` still runs."""
        if instance == self.instance:
            return True
        if self._postgres:
            async with self.engine.begin() as connection:  # a transaction lock: let go at commit
                taken = await connection.scalar(select(func.pg_try_advisory_xact_lock(_key(instance))))
            return not taken
        if self._folder is None:
            return False  # an in-memory database: no other process shares it
        return _locked(self._folder / _file_name(instance))

    async def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            try:  # the connection goes back to the pool: the session's lock must not go with it
                await held.execute(select(func.pg_advisory_unlock(_key(self.instance))))
                await held.commit()
                await held.close()
            except Exception:  # noqa: BLE001 - out of reach: the server drops the lock with the session
                await held.invalidate()
        if self._file is not None:
            assert self._folder is not None
            (self._folder / _file_name(self.instance)).unlink(missing_ok=True)
            self._file.close()
            self._file = None

    async def _hold_postgres(self) -> None:
        if self._held is not None:
            try:
                await self._held.execute(text("SELECT 1"))
                await self._held.commit()
                return
            except Exception as error:  # noqa: BLE001 - the connection died: take the lock again below
                log.warning("liveness.lock_lost", error=repr(error))
                with contextlib.suppress(Exception):
                    await self._held.invalidate()  # never back into the pool
                self._held = None
        connection = await self.engine.connect()
        try:
            await connection.execute(select(func.pg_advisory_lock(_key(self.instance))))
            await connection.commit()  # the lock is the session's: idle, not idle in a transaction
        except BaseException:
            await connection.invalidate()  # whatever it holds goes with it, not back into the pool
            raise
        self._held = connection


# The file locks: a local file system call each, microseconds, not worth a thread.


def _lock(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    file = open(path, "wb")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        file.close()
        raise
    return file


def _locked(path: Path) -> bool:
    """Whether a live process holds the lock on `path`; a dead one's file is removed."""
    try:
        with open(path, "rb") as file:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    path.unlink(missing_ok=True)  # its owner is gone: tidy up
    return False


def _key(instance: str) -> int:
    return lock_key("phonebot/instance/" + instance)


def _file_name(instance: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", instance) + ".lock"


def _lock_folder(engine: AsyncEngine) -> Path | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    path = Path(database)
    return path.with_name(path.name + ".instances")
