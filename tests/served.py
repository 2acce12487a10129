"""A real `phonebot serve` process, for tests about processes (signals, exits): configured through its
environment like an operator would, talking to the fakes of the test process over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from phonebot.workers import available_cores
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, Service, make_settings

ACCOUNT_SID = "AC" + "0" * 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served(Service):
    """The process, as a `Service` the call helpers of tests/phone.py can dial."""

    process: asyncio.subprocess.Process
    log_path: Path

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def exit_code(self, timeout: float) -> int:
        """Wait up to `timeout` for the process to exit; its exit code."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"phonebot serve still running after {timeout}s:\n{self.log_tail()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def events(self) -> list[dict[str, Any]]:
        """Its JSON log lines (structlog's events), in order."""
        found = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def peak_rss_bytes(self) -> int:
        """The most memory the process has held at any time (VmHWM): a brief peak counts."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def worker_pids(self) -> list[int]:
        """The workers' pids, as the parent said once they all served (none: a single process)."""
        said = [event for event in self.events() if event.get("event") == "serve.workers"]
        return list(said[-1]["pids"]) if said else []

    def worker_of(self, event: str, call_sid: str) -> int:
        """Which worker logged `event` for the call."""
        found = [e["worker"] for e in self.events() if e.get("event") == event and e.get("call_sid") == call_sid]
        assert found, f"no {event} for {call_sid}"
        return int(found[0])

    @property
    def calls(self) -> Any:
        raise AttributeError("a served process's calls are not in this process")


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, workers: int | None = 1, **env: str) -> AsyncIterator[Served]:
    """`phonebot serve` on a free port of 127.0.0.1, with the test settings plus `env`, until it is
    ready; killed at the end if it is still running (a test that expects it to exit waits for that).
    `workers`: `--workers` (None: not given, the default); ready means every worker serves."""
    port = _free_port()
    environment = {
        **os.environ,
        "PHONEBOT_PUBLIC_URL": PUBLIC_URL,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/phonebot.db",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        **env,
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "phonebot", "serve", "--host", "127.0.0.1", "--port", str(port)),
            *(() if workers is None else ("--workers", str(workers))),
            env=environment,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    served = Served(make_settings(), None, port)
    served.process, served.log_path = process, log_path
    try:
        await _until_healthy(served, several=(workers or available_cores()) > 1)
        yield served
    finally:
        if process.returncode is None:
            for pid in served.worker_pids():  # a parent killed outright leaves its workers draining
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            await process.wait()


async def _until_healthy(served: Served, several: bool, timeout: float = 30.0) -> None:
    """Until /healthz answers, and with several workers, until the parent says they all serve."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=served.http_url) as client:
        while time.monotonic() < deadline:
            if not served.running:
                raise RuntimeError(f"phonebot serve exited with {served.process.returncode}:\n{served.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                healthy = (await client.get("/healthz")).status_code == 200
                if healthy and (not several or served.worker_pids()):
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"phonebot serve not healthy within {timeout}s:\n{served.log_tail()}")
