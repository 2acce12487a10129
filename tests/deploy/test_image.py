"""The container image, built and run for real (podman, no registry): what it holds, that it
serves as a non-root user on a read-only root filesystem, that a call goes through it to the
fake Gemini Live server and back, and that SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from phonebot import codec
from tests import audio
from tests.deploy.conftest import APP_UID, Container
from tests.deploy.podman import Podman
from tests.fakes.gemini_live import FakeLiveServer
from tests.phone import answer, expected_mulaw_bytes, greet

# The first test of a run builds the image (cold: debootstrap and pip, about 2-3 minutes).
pytestmark = pytest.mark.timeout(1200)

PROBE = """
import importlib.util, json, os, shutil, sys
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "python": list(sys.version_info[:2]),
    "tools": [t for t in ("gcc", "cc", "c++", "make", "pip", "pip3") if shutil.which(t)],
    "modules": [m for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m)],
    "phonebot": shutil.which("phonebot"),
}))
"""


async def test_image_is_a_non_root_service_with_nothing_to_build_with(podman: Podman, image: str) -> None:
    config = json.loads((await podman.arun("image", "inspect", "--format", "{{json .Config}}", image)).stdout)
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["phonebot"]
    assert config["Cmd"][0] == "serve"
    port = config["Cmd"][config["Cmd"].index("--port") + 1]
    assert f"HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz" in config["Env"]
    health = json.loads((await podman.arun("image", "inspect", "--format", "{{json .HealthCheck}}", image)).stdout)
    assert "HEALTHCHECK_URL" in " ".join(health["Test"])

    probe = await podman.arun("run", "--rm", "--entrypoint", "python3", image, "-c", PROBE)
    found = json.loads(probe.stdout)
    assert (found["uid"], found["gid"]) == (APP_UID, APP_UID)
    assert (3, 11) <= tuple(found["python"]) <= (3, 13)
    assert found["tools"] == [] and found["modules"] == [], "build tools left in the final image"
    assert found["phonebot"] == "/opt/phonebot/bin/phonebot"


def _process(pid: str) -> tuple[list[str], str]:
    """(real, effective, saved and filesystem uids, command line) of a process, seen from the host."""
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    return uids, Path(f"/proc/{pid}/cmdline").read_text()


async def test_container_serves_as_non_root_with_its_state_in_the_state_directory(
    container: Container,
) -> None:
    uids, command = _process(await container.inspect("{{.State.Pid}}"))
    assert set(uids) == {str(APP_UID)}, f"the serving process runs as {uids}"
    assert "--port" in command  # it is phonebot itself, as the container's first process
    # Ready: settings complete, the SQLite database in the state directory at the right schema,
    # the booking desk open.
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"http://127.0.0.1:{container.port}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    # The image's own HEALTHCHECK command passes against the running service.
    health = await container.podman.arun("healthcheck", "run", container.id, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    # The default SQLite database was created (and migrated) in the state directory, as the user.
    database = container.state_dir / "phonebot.db"
    assert database.is_file() and database.stat().st_uid == APP_UID


async def test_a_call_goes_through_the_container(container: Container, gemini: FakeLiveServer) -> None:
    call, session = await answer(container.service, gemini)
    assert session.api_key == "test-api-key"
    bot_24k = audio.speech(audio.PHRASES["greeting"], 24000)
    await greet(session, bot_24k)
    expected = expected_mulaw_bytes(bot_24k)
    await call.wait_for_audio(expected, timeout=10)
    await asyncio.sleep(0.1)
    assert len(call.received_audio) == expected  # the whole greeting, nothing more
    reference = audio.sox_resample(bot_24k, 24000, 8000)
    delay = round(codec.Downsampler24to8.DELAY_S * 8000)
    snr = audio.snr_db(reference, codec.mulaw_to_pcm(bytes(call.received_audio)), 8000, delay)
    assert snr >= 35.0, f"greeting SNR {snr:.1f} dB through the container"

    caller_8k = audio.speech(audio.PHRASES["caller"], 8000)
    mulaw = codec.pcm_to_mulaw(caller_8k)
    mulaw += b"\xff" * (-len(mulaw) % 160)
    await call.send_audio(mulaw, realtime=False)
    await session.wait_for_audio(4 * len(mulaw), timeout=10)  # 16 kHz PCM: 4 bytes per mu-law byte
    assert session.audio_mime_types == {"audio/pcm;rate=16000"}
    assert not call.errors
    await call.stop()
    await asyncio.wait_for(session.closed.wait(), 10)  # the call's model session ends with it


async def test_container_stops_cleanly_on_sigterm(container: Container) -> None:
    started = time.monotonic()
    # `podman stop` sends the image's STOPSIGNAL, then SIGKILL after --time: exit 0 means the
    # service handled SIGTERM itself (137 would be the kill, 143 an unhandled SIGTERM).
    await container.podman.arun("stop", "--time", "60", container.id, timeout=90)
    elapsed = time.monotonic() - started
    assert await container.inspect("{{.State.ExitCode}}") == "0", await container.logs()
    assert elapsed < 15, f"an idle replica took {elapsed:.1f}s to stop"


async def test_container_drains_a_call_in_progress_on_sigterm(container: Container, gemini: FakeLiveServer) -> None:
    """As an orchestrator stops it: the call in progress goes on, no new call is routed here,
    and the container exits 0 once the caller has hung up (well before PHONEBOT_DRAIN_S=30)."""
    call, session = await answer(container.service, gemini)
    await greet(session, audio.tone(440, 24000, 0.2))
    await call.wait_for_audio(expected_mulaw_bytes(audio.tone(440, 24000, 0.2)), timeout=10)
    stopping = asyncio.create_task(container.podman.arun("stop", "--time", "60", container.id, timeout=90))
    async with httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{container.port}/readyz"
        deadline = time.monotonic() + 10
        while (ready := await client.get(url, timeout=5)).status_code == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert ready.status_code == 503 and "draining" in ready.text, ready.text
    # The call goes on: the next bot turn reaches the caller whole.
    before = len(call.received_audio)
    second_turn = audio.tone(1000, 24000, 0.3)
    await session.send_audio(second_turn)
    await session.send_turn_complete()
    await call.wait_for_audio(before + expected_mulaw_bytes(second_turn), timeout=10)
    assert not stopping.done()
    hung_up = time.monotonic()
    await call.stop()
    await asyncio.wait_for(stopping, 60)
    assert await container.inspect("{{.State.ExitCode}}") == "0", await container.logs()
    assert time.monotonic() - hung_up < 15, "the drained replica exits once its last call has ended"
