"""Fixtures for the image tests: the image, built once per run, and a container of it serving
on the host network (so it reaches the fake Gemini Live server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH_TOKEN, PUBLIC_URL, Service, make_settings
from tests.deploy.podman import Podman, PodmanError, require_tools
from tests.fakes.gemini_live import FakeLiveServer

IMAGE = "localhost/phonebot:test"
APP_UID = 10001  # the Dockerfile's user
CONTAINER_CA = "/run/phonebot/fake-gemini-ca.pem"
_TIMINGS = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def podman(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Podman:
    try:
        require_tools()
    except PodmanError as error:
        pytest.fail(str(error))  # CI installs these: missing means broken, never skipped
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    home = Path(cache.mkdir("phonebot-podman")) if cache is not None else tmp_path_factory.mktemp("podman")
    return Podman(home)


@pytest.fixture(scope="session")
def image(podman: Podman, request: pytest.FixtureRequest) -> str:
    """The image of ./Dockerfile, on a base made here (debootstrap), built once per run."""
    started = time.monotonic()
    try:
        podman.build(IMAGE, podman.base_image())
    except PodmanError as error:
        pytest.fail(str(error))
    podman.timings["total_s"] = time.monotonic() - started
    request.config.stash[_TIMINGS] = podman.timings
    return IMAGE


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    timings = config.stash.get(_TIMINGS, None)
    if timings:
        shown = ", ".join(f"{name} {seconds:.1f}" for name, seconds in timings.items())
        terminalreporter.write_line(f"phonebot image (podman): {shown}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Container:
    podman: Podman
    id: str
    port: int
    state_dir: Path

    @property
    def service(self) -> Service:
        """The container as the tests' call helpers see a service: signed with the same settings."""
        return Service(make_settings(), app=None, port=self.port)

    async def inspect(self, template: str) -> str:
        return (await self.podman.arun("inspect", "--format", template, self.id)).stdout.strip()

    async def logs(self) -> str:
        result = await self.podman.arun("logs", self.id, check=False)
        return result.stdout + result.stderr

    async def running(self) -> bool:
        return await self.inspect("{{.State.Running}}") == "true"


async def _wait_healthy(container: Container, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(f"http://127.0.0.1:{container.port}/healthz", timeout=2)
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if not await container.running():
                break
            await asyncio.sleep(0.2)
    logs = await container.logs()
    pytest.fail(f"the container did not answer /healthz within {timeout}s:\n{logs[-4000:]}")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """The container's state directory (/var/lib/phonebot), owned by the image's user."""
    with tempfile.TemporaryDirectory(prefix="phonebot-state-") as path:
        os.chown(path, APP_UID, APP_UID)
        yield Path(path)


@pytest.fixture
async def container(
    podman: Podman, image: str, gemini: FakeLiveServer, tls: tuple[Any, str], state_dir: Path
) -> AsyncIterator[Container]:
    """`phonebot serve` in the image, read-only root filesystem, on the host network; its Gemini
    is the fake Live server, trusted through its CA file mounted into the container."""
    _server_ssl, ca_file = tls
    port = _free_port()
    env = {
        "GOOGLE_GEMINI_BASE_URL": gemini.base_url,
        "SSL_CERT_FILE": CONTAINER_CA,
        "GOOGLE_API_KEY": "test-api-key",
        "PHONEBOT_PUBLIC_URL": PUBLIC_URL,
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PHONEBOT_DRAIN_S": "30",
        "HEALTHCHECK_URL": f"http://127.0.0.1:{port}/healthz",
        "LOG_LEVEL": "debug",
    }
    name = f"phonebot-test-{uuid.uuid4().hex[:8]}"
    args = [
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--health-interval",
        "disable",
    ]
    args += ["--volume", f"{ca_file}:{CONTAINER_CA}:ro", "--volume", f"{state_dir}:/var/lib/phonebot"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    started = await podman.arun(*args, image, "serve", "--host", "127.0.0.1", "--port", str(port))
    container = Container(podman, started.stdout.strip(), port, state_dir)
    try:
        await _wait_healthy(container)
        yield container
    finally:
        await podman.arun("rm", "--force", "--time", "0", container.id, check=False)
