"""Load bench: added latency and capacity of the service with N concurrent real-time calls.

    python -m bench.load [--calls 10,50,100] [--seconds 10] [--profile] [--target URL]
    python -m bench.load --target http://127.0.0.1:8766 --pid PID --health-path none --voice-path /

For each step N it starts the service (`python -m phonebot serve --workers 1`: one core, unless
`--workers`) on a fresh port, makes one warm-up call, then ramps up N callers and measures a
window of `--seconds` in steady state. Steps go up (10, 50, 100, 200, 400, then doubling) until
the p99 added latency of either direction passes 20 ms, a frame is lost, a call fails, or the
load generator itself runs out of CPU; it prints a table and writes JSON to bench/results/.

One process (this one) runs the load generator and the fake Gemini Live model on one event loop:
they share the monotonic clock and their records without any cross-process plumbing. Where the
machine has two cores or more, a one-process service is pinned to the first and this process (and
py-spy) to the second. `--workers N` measures the whole machine: N worker processes, nothing
pinned, CPU and memory summed over them (on a machine this small the load generator shares
the cores with them; its own CPU is reported beside).

`--target` drives a service the bench did not start, phonebot or another bot; the bench still
runs the fake model and prints the environment that service needs. Such a bot need not have
phonebot's routes: `--health-path none` (a TCP connect says it is up), `--voice-path` (its
Twilio voice webhook, or none: stream straight to `--media-path`).
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

from bench.fake_model import FakeModel, Script, make_tls
from bench.report import COLUMNS, disturbed, print_profile, row, verdict, warnings
from bench.service import CLK_TCK, CORES, ProcStats, Service, core_ticks, pin, reachable, service_env
from bench.step import Step
from bench.voice import ACCOUNT_SID, AUTH_TOKEN, Line

DEFAULT_STEPS = [10, 50, 100, 200, 400, 800, 1600, 3200]
RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", help="comma-separated steps of concurrent calls (default: 10,50,100,200,400,...)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per step (default 10)")
    parser.add_argument("--ramp", type=float, default=20.0, help="new calls per second while ramping (default 20)")
    parser.add_argument("--model-delay", type=float, default=0.0, help="the fake model's think time before a turn, s")
    parser.add_argument("--target", help="drive this running service (http://host:port) instead of starting one")
    parser.add_argument("--pid", type=int, help="with --target: the service's pid, for its CPU and memory figures")
    parser.add_argument("--health-path", default="/healthz",
                        help="with --target: GET this until it answers 200 before each step; 'none': a TCP connect")
    parser.add_argument("--voice-path", default="/twilio/voice",
                        help="the Twilio voice webhook each call POSTs first (its TwiML names the stream);"
                             " 'none': stream straight to --media-path")
    parser.add_argument("--media-path", default="/twilio/media", help="with --voice-path none: the media stream's path")
    parser.add_argument("--target-wait", type=float, default=60.0,
                        help="with --target: how long to wait for it to come up (default 60 s)")
    parser.add_argument("--model-port", type=int, default=0, help="port of the fake model (default: any free one)")
    parser.add_argument("--tls-dir", type=Path, help="where the fake model's CA and certificate live (reused)")
    parser.add_argument("--print-env", action="store_true", help="print the env a --target service needs, and exit")
    parser.add_argument("--profile", action="store_true", help="py-spy the service during each measured window")
    parser.add_argument("--quiet", type=float, default=30.0,
                        help="before each step, wait up to this long for other processes to go quiet (default 30 s)")
    parser.add_argument("--retries", type=int, default=1,
                        help="run a failed step again (at most this often) if other programs disturbed it")
    parser.add_argument("--keep-going", action="store_true",
                        help="run every step even past one that fails (to compare bots at the same steps)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--workers", type=int, default=1,
                        help="phonebot serve --workers N: 1 (default) measures one core; N > 1 the whole machine,"
                             " unpinned")
    parser.add_argument("--out", type=Path, help="JSON file to write (default: bench/results/load-<time>.json)")
    args = parser.parse_args(argv)
    args.steps = [int(n) for n in args.calls.split(",")] if args.calls else DEFAULT_STEPS
    if any(n <= 0 for n in args.steps) or args.seconds <= 0 or args.ramp <= 0 or args.workers <= 0:
        parser.error("--calls, --seconds, --ramp and --workers must be positive")
    if args.target and urlsplit(args.target).scheme not in ("http", "ws"):
        parser.error("--target must be http://host:port or ws://host:port (the callers speak plain ws)")
    args.health_path = None if args.health_path.lower() == "none" else args.health_path
    args.voice_path = None if args.voice_path.lower() == "none" else args.voice_path
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
    dirty = bool(git("status", "--porcelain", "phonebot"))
    return {"commit": git("rev-parse", "--short", "HEAD"), "phonebot_dirty": dirty}


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "usable_cores": CORES,
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _env_lines(env: dict[str, str]) -> str:
    return "\n".join(f"  {name}={value}" for name, value in env.items())


async def bench(args: argparse.Namespace) -> int:
    pinned = None
    if not args.no_pin and len(CORES) >= 2 and args.workers == 1:
        pinned = pin(0, {CORES[1]})
    tmp = tempfile.TemporaryDirectory(prefix="phonebot-bench-")
    workdir = Path(tmp.name)
    tls_dir = args.tls_dir or (Path.home() / ".cache" / "phonebot-bench" if args.target or args.print_env else workdir)
    ssl_context, ca_file = make_tls(tls_dir)
    model = FakeModel(ssl_context, Script(delay_s=args.model_delay))
    await model.start(args.model_port)
    env = service_env(model.base_url, ca_file, AUTH_TOKEN, ACCOUNT_SID)
    if args.print_env:
        print("Run the service to bench with this environment:")
        print(_env_lines(env))
        print(f"then: python -m bench.load --target http://127.0.0.1:<its port> --pid <its pid>"
              f" --model-port {model.port} --tls-dir {tls_dir}")
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
    elif args.workers > 1:
        print(f"the whole machine: {args.workers} workers, nothing pinned, on cores {CORES}; figures summed over"
              " the workers; the load generator and fake model (this process) share these cores")
    else:
        print("not pinned: " + ("--no-pin" if args.no_pin else f"this machine allows cores {CORES}"))
    info["pinning"] = {"service": CORES[0], "loadgen_and_model": int(pinned)} if pinned and not args.target else None
    info["workers"] = args.workers

    steps: list[dict] = []
    print(COLUMNS)
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
                print(("failed: " if args.keep_going else "stopped: ") + "; ".join(step["stop_reasons"]))
                if not args.keep_going:
                    break
    finally:
        await model.stop()
        out = args.out or RESULTS / f"load-{datetime.now().astimezone():%Y%m%d-%H%M%S}.json"
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
        host, port = target.hostname or "127.0.0.1", target.port or 80
        if not await reachable(host, port, args.health_path, args.target_wait):
            what = f"GET {args.health_path}" if args.health_path else "a TCP connect"
            raise SystemExit(f"{args.target} did not answer {what} within {args.target_wait:.0f} s")
        stats = ProcStats(args.pid) if args.pid else None
        return await Step(n, args, model, _line(args, host, port), stats, workdir).run()
    service = Service(env, workdir, CORES[0] if pin_service else None, args.workers)
    try:
        await service.ready()
        core = CORES[0] if service.pinned else None
        line = _line(args, "127.0.0.1", service.port)
        return await Step(n, args, model, line, service.stats, workdir, core).run()
    except Exception:
        print(f"the service's log ({service.log_path}) ends with:\n{service.log_tail()}", file=sys.stderr)
        raise
    finally:
        await service.stop()


def _line(args: argparse.Namespace, host: str, port: int) -> Line:
    return Line(host, port, args.voice_path, args.media_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(bench(args))
    return uvloop.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
