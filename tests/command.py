"""`phonebot` run as a person runs it: a separate process, in a directory of its own, with only
the environment the test gives it (no stray settings from the machine or the test run)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 60


@dataclass(frozen=True)
class Done:
    status: int
    out: str
    err: str


def environment(home: Path, **variables: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), **variables}


def run(*args: str, cwd: Path, env: dict[str, str]) -> Done:
    done = subprocess.run(
        [sys.executable, "-m", "phonebot", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    return Done(done.returncode, done.stdout, done.stderr)


async def arun(*args: str, cwd: Path, env: dict[str, str]) -> Done:
    """The same, while this test's event loop goes on serving the fakes the command talks to."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "phonebot", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def closed_port() -> int:
    """A local port nothing listens on (it was free a moment ago, and nothing here takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
