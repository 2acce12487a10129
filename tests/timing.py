"""Latency bounds that hold on a loaded machine and still fail when our code is slow.

A bound such as "the clear reaches the caller within 50 ms" is about our code. On a busy machine
(a 2-core CI runner, several test suites at once) the kernel can leave the test's process ready to
run but without a CPU for tens of milliseconds, and the wall clock counts that too. Linux counts it
per thread: the second field of /proc/thread-self/schedstat is the time the thread spent runnable,
waiting on a run queue. An `Instant` carries it with the wall clock, and `Instant.until` gives the
wall time between two instants less that wait. Everything else still counts: time the event loop
spent computing (ours, a fake's, the garbage collector's) and time it sat idle (asleep on a timer,
waiting on a socket), so a real delay still fails the bound.

The instants must be taken on the thread whose wait is meant (the event loop's); the excuse is for
that thread alone. Without schedstat (a kernel built without it) nothing is excused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def cpu_wait_s() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU, since it started (0 if unknown)."""
    try:
        return int(_SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass(frozen=True, slots=True)
class Instant:
    wall: float  # time.monotonic()
    waited: float  # cpu_wait_s() at that moment

    @classmethod
    def now(cls) -> Instant:
        return cls(time.monotonic(), cpu_wait_s())

    def until(self, later: Instant) -> float:
        """Seconds from this instant to `later`, less the time the thread waited for a CPU between them."""
        return (later.wall - self.wall) - (later.waited - self.waited)

    def describe(self, later: Instant) -> str:
        """For an assertion message: the wall time and the CPU wait it excused."""
        waited = later.waited - self.waited
        return f"{later.wall - self.wall:.3f} s of wall time, {waited:.3f} s of it waiting for a CPU"


def _process_waits(pid: int) -> dict[int, float]:
    """The CPU wait of a process's main thread and of its children's (a server's workers), by pid;
    a process gone is left out."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    waits = {}
    for each in (pid, *map(int, children)):
        with contextlib.suppress(OSError, IndexError, ValueError):
            waits[each] = int(Path(f"/proc/{each}/schedstat").read_text().split()[1]) / 1e9
    return waits


class CpuWaits:
    """For gaps in a stream that crosses processes (a `phonebot serve` between the fakes): samples,
    every `every_s`, how long the event loop's thread and the given processes (and their children)
    have waited for a CPU, so that a gap can be measured less what the machine kept them from running.

    Between two samples the excuse is the longest wait of any one of them, never more than the time
    between the samples: at most the time in which at least one of them was runnable without a CPU.
    Their waits are not added up (two processes waiting at the same moment lose that moment once)."""

    def __init__(self, *pids: int, every_s: float = 0.01) -> None:
        self._pids = pids
        self._every_s = every_s
        self._samples: list[tuple[float, dict[int, float]]] = []  # (time.monotonic(), CPU wait so far by pid; 0: us)
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        waits = {0: cpu_wait_s()}
        for pid in self._pids:
            waits.update(_process_waits(pid))
        self._samples.append((time.monotonic(), waits))

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self._every_s)

    async def __aenter__(self) -> CpuWaits:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sample()

    def excused(self, since: float, until: float) -> float:
        """The CPU wait to excuse over [since, until]: for each stretch between two samples, the part
        of it inside [since, until], or the longest wait of one party in it if less. Outside the
        sampled time nothing is excused."""
        total = 0.0
        for (start, before), (end, after) in itertools.pairwise(self._samples):
            overlap = min(end, until) - max(start, since)
            if overlap <= 0:
                continue
            # A party not in the earlier sample (a child just started) has no known wait to count.
            waited = max((after[pid] - before[pid] for pid in after.keys() & before.keys()), default=0.0)
            total += min(overlap, max(waited, 0.0))
        return total

    def longest_gap(self, times: list[float], since: float, until: float) -> tuple[float, float]:
        """The longest stretch of [since, until] with none of `times`, less the CPU wait in it; and
        the stretch as the wall clock saw it (for the message)."""
        inside = [since, *(t for t in times if since <= t <= until), until]
        stretches = [(b - a - self.excused(a, b), b - a) for a, b in itertools.pairwise(inside)]
        return max(stretches)
