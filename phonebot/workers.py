"""`phonebot serve --workers N`: N processes behind one port, each with its own event loop.

A call's audio is per-message work in Python: one process uses one core, whatever the machine
has. So the parent binds the port and starts N workers (fresh interpreters, `spawn`), then only
watches: it holds no call and runs no event loop.

- The port: on Linux every worker listens on a socket of its own bound to it with SO_REUSEPORT,
  and the kernel spreads new connections over them evenly; elsewhere they share the parent's
  listening socket. The parent keeps its socket bound, so the port stays taken while it runs.
- A call whose webhook and stream reach different workers is handed to its owner
  (`phonebot.siblings`): the stream runs where its early model session is.
- PHONEBOT_MAX_CALLS is the replica's: each worker publishes the calls it holds in a slot of a
  shared file (`SlotTally`) and admits against the sum.
- Metrics: prometheus-client's multiprocess mode, in a folder of the run's; any worker's
  `/metrics` answers for the whole replica (`phonebot.metrics`).
- Signals: SIGTERM or SIGINT to the parent starts the drain in every worker; a second one ends
  their calls at once. Workers are told over a pipe and leave the signals they get themselves
  to the parent: a terminal's Ctrl-C, `timeout` or a service manager signal the whole process
  group, and one signal must not count as two. A worker whose parent has gone drains. The
  parent exits 0 once every worker has drained and exited 0.
- A worker that dies while serving is logged and replaced (its calls are lost with it; their
  records are finalised as after any crash); one that fails before it serves stops the replica,
  with its exit status, as a single process would.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DRAIN, HURRY, READY = b"drain", b"hurry", b"ready"  # parent -> worker, worker -> parent
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTARTS_ALLOWED = 5  # workers replaced within RESTART_WINDOW_S before the replica gives up
RESTART_WINDOW_S = 60.0


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, within a cgroup CPU quota (a container's
    CPU limit) if one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 `cpu.max`, or v1 CFS quota and period); None if unlimited."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        v1 = Path("/sys/fs/cgroup/cpu")
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        return None if quota_us <= 0 else quota_us / int((v1 / "cpu.cfs_period_us").read_text())
    return None


class SlotTally:
    """Calls held per worker: one int64 slot each in a file every worker maps. No lock: each slot
    has one writer (its worker; the parent zeroes the slot of a worker that died)."""

    def __init__(self, path: Path, count: int, index: int | None = None) -> None:
        self._index = index
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), 8 * count)
        self._slots = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, path: Path, count: int) -> SlotTally:
        path.write_bytes(bytes(8 * count))
        return cls(path, count)

    def set(self, held: int) -> None:
        assert self._index is not None
        self._slots[self._index] = held

    def total(self) -> int:
        return sum(self._slots)

    def clear(self, index: int) -> None:
        self._slots[index] = 0


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port (not listening: uvicorn listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


# SO_REUSEPORT spreads connections over the listeners on Linux; elsewhere it hands them all to one.
REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told when it starts."""

    index: int
    count: int
    host: str
    port: int
    run_dir: Path
    listener: socket.socket | None  # the parent's, to share; None: bind one of our own (SO_REUSEPORT)


class Worker:
    """A worker's side of the replica, inside the worker: its socket, its siblings, its parent."""

    def __init__(self, spec: WorkerSpec, link: Connection) -> None:
        from phonebot.siblings import Siblings

        self.spec = spec
        self.index = spec.index
        self.tally = SlotTally(spec.run_dir / "calls", spec.count, spec.index)
        self.siblings = Siblings(spec.run_dir, spec.index, spec.count)
        self._link = link

    def socket(self) -> socket.socket:
        if self.spec.listener is not None:
            return self.spec.listener
        return bind(self.spec.host, self.spec.port, reuse_port=True)

    def listen_to_parent(self, on_request: Any) -> None:
        """`on_request(hurry)` for each drain request the parent passes on; a parent gone is a drain."""
        import asyncio

        loop = asyncio.get_running_loop()
        fd = self._link.fileno()

        def read() -> None:
            try:
                message = self._link.recv_bytes()
            except (EOFError, OSError):
                loop.remove_reader(fd)
                log.warning("worker.parent_gone")
                on_request(False, "parent gone")
                return
            if message in (DRAIN, HURRY):
                on_request(message == HURRY, "parent")

        loop.add_reader(fd, read)

    def ready(self) -> None:
        with contextlib.suppress(OSError):
            self._link.send_bytes(READY)


def serve_worker(spec: WorkerSpec, link: Connection) -> None:
    """A worker process's life (the spawned process's target)."""
    for signum in SIGNALS:  # the parent's to act on (the server says so once it runs)
        signal.signal(signum, signal.SIG_IGN)
    from phonebot import cli

    sys.exit(cli.serve_process(spec.host, spec.port, Worker(spec, link)))


@dataclass
class _Child:
    index: int
    process: BaseProcess
    link: Connection
    ready: bool = False


class Supervisor:
    """The parent: starts the workers, passes signals on as drain requests, replaces a worker that
    dies, and exits when they all have."""

    def __init__(self, count: int, host: str, port: int) -> None:
        self.count = count
        self.run_dir = Path(tempfile.mkdtemp(prefix="phonebot-serve-"))
        metrics = self.run_dir / "metrics"
        metrics.mkdir()
        os.environ[METRICS_ENV] = str(metrics)  # before any worker imports prometheus_client
        self.listener = bind(host, port, reuse_port=REUSE_PORT)
        self.host, self.port = host, self.listener.getsockname()[1]
        self.tally = SlotTally.create(self.run_dir / "calls", count)
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, _Child] = {}
        self._signals: list[int] = []
        self._draining = False
        self._hurried = False
        self._failed: int | None = None  # exit status, once the replica cannot go on
        self._restarts: list[float] = []
        self._announced = False  # every worker serves, and it has been said

    def run(self, on_ready: Any = None) -> int:
        """Until every worker has exited; the exit status. `on_ready(host, port)` once the first
        worker serves (the banner: the port answers)."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in SIGNALS}
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        answering = False
        try:
            for index in range(self.count):
                self._start(index)
            while self._children:
                ready = wait([wake_r, *(c.link for c in self._children.values()),
                              *(c.process.sentinel for c in self._children.values())])
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                for child in list(self._children.values()):
                    if child.link in ready:
                        self._from_worker(child)
                    if child.process.sentinel in ready:
                        self._exited(child)
                if on_ready is not None and not answering and any(c.ready for c in self._children.values()):
                    answering = True  # the port answers from now on
                    on_ready(self.host, self.port)
                serving = all(c.ready for c in self._children.values())
                if serving and not self._announced and not self._draining:
                    self._announced = True  # again after a worker is replaced
                    pids = [self._children[index].process.pid for index in sorted(self._children)]
                    log.info("serve.workers", workers=self.count, pids=pids)
                self._handle_signals()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for child in self._children.values():  # only after an error of the parent's own
                child.process.kill()
            self.listener.close()
            wake_r.close()
            wake_w.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return self._failed if self._failed is not None else 0

    def _start(self, index: int) -> None:
        parent_end, child_end = self._context.Pipe()
        spec = WorkerSpec(index, self.count, self.host, self.port, self.run_dir,
                          None if REUSE_PORT else self.listener)
        process = self._context.Process(target=serve_worker, args=(spec, child_end), name=f"phonebot-worker-{index}")
        process.start()
        child_end.close()
        self._children[index] = _Child(index, process, parent_end)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            name = signal.Signals(self._signals.pop(0)).name
            if not self._draining:
                log.info("serve.draining", signal=name, workers=len(self._children))
                self._draining = True
                self._tell_all(DRAIN)
            elif not self._hurried:
                log.warning("serve.hurrying", signal=name, workers=len(self._children))
                self._hurried = True
                self._tell_all(HURRY)

    def _tell_all(self, message: bytes) -> None:
        for child in self._children.values():
            with contextlib.suppress(OSError):
                child.link.send_bytes(message)

    def _from_worker(self, child: _Child) -> None:
        try:
            message = child.link.recv_bytes()
        except (EOFError, OSError):
            return  # it is exiting: its sentinel says so
        if message == READY:
            child.ready = True

    def _exited(self, child: _Child) -> None:
        child.process.join()
        code = child.process.exitcode
        del self._children[child.index]
        child.link.close()
        self.tally.clear(child.index)
        _forget_metrics(child.process.pid)
        if self._draining:
            log.info("serve.worker_exited", worker=child.index, pid=child.process.pid, exit_code=code)
            if code != 0 and self._failed is None:
                self._failed = 1
            return
        if not child.ready or not self._may_restart():
            # It failed before serving (settings, the port, the app), or keeps dying: so would the rest.
            log.error("serve.worker_failed", worker=child.index, pid=child.process.pid, exit_code=code)
            self._failed = code if code and code > 0 else 1
            self._draining = self._hurried = True
            self._tell_all(HURRY)
            return
        log.error("serve.worker_died", worker=child.index, pid=child.process.pid, exit_code=code)
        self._announced = False
        self._start(child.index)

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
        return len(self._restarts) <= RESTARTS_ALLOWED


def _forget_metrics(pid: int | None) -> None:
    """A dead worker's live gauges (calls active) no longer count; its counters still do."""
    if pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
