"""The latency excuse of tests/timing.py excuses only time a thread was runnable without a CPU: time
spent computing or asleep still counts, so a bound measured with it still fails when our code is slow."""

from __future__ import annotations

import asyncio
import time

from tests.timing import CpuWaits, Instant, cpu_wait_s


def test_computing_is_not_excused() -> None:
    start, cpu = Instant.now(), time.thread_time()
    while time.thread_time() - cpu < 0.05:  # 50 ms on a CPU, however long the machine makes that take
        pass
    assert start.until(Instant.now()) >= 0.049


async def test_sleeping_is_not_excused() -> None:
    start = Instant.now()
    await asyncio.sleep(0.1)
    assert start.until(Instant.now()) >= 0.099


def test_the_excuse_is_never_more_than_the_wall_time() -> None:
    start = Instant.now()
    while time.monotonic() - start.wall < 0.05:
        pass
    later = Instant.now()
    assert cpu_wait_s() >= later.waited >= start.waited
    assert 0 <= start.until(later) <= later.wall - start.wall


def waits_sampled(samples: list[tuple[float, dict[int, float]]]) -> CpuWaits:
    waits = CpuWaits()
    waits._samples = samples
    return waits


def test_waits_of_several_parties_at_once_are_excused_once() -> None:
    # Between 0.0 and 0.1 s both this loop (0) and the server (7) waited 80 ms: at most 80 ms is lost.
    waits = waits_sampled([(0.0, {0: 1.0, 7: 2.0}), (0.1, {0: 1.08, 7: 2.08}), (0.2, {0: 1.08, 7: 2.08})])
    assert abs(waits.excused(0.0, 0.2) - 0.08) < 1e-9
    gap, wall = waits.longest_gap([0.05, 0.2], 0.0, 0.2)
    assert abs(wall - 0.15) < 1e-9 and abs(gap - 0.10) < 1e-9  # 0.05..0.2, less its 50 ms in the waiting stretch


def test_nothing_is_excused_outside_the_samples_or_for_a_process_that_just_appeared() -> None:
    waits = waits_sampled([(1.0, {0: 0.0}), (1.1, {0: 0.0, 9: 5.0}), (1.2, {0: 0.0, 9: 5.0})])
    assert waits.excused(0.0, 1.0) == 0.0
    assert waits.excused(1.0, 1.2) == 0.0  # child 9's 5 s of wait happened before it was seen
