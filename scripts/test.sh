#!/usr/bin/env bash
# Set up and run the tests on a fresh machine: system packages (when missing), a venv, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
# tests/deploy builds and runs the container image (podman, runc, debootstrap; see
# tests/deploy/podman.py) and checks the systemd units (systemd-analyze).
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
# tests/web drive the softphone page in Debian's Chromium through Playwright (never `playwright install`).
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# Lint and types first (seconds): ruff's rules and mypy's scope are in pyproject.toml.
.venv/bin/ruff check --quiet .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
