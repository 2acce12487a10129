"""One step of the load bench: N callers against one service, and the figures they give.

A step makes one warm-up call (so the first of the N does not pay for imports and the SDK's
client), ramps the N calls up, lets the service settle, then measures a window: CPU and RSS of
the service, CPU of this process and how late its loop runs, other programs' CPU. Then the model
ends its turns and starts none, the callers' further frames no longer count (they go on, as a
phone line does, so a bot's resampler is not left holding counted audio), what is in flight is
let arrive, and every call hangs up.

If the warm-up call's model session did not name its caller (a bot other than phonebot), the
calls are dialled one at a time, each once the one before has its session, so the fake model can
tell whose session is whose by the order they open in.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from bench import profile
from bench.callers import FRAME_S, Caller
from bench.fake_model import FakeModel
from bench.figures import step_figures, summary
from bench.service import Neighbours, ProcStats
from bench.voice import Line

P99_LIMIT_MS = 20.0
LOADGEN_LIMIT_PCT = 90.0  # above this the load generator, not the service, may be what is slow
WARMUP_S = 2.0
WARMUP_CALLER = 9_999_999
SETTLE_S = 2.0
DRAIN_S = 3.0
QUIET_S = 0.3  # the end of a step: no bot audio for this long, and every session has heard...
MARGIN_S = 0.3  # ...this much caller audio past the counted frames (so none is held in a resampler)
SESSION_WAIT_S = 10.0  # dialling in order: how long one call may take to get its model session


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


class LoopLag:
    """How late this process's loop runs a 5 ms timer. The bench's timestamps are taken on this
    loop, so they are only as good as this figure (uvloop timers have 1 ms resolution)."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.lags: list[float] = []
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = time.monotonic() + self.period_s
        self._timer = asyncio.get_running_loop().call_later(self.period_s, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        self.lags.append(now - self._due)
        self._due = now + self.period_s
        self._timer = asyncio.get_running_loop().call_later(self.period_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class Step:
    """One step: N callers against one service, and the figures they give."""

    def __init__(self, n: int, args: argparse.Namespace, model: FakeModel, line: Line,
                 stats: ProcStats | None, workdir: Path, service_core: int | None = None) -> None:
        self.n, self.args, self.model, self.line = n, args, model, line
        self.stats, self.workdir, self.service_core = stats, workdir, service_core
        self.me = ProcStats(os.getpid(), children=False)  # this process alone: the service is its child

    def caller(self, index: int) -> Caller:
        return Caller(index, self.line)

    async def warm_up(self) -> bool:
        """One short call, so the first of the N does not pay for imports and the SDK's client.
        Whether its model session named its caller."""
        caller = self.caller(WARMUP_CALLER)
        dial = await self._dial_in_order(caller)
        await asyncio.wait_for(dial, 10)
        await asyncio.sleep(WARMUP_S)
        await caller.hang_up()
        if not caller.audio_total:
            raise RuntimeError(f"the warm-up call got no bot audio (errors: {caller.errors})")
        session = next((s for s in self.model.sessions if s.caller == WARMUP_CALLER), None)
        if session is None:
            raise RuntimeError("the warm-up call's model session was not told apart")
        return session.numbered

    async def _dial_in_order(self, caller: Caller) -> asyncio.Task[None]:
        """Dial, and return once the fake model has this call's session (or it failed, or
        SESSION_WAIT_S passed): the next unnumbered session is this caller's."""
        self.model.expecting = caller.index
        session = self.model.session_of(caller.index)
        dial = asyncio.create_task(caller.dial())
        dial.add_done_callback(lambda task: session.cancel() if task.cancelled() or task.exception() else None)
        await asyncio.wait({session}, timeout=SESSION_WAIT_S)
        session.cancel()
        if self.model.expecting == caller.index:
            self.model.expecting = None
        return dial

    async def run(self) -> dict:
        self.model.reset()
        numbered = await self.warm_up()
        self.model.reset()
        rss0 = self.stats.rss_bytes() if self.stats else None
        callers = [self.caller(i) for i in range(self.n)]
        ramp_start = time.monotonic()
        dials = []
        for i, caller in enumerate(callers):
            # Spread the calls' 20 ms frame clocks over the frame period (golden-ratio steps).
            await _sleep_until(ramp_start + i / self.args.ramp + (i * 0.618034 % 1) * FRAME_S)
            dials.append(asyncio.create_task(caller.dial()) if numbered else await self._dial_in_order(caller))
        _, pending = await asyncio.wait(dials, timeout=30)
        for task in pending:  # a call that could not even connect in 30 s has failed
            task.cancel()
        failed = sum(1 for task in dials if task.cancelled() or task.exception() is not None)

        window = (time.monotonic() + SETTLE_S, time.monotonic() + SETTLE_S + self.args.seconds)
        await _sleep_until(window[0])
        cpu0, me0 = (self.stats.cpu_split_s() if self.stats else None), self.me.cpu_s()
        lag, neighbours = LoopLag(), Neighbours(self.stats, self.me, self.service_core)
        lag.start()
        neighbours.start()
        spy, spy_out = None, self.workdir / f"profile-{self.n}.txt"
        if self.args.profile and self.stats:
            spy = await profile.record(self.stats.pid, self.args.seconds, spy_out)
        await _sleep_until(window[1])
        cpu1, me1 = (self.stats.cpu_split_s() if self.stats else None), self.me.cpu_s()
        rss1 = self.stats.rss_bytes() if self.stats else None
        lag.stop()
        machine_load = await neighbours.stop(window[1] - window[0])

        # The end: no new bot turns, no more counted caller frames; wait (bounded) for what is in flight.
        self.model.frozen = True
        for caller in callers:
            caller.count_no_more()
        await self._drain(callers)
        for caller in callers:
            caller.stop_media()
        figures = step_figures(callers, self.model.sessions, window, self.args.model_delay)
        hang_ups = [asyncio.create_task(caller.hang_up()) for caller in callers]
        _, pending = await asyncio.wait(hang_ups, timeout=15)
        for task in pending:
            task.cancel()

        seconds = window[1] - window[0]
        result = {"calls": self.n, "seconds": round(seconds, 3), "failed_calls": failed,
                  "sessions_matched_by": "caller number" if numbered else "dial order", **figures}
        # CLOCK_MONOTONIC is the machine's: lines up the window with the service's own logs.
        result["window_monotonic"] = [round(window[0], 3), round(window[1], 3)]
        result["service_cpu"] = _cpu(cpu0, cpu1, seconds, self.n)
        result["service_processes"] = self.stats.processes if self.stats else None
        result["service_rss"] = _rss(rss0, rss1, self.n)
        result["loadgen_cpu_pct"] = round(100 * (me1 - me0) / seconds, 1)
        result["loadgen_loop_lag_ms"] = summary(lag.lags)
        result["machine_load"] = machine_load
        if spy is not None:
            await asyncio.wait_for(spy.wait(), 30)
            result["profile"] = profile.summarize(spy_out) if spy_out.is_file() else None
        result["stop_reasons"] = _stop_reasons(result)
        return result

    async def _drain(self, callers: list[Caller]) -> None:
        heard = {id(s): s.bytes_in for s in self.model.sessions}

        def done() -> bool:
            quiet = time.monotonic() - QUIET_S
            return all(s.bytes_in - heard[id(s)] >= MARGIN_S * 2 * s.in_rate for s in self.model.sessions) and all(
                not c.audio_at or c.audio_at[-1] < quiet for c in callers)

        deadline = time.monotonic() + DRAIN_S
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _cpu(cpu0: tuple[float, float] | None, cpu1: tuple[float, float] | None, seconds: float, n: int) -> dict:
    if cpu0 is None or cpu1 is None:
        return {"core_pct": None, "kernel_pct": None, "pct_per_call": None, "ms_per_call_second": None,
                "calls_per_core": None}
    pct = 100 * (sum(cpu1) - sum(cpu0)) / seconds
    per_call = pct / n
    return {
        "core_pct": round(pct, 1),
        "kernel_pct": round(100 * (cpu1[1] - cpu0[1]) / seconds, 1),  # of core_pct: stime (syscalls, TCP)
        "pct_per_call": round(per_call, 3),
        "ms_per_call_second": round(10 * per_call, 3),
        "calls_per_core": round(100 / per_call) if per_call > 0 else None,  # linear extrapolation
    }


def _rss(rss0: int | None, rss1: int | None, n: int) -> dict:
    if rss0 is None or rss1 is None:
        return {"baseline_mb": None, "end_mb": None, "mb_per_call": None}
    mb = 2**20
    return {"baseline_mb": round(rss0 / mb, 1), "end_mb": round(rss1 / mb, 1),
            "mb_per_call": round((rss1 - rss0) / n / mb, 3)}


def _stop_reasons(step: dict) -> list[str]:
    reasons = []
    for key in ("caller_to_model_ms", "model_to_caller_ms"):
        p99 = step[key]["p99"]
        if p99 is not None and p99 > P99_LIMIT_MS:
            reasons.append(f"{key} p99 {p99} > {P99_LIMIT_MS}")
    lost = step["frames"]["caller_lost"] + step["frames"]["model_lost"]
    if lost:
        reasons.append(f"{lost} frames lost")
    if step["failed_calls"] or step["calls_without_session"]:
        reasons.append(f"{step['failed_calls']} calls failed, {step['calls_without_session']} without a session")
    if step["loadgen_cpu_pct"] > LOADGEN_LIMIT_PCT:
        reasons.append(f"load generator at {step['loadgen_cpu_pct']}% of its core")
    return reasons
