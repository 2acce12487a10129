"""Which phonebot processes are alive, so that calls left behind by a dead one can be finalised.

Each process holds a lock for as long as it lives, which is released the moment it dies, by
whoever holds it for it: on PostgreSQL a session advisory lock on a connection of its own (the
server drops it with the connection); on SQLite an `flock` on a file beside the database (the
kernel drops it with the process). Another process that can take the lock knows its owner is
gone: no heartbeat to tune, no clock to trust, and a restarted process knows at once.

PostgreSQL also drops the lock of a process that lives on, whenever it drops its connection: a
database restart or failover (every replica's at once), a network blip, a proxy's idle timeout.
So a process checks its lock every `KEEP_S` and takes it again as soon as the database answers
(`keep`), and a lock found free on PostgreSQL proves its owner dead only when it is still free
`CONFIRM_S` later (`dead`): finalising a call is for good, and a live call's replica would then
find its end refused. One case is still not told apart: a process cut off from the database for
longer than that; its calls are finalised by the others (it cannot record them anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import IO

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from phonebot.logs import Skipped
from phonebot.store.engine import lock_key

log = structlog.get_logger(__name__)

KEEP_S = 2.0  # PostgreSQL: how often a process makes sure it still holds its lock
# PostgreSQL: how long a lock must stay free to prove its owner dead. Well past KEEP_S and a
# reconnection (3 s connect timeout, store/engine.py), for a live owner to have taken it again.
CONFIRM_S = 15.0


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
        self._holding = asyncio.Lock()  # one user of the lock's connection at a time
        self._free_since: dict[str, float] = {}  # PostgreSQL: owners whose lock was found free, since when
        self._dead: set[str] = set()  # owners proven dead (names are never reused)

    @property
    def holding(self) -> bool:
        return self._held is not None or self._file is not None

    async def hold(self) -> None:
        """Take (or check, and take again) this process's lock. Raises if the database is out of reach."""
        async with self._holding:
            if self._postgres:
                await self._hold_postgres()
            elif self._file is None and self._folder is not None:
                self._file = _lock(self._folder / _file_name(self.instance))

    async def keep(self) -> None:
        """Hold this process's lock until cancelled: taken now, and on PostgreSQL checked every
        `KEEP_S` and taken again within that of the database dropping it (see the module's doc)."""
        failures = Skipped(log, every_s=60.0)  # a database away: a line a minute
        while True:
            try:
                await self.hold()
            except Exception as error:  # noqa: BLE001 - out of reach: try again
                failures.warning("liveness.not_held", error=repr(error))
            else:
                if not self._postgres:
                    return  # a file lock is the kernel's: it goes only with the process
            await asyncio.sleep(KEEP_S)

    async def dead(self, instance: str) -> bool:
        """Whether the process that wrote `instance` is gone for sure, so that its calls may be
        finalised: its lock is free and, on PostgreSQL, was free `CONFIRM_S` ago already (the
        caller looks again then; `suspected` says whom to look at again)."""
        if await self.alive(instance):
            self._free_since.pop(instance, None)
            return False
        if not self._postgres or instance in self._dead:
            return True
        now = time.monotonic()
        if now - self._free_since.setdefault(instance, now) < CONFIRM_S:
            return False
        del self._free_since[instance]
        self._dead.add(instance)
        return True

    def suspected(self, instance: str) -> bool:
        """Whether `instance`'s lock was found free but its death is not proven yet."""
        return instance in self._free_since

    async def alive(self, instance: str) -> bool:
        """Whether the process that wrote `instance` holds its lock now. On PostgreSQL a live
        process may be without it for a moment (see `dead`)."""
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
        async with self._holding:
            await self._release()

    async def _release(self) -> None:
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
