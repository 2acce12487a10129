"""The service under test as a subprocess, and what /proc says about a process.

`Service` starts `python -m phonebot serve --workers N` on 127.0.0.1 (one process by default)
with the bench's settings, in a scratch working directory so that no `.env` or database of the
checkout is used, and stops it again. `ProcStats` reads CPU time and RSS of any pid from /proc,
with its child processes' (a parent and its workers are one service).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The cores this process may use, as it started (before it pins itself anywhere).
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


class ProcStats:
    """CPU and memory of a process and its children (a `serve --workers N` parent and its workers);
    children that have exited no longer count."""

    def __init__(self, pid: int, children: bool = True) -> None:
        self.pid = pid
        self._children = children

    def pids(self) -> list[int]:
        found = [self.pid]
        if self._children:
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{self.pid}/task"):
                    with open(f"/proc/{self.pid}/task/{task}/children", "rb") as f:
                        found += [int(pid) for pid in f.read().split()]
        return found

    @property
    def processes(self) -> int:
        return len(self.pids())

    def cpu_s(self) -> float:
        """utime + stime of all the processes' threads, in seconds."""
        return sum(self.cpu_split_s())

    def cpu_split_s(self) -> tuple[float, float]:
        """(utime, stime): CPU in user space and in the kernel (syscalls, loopback TCP), seconds."""
        user = system = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
                user, system = user + int(fields[11]), system + int(fields[12])  # fields 14 and 15 of proc(5)
        return user / CLK_TCK, system / CLK_TCK

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy, steal) clock ticks since boot, from /proc/stat (busy includes steal)."""
    ticks = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                name, *values = line.split()
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values[:8])
                ticks[int(name[3:])] = (user + nice + system + irq + softirq + steal, steal)
    return ticks


class Neighbours:
    """CPU that processes other than the service and the bench use, every 200 ms. Another
    program that takes the service's core for a moment shows up as latency the service did not
    cause; this tells such a step apart. Shares are % of one core."""

    def __init__(self, service: ProcStats | None, me: ProcStats, service_core: int | None) -> None:
        self._service, self._me, self._core = service, me, service_core
        self._task: asyncio.Task[None] | None = None
        self.other_pct: list[float] = []  # all cores, per interval
        self.service_core_other_pct: list[float] = []  # the service's core, per interval (if pinned)
        self.steal_s = 0.0

    def start(self, period_s: float = 0.2) -> None:
        self._task = asyncio.create_task(self._run(period_s))

    async def _run(self, period_s: float) -> None:
        before = self._sample()
        while True:
            await asyncio.sleep(period_s)
            after = self._sample()
            self._add(before, after)
            before = after

    def _sample(self) -> tuple[float, dict[int, tuple[int, int]], float, float]:
        service = self._service.cpu_s() if self._service else 0.0
        return time.monotonic(), core_ticks(), service, self._me.cpu_s()

    def _add(self, before: tuple, after: tuple) -> None:
        seconds = after[0] - before[0]
        ticks0, ticks1 = before[1], after[1]
        busy = sum(ticks1[c][0] - ticks0[c][0] for c in ticks1 if c in ticks0) / CLK_TCK
        self.steal_s += sum(ticks1[c][1] - ticks0[c][1] for c in ticks1 if c in ticks0) / CLK_TCK
        service, me = after[2] - before[2], after[3] - before[3]
        self.other_pct.append(max(0.0, 100 * (busy - service - me) / seconds))
        if self._core is not None and self._core in ticks0:
            core_busy = (ticks1[self._core][0] - ticks0[self._core][0]) / CLK_TCK
            self.service_core_other_pct.append(max(0.0, 100 * (core_busy - service) / seconds))

    async def stop(self, seconds: float) -> dict:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        mean = sum(self.other_pct) / len(self.other_pct) if self.other_pct else 0.0
        worst = max(self.service_core_other_pct, default=None)
        return {
            "other_cpu_pct": round(mean, 1),
            "service_core_other_max_pct": None if worst is None else round(worst, 1),
            "steal_pct": round(100 * self.steal_s / seconds, 1),
        }


def pin(pid: int, cores: set[int]) -> str | None:
    """Pin pid (0: this process) to cores; None if this machine or OS does not allow it."""
    if len(CORES) < 2 or not cores <= set(CORES):
        return None
    try:
        os.sched_setaffinity(pid, cores)
    except OSError:
        return None
    return ",".join(map(str, sorted(cores)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(model_url: str, ca_file: str | Path, auth_token: str, account_sid: str) -> dict[str, str]:
    """What the service needs to take the bench's calls and reach the fake model."""
    return {
        "PHONEBOT_PUBLIC_URL": "https://bench.invalid",
        "TWILIO_AUTH_TOKEN": auth_token,
        "TWILIO_ACCOUNT_SID": account_sid,
        "GOOGLE_API_KEY": "bench-api-key",
        "GOOGLE_GEMINI_BASE_URL": model_url,
        "SSL_CERT_FILE": str(ca_file),
        "LOG_LEVEL": "warning",
        "PHONEBOT_MAX_CALLS": "100000",  # the bench finds the capacity; the cap would refuse past 50
    }


async def reachable(host: str, port: int, health_path: str | None, wait_s: float) -> bool:
    """Whether, within wait_s, GET health_path answers 200 (or, with no path, a TCP connect works)."""
    deadline = time.monotonic() + wait_s
    while True:
        if health_path is not None:
            if await http_ok(host, port, health_path):
                return True
        else:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    _, writer = await asyncio.open_connection(host, port)
                    writer.close()
                    return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.2)


async def http_ok(host: str, port: int, path: str, timeout: float = 1.0) -> bool:
    """Whether GET path answers 200."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            status = await reader.readline()
            writer.close()
            return b" 200 " in status
    except (OSError, TimeoutError):
        return False


def listeners(port: int) -> int:
    """Sockets listening on a TCP port of this machine (IPv4), whoever holds them: /proc/net/tcp."""
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 0
    local = f":{port:04X}"
    return sum(1 for row in rows if (fields := row.split())[1].endswith(local) and fields[3] == "0A")


class Service:
    """`python -m phonebot serve --workers N` on 127.0.0.1:port."""

    def __init__(self, env: dict[str, str], workdir: Path, core: int | None, workers: int = 1) -> None:
        self.port = free_port()
        self.pinned: str | None = None
        self._log = open(workdir / f"service-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        base = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "DATABASE_URL")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "phonebot", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers)],
            env={**base, **env},
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if core is not None:
            # Before the interpreter has started any thread, so every later thread inherits it.
            self.pinned = pin(self._proc.pid, {core})
        self.stats = ProcStats(self._proc.pid)
        self.workers = workers
        self.log_path = Path(self._log.name)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def ready(self, timeout: float = 30.0) -> None:
        """Until /healthz answers and every worker listens (each has a socket of its own on the port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"service exited ({self._proc.returncode}); see {self.log_path}")
            listening = self.workers == 1 or listeners(self.port) >= self.workers
            if listening and await http_ok("127.0.0.1", self.port, "/healthz"):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"service not ready after {timeout}s; see {self.log_path}")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (its drain: no call is left), then SIGKILL, workers first, if it has not exited in time."""
        if self._proc.poll() is None:
            workers = self.stats.pids()[1:]
            self._proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + timeout
            while self._proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self._proc.poll() is None:
                for pid in workers:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                self._proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(5)
        self._log.close()
