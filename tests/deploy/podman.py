"""Build and run phonebot's image for real, with no registry: Debian's podman (runc), a base
image made here with debootstrap from the mirror apt already uses, and the host's CA bundle
mounted into the build for pip (see /work/shared/machine-notes.md, or `.ci/run`).

Everything podman keeps (its storage, the imported base, the layer cache) lives in one
directory of pytest's cache, never in the machine's own podman storage: the base is made
once and reused by later runs from the same checkout; CI's fresh clone starts cold.
A missing tool fails the tests that need it; it never skips them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("podman", "runc", "debootstrap")
# What the base needs beyond minbase: Python with venv (the Dockerfile's contract with BASE),
# CA certificates as the official python images have them, and useradd (passwd is in minbase).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINERS_CONF = """\
# The sandbox cannot raise resource limits, so podman's defaults fail (setrlimit): set them.
# crun fails on these hosts' cgroups; runc works.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""


class PodmanError(RuntimeError):
    pass


def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise PodmanError(
            f"{', '.join(missing)} not found: apt-get install podman runc debootstrap (scripts/test.sh and .ci/run do)"
        )
    if os.geteuid() != 0:
        raise PodmanError("building the image needs root (debootstrap, rootful podman), as CI runs")


def debian_release() -> tuple[str, str]:
    """(codename, mirror URL) of the Debian release and mirror this machine's apt uses."""
    codename = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip().strip('"')
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:  # deb822 stanzas: "URIs:" and "Suites:" lines
        for stanza in path.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and codename in suites.group(1).split():
                return codename, uris.group(1)
    one_line = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]
    for path in one_line:
        if path.is_file():
            for match in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", path.read_text(), re.MULTILINE):
                if match.group(2) == codename:
                    return codename, match.group(1)
    raise PodmanError(f"no Debian mirror for {codename!r} found in /etc/apt/sources.list*")


@dataclass
class Podman:
    """podman with its own storage under `home`, runc, and ulimits the sandbox allows."""

    home: Path
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.conf = self.home / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF)
        # podman's run state (locks, sockets) wants a short path (at most 50 characters) on a
        # filesystem a reboot empties; one per storage, as podman checks they stay paired.
        self.state = Path("/run/phonebot-test-podman") / hashlib.sha256(bytes(self.home.resolve())).hexdigest()[:12]

    def command(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root", str(self.home / "storage"),
            "--runroot", str(self.state / "run"),
            "--tmpdir", str(self.state / "tmp"),
            "--storage-driver", "overlay",
            *args,
        ]  # fmt: skip

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        result = subprocess.run(
            self.command(*args),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        if check and result.returncode != 0:
            raise PodmanError(f"podman {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result  # type: ignore[no-any-return]

    async def arun(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`run` off the event loop, so the fakes serving on it keep going meanwhile."""
        return await asyncio.to_thread(self.run, *args, timeout=timeout, check=check)

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def base_image(self) -> str:
        """A Debian base with Python, made by debootstrap; made once per cache, then reused."""
        codename, mirror = debian_release()
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
        key = "|".join([codename, mirror, arch.stdout.strip(), "minbase", *BASE_PACKAGES])
        name = f"localhost/phonebot-test-base:{codename}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if self.image_exists(name):
            return name
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="phonebot-base-", dir=self.home) as scratch:
            rootfs = Path(scratch) / "rootfs"
            result = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    codename,
                    str(rootfs),
                    mirror,
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if result.returncode != 0:
                raise PodmanError(
                    f"debootstrap {codename} {mirror} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
                )
            self.timings["debootstrap_s"] = time.monotonic() - started
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            self.run("import", "-", name, stdin=tar.stdout, timeout=300)
            if tar.wait() != 0:
                raise PodmanError("tar of the debootstrap root filesystem failed")
        self.timings["base_s"] = time.monotonic() - started
        return name

    def _remove_stale_build_containers(self) -> None:
        """Working containers of a build that was killed (a timeout, ^C) hold their layers."""
        listed = self.run("ps", "--all", "--external", "--format", "{{.ID}} {{.Status}}").stdout
        stale = [line.split()[0] for line in listed.splitlines() if line.split()[1:] == ["Storage"]]
        if stale:
            self.run("rm", "--force", *stale, timeout=300)

    def build(self, tag: str, base: str) -> str:
        """Build ./Dockerfile on `base`. Docker format: OCI images cannot carry a HEALTHCHECK.

        The build stage is tagged too, so that pruning the images a rebuild left behind keeps
        the dependency layers for the next run.
        """
        started = time.monotonic()
        self._remove_stale_build_containers()
        common = [
            "build",
            "--format", "docker",
            "--build-arg", f"BASE={base}",
            "--file", str(REPO / "Dockerfile"),
        ]  # fmt: skip
        if HOST_CA.is_file():  # the host may reach the package index through a CA of its own
            common += [
                "--volume",
                f"{HOST_CA}:/run/host-ca.crt:ro",
                "--build-arg",
                "PIP_CERT=/run/host-ca.crt",
            ]
        self.run(*common, "--target", "build", "--tag", f"{tag}-build", str(REPO), timeout=1800)
        self.run(*common, "--tag", tag, str(REPO), timeout=1800)
        self.run("image", "prune", "--force", timeout=300)
        self.timings["build_s"] = time.monotonic() - started
        return tag
