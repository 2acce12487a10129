"""What the service's event loop does under `bench.load`, every 100 ms: a probe, not part of phonebot.

    PHONEBOT_LOOP_PROBE=/tmp/probe PYTHONPATH=$PWD/bench/loop_probe python -m bench.load --calls 200

The service inherits both variables (the path absolute: it runs in a directory of its own), so
Python imports this module as it starts, and a `phonebot serve` process writes
`/tmp/probe-<pid>.log`, a line per 100 ms:

    <monotonic s> late <ms> busy <share> arith <us>

`late`: how far past due the loop ran a 2 ms timer at worst; `busy`: the loop thread's CPU
time over the wall time (1.0: the loop never waited for I/O); `arith`: thread CPU time of a
fixed piece of arithmetic on that thread, so a slower core shows there and more work does not.
A step's JSON gives its measured window on the same clock (`window_monotonic`). A late stretch
with `busy` near 1 and `arith` as usual is load; `arith` up is the machine; `busy` well under 1
is a wait (a lock, another thread, the kernel).
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import os
import sys
import time
from typing import Any, TextIO

BUCKET_S = 0.1
TICK_S = 0.002


def _arithmetic_us() -> float:
    started = time.thread_time()
    total = 0
    for i in range(4000):
        total += i * i
    return (time.thread_time() - started) * 1e6


async def _watch(out: TextIO) -> None:
    loop = asyncio.get_running_loop()
    bucket_at = tick_at = loop.time()
    cpu_at, late = time.thread_time(), 0.0
    while True:
        await asyncio.sleep(TICK_S)
        now = loop.time()
        late, tick_at = max(late, now - tick_at - TICK_S), now
        if now - bucket_at >= BUCKET_S:
            busy = (time.thread_time() - cpu_at) / (now - bucket_at)
            out.write(f"{time.monotonic():.3f} late {late * 1000:.1f} busy {busy:.3f} arith {_arithmetic_us():.0f}\n")
            bucket_at = tick_at = loop.time()
            cpu_at, late = time.thread_time(), 0.0


def _install(prefix: str) -> None:
    out = open(f"{prefix}-{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115 - open for the process's life
    run = asyncio.runners.Runner.run

    def run_watched(self: asyncio.runners.Runner, coro: Any, *, context: Any = None) -> Any:
        self.get_loop().create_task(_watch(out))
        return run(self, coro, context=context)

    asyncio.runners.Runner.run = run_watched  # type: ignore[method-assign]


if (_prefix := os.environ.get("PHONEBOT_LOOP_PROBE")) and "serve" in sys.argv[1:]:
    _install(_prefix)
