"""The package as a user gets it: a wheel built with the oldest setuptools pyproject.toml allows,
installed with its declared dependencies (and nothing else) into a fresh venv, runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "results", "*.db"
)


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fresh_venv(path: Path) -> Path:
    run(sys.executable, "-m", "venv", path)
    return path / "bin"


# Two fresh venvs and pip installing every dependency: ~65 s on a quiet machine, past the suite's 120 s
# per test on a loaded one. The limit guards against a hang (each step has its own, 600 s); how fast
# pip is proves nothing about the package.
@pytest.mark.timeout(900)
def test_a_wheel_built_with_the_oldest_setuptools_installs_and_runs(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (setuptools,) = project["build-system"]["requires"]
    oldest = re.fullmatch(r"setuptools>=([\d.]+)", setuptools)
    assert oldest, setuptools

    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    builder = fresh_venv(tmp_path / "build-venv")
    run(builder / "pip", "install", "-q", f"setuptools=={oldest[1]}")
    run(builder / "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("phonebot-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    # The softphone page is package data: every file of it, served from the installed package.
    static = ROOT / "phonebot" / "web" / "static"
    assert {f"phonebot/web/static/{path.name}" for path in static.iterdir()} <= set(names)

    # With its dependencies as declared: an import the package does not declare fails here.
    runner = fresh_venv(tmp_path / "run-venv")
    run(runner / "pip", "install", "-q", wheel)
    assert run(runner / "phonebot", "--version").strip() == f"phonebot {project['project']['version']}"

    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    out = run(runner / "phonebot", "db", "upgrade", cwd=home, env=env)
    assert re.fullmatch(rf"phonebot db upgrade: SQLite file {home}/phonebot\.db is at schema revision \w+\n", out)
    assert (home / "phonebot.db").is_file()
