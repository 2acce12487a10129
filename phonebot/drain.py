"""Graceful drain: a replica told to stop (SIGTERM or SIGINT) ends without cutting a call.

At the first signal readiness goes false and no new call is admitted (new inbound calls hear a
polite message instead of a stream; `POST /calls` answers 503), while the calls held go on for
up to PHONEBOT_DRAIN_S. Each call still going then is asked, through its model, to say goodbye
(as at the time limit) and ends once that has been heard; any still going `GOODBYE_S` later is
ended at once. A call's end writes its record and queues its webhook, as always. When the last
call has ended, `finished` is set: the server shuts down and the process exits 0.

A second signal means "now": the calls are ended at once, without a goodbye (their records are
still written), and the process exits 0 as soon as they have.

Everything here is per process: each worker drains the calls it holds. Under `serve --workers N`
the parent takes the signals and passes them on as `requested()` (`workers.py`).
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from phonebot.call.calls import Calls

log = structlog.get_logger(__name__)

DRAIN_CUE = (
    "(This line is closing for maintenance now. Tell the caller briefly that you have to end the call, that they "
    "can call straight back, say goodbye and end the call.)"
)
GOODBYE_S = 20.0  # after the goodbye cue: the bot's last words, heard (the cue's own cap is 30 s)
STOP_S = 5.0  # calls ended at once: their records are written within this


class Drain:
    def __init__(self, calls: Calls, drain_s: float) -> None:
        self._calls = calls
        self._drain_s = drain_s
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()

    @property
    def draining(self) -> bool:
        """Whether the replica is shutting down (`POST /calls` answers 503 then)."""
        return self._calls.admission.draining

    def begin(self, signum: int = signal.SIGTERM) -> None:
        """The signal handler: the first signal starts the drain, the next ends the calls at once."""
        name = signal.Signals(signum).name
        if self._task is not None:
            self._hurry_up(name)
        else:
            self._start(name)

    def requested(self, hurry: bool, cause: str = "parent") -> None:
        """The drain asked for as a state (by a worker's parent): started if it has not, and with
        `hurry` the calls ended at once; asking again for what is under way changes nothing."""
        if self._task is None:
            self._start(cause)
        if hurry and not self._hurry.is_set():
            self._hurry_up(cause)

    def _start(self, cause: str) -> None:
        log.info("drain.started", signal=cause, calls=self._calls.admission.count, drain_s=self._drain_s)
        self._calls.admission.drain()
        self._task = asyncio.create_task(self._run(), name="drain")

    def _hurry_up(self, cause: str) -> None:
        log.warning("drain.hurry", signal=cause, calls=self._calls.admission.count)
        self._hurry.set()

    async def _run(self) -> None:
        try:
            if not await self._until_empty(self._drain_s) and not self._hurry.is_set():
                log.info("drain.goodbye", calls=self._calls.admission.count)
                await self._calls.wind_down(DRAIN_CUE)
                await self._until_empty(GOODBYE_S)
            if self._calls.admission.count:
                log.warning("drain.ending_calls", calls=self._calls.admission.count)
                await self._calls.stop()
                await self._until_empty(STOP_S, hurry=False)
        finally:
            log.info("drain.finished", calls=self._calls.admission.count)
            self.finished.set()

    async def _until_empty(self, timeout_s: float, hurry: bool = True) -> bool:
        """Wait up to `timeout_s` for no call to be held (True), or for a second signal (False)."""
        waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._calls.admission.empty())}
        if hurry:
            waits.add(asyncio.ensure_future(self._hurry.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return self._calls.admission.count == 0
