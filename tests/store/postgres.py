"""A throwaway PostgreSQL cluster for the tests: initdb into a temp dir, serve on 127.0.0.1.

The binaries are Debian's `postgresql` package (`scripts/test.sh` and `.ci/run` install it).
Missing binaries fail the tests rather than skip them: the no-double-booking guarantee on
PostgreSQL is only as good as the test that runs there. PostgreSQL refuses to run as root, so
as root the server runs as the `postgres` system user, in a temp dir that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not versions:
        raise RuntimeError(
            "PostgreSQL binaries not found (no initdb on PATH or under /usr/lib/postgresql/*/bin): "
            "apt-get install postgresql, as scripts/test.sh does"
        )
    return Path(versions[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    port: int
    as_user: list[str]  # command prefix that runs a binary as the cluster's owner
    bin_dir: Path

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        # cwd: the postgres user may not be allowed into the directory the tests run from.
        subprocess.run(
            [*self.as_user, str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    @classmethod
    def start(cls) -> Cluster:
        bin_dir = _bin_dir()
        root = Path(tempfile.mkdtemp(prefix="phonebot-pg-"))
        as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(root, owner.pw_uid, owner.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        cluster = cls(root, _free_port(), as_user, bin_dir)
        try:
            cluster._run(
                "initdb",
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
            # fsync off and no socket outside the temp dir: a cluster that lives for one test run.
            options = (
                f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            cluster._run(
                "pg_ctl", "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "start"
            )
        except subprocess.CalledProcessError as error:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"PostgreSQL did not start: {error.stderr!r}\n{log}") from error
        return cluster

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
