"""Load bench: added latency and capacity of the service with N concurrent real-time calls.

    python -m bench.load [--calls 10,50,100] [--seconds 10] [--profile] [--target URL]

For each step N it starts the service (`python -m phonebot serve`, one uvicorn worker) on a
fresh port, makes one warm-up call, then ramps up N callers and measures a window of `--seconds`
in steady state. Steps go up (10, 50, 100, 200, 400, then doubling) until the p99 added latency
of either direction passes 20 ms, a frame is lost, a call fails, or the load generator itself
runs out of CPU; it prints a table and writes JSON to bench/results/.

One process (this one) runs the load generator and the fake Gemini Live model on one event loop:
they share the monotonic clock and their records without any cross-process plumbing. Where the
machine has two cores or more, the service is pinned to the first and this process (and py-spy)
to the second. `--target` drives a service the bench did not start; the bench still runs the
fake model and prints the environment that service needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from bench import profile
from bench.callers import FRAME_S, Caller, signature
from bench.fake_model import FakeModel, Script, make_tls
from bench.figures import DOWN, MODEL_BLOCK, step_figures, summary
from bench.service import CLK_TCK, CORES, Neighbours, ProcStats, Service, core_ticks, pin, service_env

DEFAULT_STEPS = [10, 50, 100, 200, 400, 800, 1600, 3200]
P99_LIMIT_MS = 20.0
LOADGEN_LIMIT_PCT = 90.0  # above this the load generator, not the service, may be what is slow
AUTH_TOKEN = "bench-auth-token"
ACCOUNT_SID = "AC" + "0" * 32
MEDIA_PATH = "/twilio/media"
WARMUP_S = 2.0
SETTLE_S = 2.0
DRAIN_S = 3.0
RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", help="comma-separated steps of concurrent calls (default: 10,50,100,200,400,...)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per step (default 10)")
    parser.add_argument("--ramp", type=float, default=50.0, help="new calls per second while ramping (default 50)")
    parser.add_argument("--model-delay", type=float, default=0.0, help="the fake model's think time before a turn, s")
    parser.add_argument("--target", help="drive this running service (http://host:port) instead of starting one")
    parser.add_argument("--pid", type=int, help="with --target: the service's pid, for its CPU and memory figures")
    parser.add_argument("--model-port", type=int, default=0, help="port of the fake model (default: any free one)")
    parser.add_argument("--tls-dir", type=Path, help="where the fake model's CA and certificate live (reused)")
    parser.add_argument("--print-env", action="store_true", help="print the env a --target service needs, and exit")
    parser.add_argument("--profile", action="store_true", help="py-spy the service during each measured window")
    parser.add_argument("--quiet", type=float, default=30.0,
                        help="before each step, wait up to this long for other processes to go quiet (default 30 s)")
    parser.add_argument("--retries", type=int, default=1,
                        help="run a failed step again (at most this often) if other programs disturbed it")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--out", type=Path, help="JSON file to write (default: bench/results/load-<time>.json)")
    args = parser.parse_args(argv)
    args.steps = [int(n) for n in args.calls.split(",")] if args.calls else DEFAULT_STEPS
    if any(n <= 0 for n in args.steps) or args.seconds <= 0 or args.ramp <= 0:
        parser.error("--calls, --seconds and --ramp must be positive")
    if args.target and urlsplit(args.target).scheme not in ("http", "ws"):
        parser.error("--target must be http://host:port or ws://host:port (the callers speak plain ws)")
    return args


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def revision() -> dict:
    """The commit measured, and whether phonebot/ had uncommitted changes (others edit it live)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=Path(__file__).parent.parent, capture_output=True,
                                  text=True, timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"), "phonebot_dirty": bool(git("status", "--porcelain", "phonebot"))}


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "usable_cores": CORES,
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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

    def __init__(self, n: int, args: argparse.Namespace, model: FakeModel, host: str, port: int,
                 stats: ProcStats | None, workdir: Path, service_core: int | None = None) -> None:
        self.n, self.args, self.model, self.host, self.port = n, args, model, host, port
        self.stats, self.workdir, self.service_core = stats, workdir, service_core
        self.signature = signature(AUTH_TOKEN)
        self.me = ProcStats(os.getpid())

    def caller(self, index: int) -> Caller:
        return Caller(index, self.host, self.port, MEDIA_PATH, self.signature)

    async def warm_up(self) -> None:
        """One short call, so the first of the N does not pay for imports and the SDK's client."""
        caller = self.caller(9_999_999)
        await asyncio.wait_for(caller.dial(), 10)
        await asyncio.sleep(WARMUP_S)
        await caller.hang_up()
        if not caller.audio_total:
            raise RuntimeError(f"the warm-up call got no bot audio (errors: {caller.errors})")

    async def run(self) -> dict:
        self.model.reset()
        await self.warm_up()
        self.model.reset()
        rss0 = self.stats.rss_bytes() if self.stats else None
        callers = [self.caller(i) for i in range(self.n)]
        ramp_start = time.monotonic()
        dials = []
        for i, caller in enumerate(callers):
            # Spread the calls' 20 ms frame clocks over the frame period (golden-ratio steps).
            await _sleep_until(ramp_start + i / self.args.ramp + (i * 0.618034 % 1) * FRAME_S)
            dials.append(asyncio.create_task(caller.dial()))
        done = await asyncio.wait_for(asyncio.gather(*dials, return_exceptions=True), 30)
        failed = sum(isinstance(result, BaseException) for result in done)

        window = (time.monotonic() + SETTLE_S, time.monotonic() + SETTLE_S + self.args.seconds)
        await _sleep_until(window[0])
        cpu0, me0 = (self.stats.cpu_s() if self.stats else None), self.me.cpu_s()
        lag, neighbours = LoopLag(), Neighbours(self.stats, self.me, self.service_core)
        lag.start()
        neighbours.start()
        spy, spy_out = None, self.workdir / f"profile-{self.n}.txt"
        if self.args.profile and self.stats:
            spy = await profile.record(self.stats.pid, self.args.seconds, spy_out)
        await _sleep_until(window[1])
        cpu1, me1 = (self.stats.cpu_s() if self.stats else None), self.me.cpu_s()
        rss1 = self.stats.rss_bytes() if self.stats else None
        lag.stop()
        machine_load = await neighbours.stop(window[1] - window[0])

        # The end: no new audio either way, then wait (bounded) for what is in flight to arrive.
        self.model.frozen = True
        for caller in callers:
            caller.stop_media()
        await self._drain(callers)
        figures = step_figures(callers, self.model.sessions, window, self.args.model_delay)
        await asyncio.wait_for(asyncio.gather(*(c.hang_up() for c in callers), return_exceptions=True), 15)

        seconds = window[1] - window[0]
        result = {"calls": self.n, "seconds": round(seconds, 3), "failed_calls": failed, **figures}
        result["service_cpu"] = _cpu(cpu0, cpu1, seconds, self.n)
        result["service_rss"] = _rss(rss0, rss1, self.n)
        result["loadgen_cpu_pct"] = round(100 * (me1 - me0) / seconds, 1)
        result["loadgen_loop_lag_ms"] = summary(lag.lags)
        result["machine_load"] = machine_load
        if spy is not None:
            await asyncio.wait_for(spy.wait(), 30)
            result["profile"] = profile.summarize(spy_out) if spy_out.is_file() else None
            result["profile_file"] = str(spy_out)
        result["stop_reasons"] = _stop_reasons(result)
        return result

    async def _drain(self, callers: list[Caller]) -> None:
        by_caller = {s.caller: s for s in self.model.sessions}

        def arrived() -> bool:
            for caller in callers:
                session = by_caller.get(caller.index)
                if session is None:
                    continue
                got = caller.audio_total[-1] if caller.audio_total else 0
                if session.bytes_in < MODEL_BLOCK * len(caller.sent_at) or got < session.bytes_out // DOWN:
                    return False
            return True

        deadline = time.monotonic() + DRAIN_S
        while not arrived() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _cpu(cpu0: float | None, cpu1: float | None, seconds: float, n: int) -> dict:
    if cpu0 is None or cpu1 is None:
        return {"core_pct": None, "pct_per_call": None, "ms_per_call_second": None, "calls_per_core": None}
    pct = 100 * (cpu1 - cpu0) / seconds
    per_call = pct / n
    return {
        "core_pct": round(pct, 1),
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


# ----- output -------------------------------------------------------------------------------------

_COLUMNS = ("calls  up p50/p99 ms  down p50/p99 ms  barge p50/p99 ms  1st audio p50/p99  lost up/down"
            "  svc CPU%  %/call  MB/call  gen CPU%  other%")


def _pair(summary: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    return f"{fmt(summary['p50'])}/{fmt(summary['p99'])}"


def row(step: dict) -> str:
    cpu, rss, frames = step["service_cpu"], step["service_rss"], step["frames"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    return (
        f"{step['calls']:5d}  {_pair(step['caller_to_model_ms']):>14}  {_pair(step['model_to_caller_ms']):>15}"
        f"  {_pair(step['barge_in_ms']):>16}  {_pair(step['first_audio_ms']):>17}"
        f"  {frames['caller_lost']:>5d}/{frames['model_lost']:<6d}  {fmt(cpu['core_pct'], '8.1f')}"
        f"  {fmt(cpu['pct_per_call'], '6.3f')}  {fmt(rss['mb_per_call'], '7.3f')}  {step['loadgen_cpu_pct']:8.1f}"
        f"  {step['machine_load']['other_cpu_pct']:6.1f}"
    )


def disturbed(step: dict) -> bool:
    """Whether other programs on this machine competed with the service enough to matter."""
    load = step["machine_load"]
    worst = load["service_core_other_max_pct"]
    return load["other_cpu_pct"] > 10 or load["steal_pct"] > 2 or (worst is not None and worst >= 25)


def warnings(step: dict) -> list[str]:
    """What makes this step's figures less trustworthy than they look."""
    found = []
    if disturbed(step):
        load = step["machine_load"]
        worst = load["service_core_other_max_pct"]
        found.append(f"other processes used {load['other_cpu_pct']}% of a core on average"
                     + ("" if worst is None else f", up to {worst}% of the service's core in 200 ms")
                     + f"; steal {load['steal_pct']}%")
    lag = step["loadgen_loop_lag_ms"]["p99"]
    if lag is not None and lag > 5:
        found.append(f"the load generator's loop ran up to {lag} ms late (p99): its timestamps are that coarse")
    return found


def print_profile(step: dict) -> None:
    found = step.get("profile")
    if not found:
        return
    print(f"  profile of the service at {step['calls']} calls ({found['samples']} busy samples); doing what:")
    for name, pct in found["where_pct"]:
        print(f"    {pct:5.1f}%  {name}")
    print("  functions, self time:")
    for name, pct in found["self_pct"][:10]:
        print(f"    {pct:5.1f}%  {name}")
    print("  by package (self): " + ", ".join(f"{name} {pct}%" for name, pct in found["package_self_pct"][:10]))


def _env_lines(env: dict[str, str]) -> str:
    return "\n".join(f"  {name}={value}" for name, value in env.items())


# ----- the command --------------------------------------------------------------------------------

async def bench(args: argparse.Namespace) -> int:
    pinned = None
    if not args.no_pin and len(CORES) >= 2:
        pinned = pin(0, {CORES[1]})
    tmp = tempfile.TemporaryDirectory(prefix="phonebot-bench-")
    workdir = Path(tmp.name)
    tls_dir = args.tls_dir or (Path.home() / ".cache" / "phonebot-bench" if args.target or args.print_env else workdir)
    ssl_context, ca_file = make_tls(tls_dir)
    model = FakeModel(ssl_context, Script(delay_s=args.model_delay))
    await model.start(args.model_port)
    env = service_env(model.base_url, ca_file, AUTH_TOKEN, ACCOUNT_SID)
    if args.print_env:
        print(f"Run the target service with (fake model on port {model.port}; pass --model-port {model.port}):")
        print(_env_lines(env))
        await model.stop()
        return 0
    info = {"machine": machine(), "command": ["python", "-m", "bench.load", *sys.argv[1:]],
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "script": asdict(model.script),
            "fake_model": model.base_url, "revision": revision()}
    rev = info["revision"]
    print(f"machine: {info['machine']['cpus']} cpus ({info['machine']['cpu']}), Python {info['machine']['python']};"
          f" phonebot at {rev['commit'] or '?'}{' + uncommitted changes' if rev['phonebot_dirty'] else ''}")
    if args.target:
        print(f"target: {args.target}; it must run with this environment:\n{_env_lines(env)}")
        where = f"pinned to core {pinned}" if pinned else "not pinned"
        print(f"the fake model and the callers run in this process (pid {os.getpid()}), {where}")
    elif pinned:
        print(f"pinned: service -> core {CORES[0]}; load generator + fake model (this process, pid {os.getpid()})"
              f" -> core {pinned}" + (", py-spy too" if args.profile else ""))
    else:
        print("not pinned: " + ("--no-pin" if args.no_pin else f"this machine allows cores {CORES}"))
    info["pinning"] = {"service": CORES[0], "loadgen_and_model": int(pinned)} if pinned and not args.target else None

    steps: list[dict] = []
    print(_COLUMNS)
    try:
        for n in args.steps:
            if args.quiet > 0 and (busy := await wait_for_quiet(args.quiet)) is not None:
                print(f"  note: the machine is busy with other work ({busy:.0f}% of a core); measuring anyway")
            for attempt in range(1 + max(0, args.retries)):
                step = await run_step(n, args, model, env, workdir, pinned is not None)
                step["attempt"] = attempt + 1
                if not (step["stop_reasons"] and disturbed(step)) or attempt == args.retries:
                    break
                print(row(step), flush=True)
                print(f"  note: {'; '.join(warnings(step))}; running {n} calls again")
                if args.quiet > 0:
                    await wait_for_quiet(args.quiet)
            steps.append(step)
            print(row(step), flush=True)
            for warning in warnings(step):
                print(f"  note: {warning}")
            print_profile(step)
            if step["stop_reasons"]:
                print("stopped: " + "; ".join(step["stop_reasons"]))
                break
    finally:
        await model.stop()
        out = args.out or RESULTS / f"load-{datetime.now():%Y%m%d-%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**info, "steps": steps, "verdict": verdict(steps)}, indent=2, allow_nan=False))
        print(f"wrote {out}")
        tmp.cleanup()
    return 0


async def wait_for_quiet(limit_s: float) -> float | None:
    """Wait (at most limit_s) for one second in which the machine is nearly idle; the last second's
    busy % of a core, or None if it went quiet."""
    deadline = time.monotonic() + limit_s
    busy = None
    while time.monotonic() < deadline:
        before = core_ticks()
        await asyncio.sleep(1.0)
        after = core_ticks()
        busy = 100 * sum(after[c][0] - before[c][0] for c in after if c in before) / CLK_TCK
        if busy < 5:
            return None
    return busy


async def run_step(n: int, args: argparse.Namespace, model: FakeModel, env: dict[str, str], workdir: Path,
                   pin_service: bool) -> dict:
    if args.target:
        target = urlsplit(args.target)
        stats = ProcStats(args.pid) if args.pid else None
        return await Step(n, args, model, target.hostname or "127.0.0.1", target.port or 80, stats, workdir).run()
    service = Service(env, workdir, CORES[0] if pin_service else None)
    try:
        await service.ready()
        core = CORES[0] if service.pinned else None
        return await Step(n, args, model, "127.0.0.1", service.port, service.stats, workdir, core).run()
    finally:
        await service.stop()


def verdict(steps: list[dict]) -> dict:
    """The largest step that passed: no lost frame, p99 <= 20 ms both ways, every call up."""
    passed = [s for s in steps if not s["stop_reasons"]]
    best = max(passed, key=lambda s: s["calls"], default=None)
    per_call = [s["service_cpu"]["calls_per_core"] for s in steps if s["service_cpu"]["calls_per_core"]]
    return {
        "max_calls_passed": best["calls"] if best else 0,
        "calls_per_core_extrapolated": per_call[-1] if per_call else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(bench(args))
    return uvloop.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
