"""Per-frame cost of the service, in lockstep: what one call's audio costs, independent of the
machine's load.

    python -m bench.frames [--steps 500] [--callgrind]

The service runs as in production (`python -m phonebot serve --workers 1`, `LOG_LEVEL=warning`)
and takes one call the way the load bench makes it (`bench.voice`, `bench.callers`, against the
fake model of `bench.fake_model`, over TLS through google-genai). Then it goes in lockstep, one
step at a time: the caller sends two 20 ms frames (Twilio's media JSON), each awaited until the
model has its audio; the model sends one 40 ms chunk of 24 kHz audio, awaited until the caller
has both of its mu-law frames, and the marks the service sends are echoed. Every second of
audio the model ends its turn and gives a resumption handle, as it does on a call. So a step is
40 ms of a call with both sides talking, every message a wake-up of its own, as at low load, and
the work per step does not depend on how busy the machine is.

With `--callgrind` the service runs under `valgrind --tool=callgrind` and the figure is the
instructions it executed over the measured steps (counters zeroed after a warm-up, dumped after
the last step: `callgrind_control`), which repeat from run to run whatever else the machine does
(timers that tick by wall time add a little: uvicorn's 0.1 s tick, the call's 0.5 s and 2 s
watchdogs). Without it, the service's CPU time (utime + stime) over the steps, which does depend
on the machine. The dump is kept for `callgrind_annotate` (C-level: libssl, libuv, the
interpreter, numpy); `--profile` samples the measured steps with py-spy instead (Python-level,
`bench.profile`'s summary). Instructions are user space only: `--syscalls` counts the service's
system calls per step (`strace -c`), the kernel's share, which repeats as well.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from bench import profile, tones
from bench.callers import Caller
from bench.fake_model import CHUNK_BYTES, FakeModel, Script, Session, make_tls
from bench.service import ProcStats, free_port, http_ok, service_env
from bench.voice import ACCOUNT_SID, AUTH_TOKEN, Line

ROOT = str(Path(__file__).resolve().parent.parent)
FRAMES_PER_STEP = 2
FRAMES_PER_CHUNK = CHUNK_BYTES // 3 // 2 // 160  # a 40 ms chunk of 24 kHz is two 20 ms mu-law frames
STEP_S = 0.04
TURN_STEPS = 25  # a turn ends, and a handle comes, every second of audio
_CHUNKS = [
    json.dumps({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
        "mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(tones.MODEL_VOICES[0].pcm16(24000, k, 1)).decode()
    }}]}}}, separators=(",", ":"))
    for k in range(tones.PERIOD)
]


class LockstepCaller(Caller):
    """A bench caller that sends a frame only when told, and echoes marks at once."""

    def _tick(self) -> None:  # the real caller's 20 ms clock: not here
        self._timer = None

    def send_frame(self) -> None:
        k = len(self.sent_at)
        payload = self._payloads[k % len(self._payloads)]
        self._send(
            f'{{"event":"media","sequenceNumber":"{self._numbered()}","media":{{"track":"inbound",'
            f'"chunk":"{k + 1}","timestamp":"{k * 20}","payload":"{payload}"}},"streamSid":"{self.stream_sid}"}}'
        )
        self.sent_at.append(time.monotonic())

    def echo_marks(self) -> None:
        marks: deque[tuple[float, str]] = self._marks
        while marks:
            self._echo_mark(marks.popleft()[1])


async def _until(predicate: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not keep up")
        await asyncio.sleep(0.001)


async def _steps(calls: list[tuple[LockstepCaller, Session]], count: int, first: int) -> None:
    """`count` steps of every call at once (their turns end at staggered steps)."""
    records = [session.record for _, session in calls]
    assert all(record is not None for record in records)
    for step in range(first, first + count):
        for _ in range(FRAMES_PER_STEP):
            heard = [len(record.audio_in_at) for record in records]  # type: ignore[union-attr]
            for caller, _ in calls:
                caller.send_frame()
            await _until(lambda heard=heard: all(
                len(record.audio_in_at) > n for record, n in zip(records, heard, strict=True)))  # type: ignore[union-attr]
        got = [len(caller.audio_at) for caller, _ in calls]
        for _, session in calls:
            session.send(json.loads(_CHUNKS[step % len(_CHUNKS)]))
        await _until(lambda got=got: all(
            len(caller.audio_at) >= n + FRAMES_PER_CHUNK for (caller, _), n in zip(calls, got, strict=True)))
        for index, (caller, session) in enumerate(calls):
            caller.echo_marks()
            if (step + index) % TURN_STEPS == TURN_STEPS - 1:
                session.send({"serverContent": {"turnComplete": True}})
                session.send({"sessionResumptionUpdate": {"newHandle": f"bench-{index}-{step}", "resumable": True}})


def _start(command: list[str], env: dict[str, str], cwd: Path, log: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)  # type: ignore[arg-type]


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


async def _strace(pid: int, out: Path) -> asyncio.subprocess.Process:
    """strace -c on the service (its syscalls counted, not timed: counting is what repeats)."""
    tracer = await asyncio.create_subprocess_exec(
        "strace", "-c", "-f", "-p", str(pid), "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(1.0)  # attached
    return tracer


def _syscalls(summary: Path, steps: int) -> dict[str, float]:
    """Calls per step, by syscall, from strace -c's table."""
    counts: dict[str, float] = {}
    for line in summary.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls = int(fields[3])
            counts[fields[-1]] = round(calls / steps, 2)
    counts["total"] = round(sum(counts.values()), 2)
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _instructions(dump_prefix: Path) -> tuple[int, Path]:
    dumps = sorted(dump_prefix.parent.glob(dump_prefix.name + ".*"), key=lambda p: p.stat().st_mtime)
    text = dumps[-1].read_text(errors="replace")
    found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    assert found, f"no totals in {dumps[-1]}"
    return int(found.group(1)), dumps[-1]


async def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="phonebot-frames-"))
    ssl_context, ca_file = make_tls(workdir)
    model = FakeModel(ssl_context, Script(talks=False), driven=True)
    await model.start()
    env = {**os.environ, **service_env(model.base_url, ca_file, AUTH_TOKEN, ACCOUNT_SID)}
    env.pop("GEMINI_API_KEY", None)
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = ROOT  # this checkout's phonebot, for A/Bs
    port = free_port()
    serve = [sys.executable, "-m", "phonebot", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    dump = workdir / "callgrind.out"
    if args.callgrind:
        serve = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", *serve]
    log = (workdir / "service.log").open("wb")
    service = _start(serve, env, workdir, log)
    try:
        started = time.monotonic()
        while not await http_ok("127.0.0.1", port, "/healthz"):
            if service.poll() is not None or time.monotonic() - started > 600:
                raise RuntimeError(f"the service did not start; see {workdir / 'service.log'}")
            await asyncio.sleep(0.5)
        calls = []
        for index in range(args.calls):  # one at a time: the model's sessions come in their order
            caller = LockstepCaller(index, Line("127.0.0.1", port))
            await asyncio.wait_for(caller.dial(), 300)
            session = await model.next_session(timeout=300)
            await _until(lambda session=session: session.record is not None and session.record.cue_at is not None)
            calls.append((caller, session))
        await _steps(calls, args.warmup, 0)
        stats = ProcStats(service.pid, children=False)
        (user0, system0), wall0 = stats.cpu_split_s(), time.monotonic()
        if args.callgrind:
            _control(service.pid, "-z")
        tracer = await _strace(service.pid, workdir / "strace.txt") if args.syscalls else None
        spy_out = workdir / "spy.txt"
        spy = await profile.record(service.pid, args.steps * STEP_S * 1.5, spy_out, rate=1000) if args.profile else None
        await _steps(calls, args.steps, args.warmup)
        if args.callgrind:
            _control(service.pid, "-d")
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            await tracer.wait()
        (user1, system1), wall = stats.cpu_split_s(), time.monotonic() - wall0
        cpu, system = user1 + system1 - user0 - system0, system1 - system0
        for caller, _ in calls:
            await caller.hang_up()
        per = args.steps * args.calls  # figures are per step of one call
        result = {"calls": args.calls, "steps": args.steps, "wall_s": round(wall, 2), "service_cpu_s": round(cpu, 3),
                  "cpu_us_per_step": round(1e6 * cpu / per, 1), "kernel_us_per_step": round(1e6 * system / per, 1)}
        if tracer is not None:
            result["syscalls_per_step"] = _syscalls(workdir / "strace.txt", per)
        if spy is not None:
            await spy.wait()
            result["profile"] = {k: v for k, v in profile.summarize(spy_out, top=25).items() if k != "collapsed"}
        if args.callgrind:
            total, path = _instructions(dump)
            kept = Path(args.keep) if args.keep else Path.cwd() / f"callgrind.frames.{os.getpid()}"
            shutil.copy(path, kept)
            result |= {"instructions": total, "instructions_per_step": round(total / per),
                       "instructions_per_call_second": round(total / (per * STEP_S)), "dump": str(kept)}
        return result
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.wait(60)
        if service.poll() is None:
            service.kill()
            service.wait()
        log.close()
        await model.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frames", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="measured steps of 40 ms, both ways (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="steps before measuring (default 50)")
    parser.add_argument("--calls", type=int, default=1, help="calls stepped together (default 1); figures per call")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind's callgrind")
    parser.add_argument("--profile", action="store_true", help="sample the measured steps with py-spy")
    parser.add_argument("--syscalls", action="store_true", help="count the service's syscalls per step (strace -c)")
    parser.add_argument("--keep", help="where to keep the callgrind dump")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
