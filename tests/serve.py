"""`phonebot serve` as a real process on 127.0.0.1, for tests about what the process does (uvicorn's
options, memory), with the settings of `tests.conftest` and the fake Live server's environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import AUTH_TOKEN, PUBLIC_URL


@dataclass
class Served:
    port: int
    pid: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def peak_rss_bytes(self) -> int:
        """The most memory the process has held at any time (VmHWM): a brief peak counts."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(workdir: Path, **env: str) -> AsyncIterator[Served]:
    """Run `python -m phonebot serve` in `workdir` (no .env there) until the block ends."""
    port = _free_port()
    settings = {
        "PHONEBOT_PUBLIC_URL": PUBLIC_URL,
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/phonebot.db",
        "LOG_FORMAT": "json",
        **env,
    }
    log = workdir / "serve.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "phonebot", "serve", "--host", "127.0.0.1", "--port", str(port),
            env={**os.environ, **settings},
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            await _ready(process, port)
            yield Served(port, process.pid, log)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _ready(process: asyncio.subprocess.Process, port: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout), httpx.AsyncClient() as client:
        while process.returncode is None:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"phonebot serve exited ({process.returncode}); see serve.log")
