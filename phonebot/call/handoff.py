"""Calls announced to this replica whose stream another replica runs: let go of at once.

Twilio's voice webhook (or the API request, or the web token) and the call's media stream may
reach different replicas. The one that heard of the call first holds a place for it under
PHONEBOT_MAX_CALLS and has opened its model session early (`calls.py`); when the stream starts
elsewhere, both must go then, not when the stream's wait runs out (30 s of a billed model session
greeting nobody, and a place held for nothing). The same when the call ends before any stream and
Twilio's status callback reaches another replica. Only the database knows either: while calls wait
here, one query every `POLL_S` asks it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import Protocol

import structlog

from phonebot.call.calls import Calls
from phonebot.logs import Skipped

log = structlog.get_logger(__name__)

POLL_S = 1.0  # a stream reaches the webhook's replica about half the time: the rest wait at most this


class Whereabouts(Protocol):
    """Where calls are (`store.CallStore`)."""

    async def gone_elsewhere(self, call_sids: Collection[str]) -> set[str]: ...


class Handoff:
    def __init__(self, calls: Calls, whereabouts: Whereabouts, poll_s: float = POLL_S) -> None:
        self._calls = calls
        self._whereabouts = whereabouts
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self._failures = Skipped(log, every_s=60.0)  # a database away: a line a minute, not a second

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="calls handed off")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            waiting = self._calls.admission.waiting()
            if not waiting:
                continue
            try:
                gone = await self._whereabouts.gone_elsewhere(waiting)
            except Exception as error:  # noqa: BLE001 - the database is away: the calls' own expiry still holds
                self._failures.warning("handoff.lookup_failed", error=repr(error))
                continue
            for call_sid in gone:
                await self._calls.elsewhere(call_sid)
