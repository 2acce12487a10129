"""The load bench runs end to end and produces its figures (not how good they are)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_bench_load_smoke(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    command = [sys.executable, "-m", "bench.load", "--calls", "3", "--seconds", "3", "--quiet", "0", "--retries", "0",
               "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())

    assert report["machine"]["cpus"] >= 1
    (step,) = report["steps"]
    assert step["calls"] == 3 and step["failed_calls"] == 0 and step["calls_without_session"] == 0
    for key in ("caller_to_model_ms", "model_to_caller_ms", "first_audio_ms", "session_open_ms"):
        assert step[key]["count"] > 0, key
        assert all(_finite(step[key][q]) for q in ("p50", "p99", "max")), (key, step[key])
    assert step["barge_in_ms"]["count"] >= 0
    frames = step["frames"]
    assert frames["caller_sent"] > 0 and frames["model_sent"] > 0 and frames["marks_echoed"] > 0
    assert frames["caller_lost"] >= 0 and frames["model_lost"] >= 0
    for key in ("core_pct", "pct_per_call", "ms_per_call_second"):
        assert _finite(step["service_cpu"][key]), key
    assert _finite(step["service_rss"]["mb_per_call"])
    assert _finite(step["loadgen_cpu_pct"])
    assert "max_calls_passed" in report["verdict"]
    assert "calls" in done.stdout  # the table was printed
