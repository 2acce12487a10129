"""The load bench runs end to end and produces its figures (not how good they are), against
phonebot and against a bot with other habits (tests/peer_bot.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.fake_model import make_tls
from bench.service import free_port, service_env
from bench.voice import ACCOUNT_SID, AUTH_TOKEN

ROOT = Path(__file__).parent.parent
STEP = ["--calls", "3", "--seconds", "3", "--quiet", "0", "--retries", "0"]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _bench(out: Path, *args: str, service_log: Path | None = None) -> tuple[dict, str]:
    command = [sys.executable, "-m", "bench.load", *STEP, "--out", str(out), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    log = service_log.read_text()[-3000:] if service_log and service_log.is_file() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log
    assert "calls" in done.stdout  # the table was printed
    return json.loads(out.read_text()), done.stdout


def _step_has_figures(report: dict) -> dict:
    assert report["machine"]["cpus"] >= 1
    assert "max_calls_passed" in report["verdict"]
    (step,) = report["steps"]
    assert step["calls"] == 3 and step["failed_calls"] == 0 and step["calls_without_session"] == 0
    assert step["sessions_unmatched"] == 0 and step["caller_errors"] == 0
    for key in ("caller_to_model_ms", "model_to_caller_ms", "first_audio_ms", "session_open_ms"):
        assert step[key]["count"] > 0, key
        assert all(_finite(step[key][q]) for q in ("p50", "p99", "max")), (key, step[key])
    frames = step["frames"]
    assert frames["caller_sent"] > 0 and frames["model_sent"] > 0
    for key in ("core_pct", "pct_per_call", "ms_per_call_second"):
        assert _finite(step["service_cpu"][key]), key
    assert _finite(step["service_rss"]["mb_per_call"])
    assert _finite(step["loadgen_cpu_pct"])
    return step


def test_bench_load_smoke(tmp_path: Path) -> None:
    report, _ = _bench(tmp_path / "load.json")
    step = _step_has_figures(report)
    assert step["sessions_matched_by"] == "caller number"
    assert step["webhook_ms"]["count"] == 3  # every call came in through the signed voice webhook
    frames = step["frames"]
    assert frames["marks_echoed"] > 0
    # phonebot keeps every frame each way, and has nothing to discard: its callers' player does.
    assert frames["caller_lost"] == frames["model_lost"] == 0, frames
    assert frames["caller_dropped_at_start"] == frames["model_discarded_on_barge_in"] == 0, frames


def test_bench_drives_a_bot_without_healthz_or_caller_numbers(tmp_path: Path) -> None:
    model_port, peer_port = free_port(), free_port()
    _, ca = make_tls(tmp_path / "tls")
    env = {**os.environ, **service_env(f"https://127.0.0.1:{model_port}", ca, AUTH_TOKEN, ACCOUNT_SID)}
    log = tmp_path / "peer.log"
    with log.open("wb") as sink:
        peer = subprocess.Popen([sys.executable, "-m", "tests.peer_bot", "--port", str(peer_port)], cwd=ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        report, stdout = _bench(
            tmp_path / "peer.json", "--target", f"ws://127.0.0.1:{peer_port}", "--pid", str(peer.pid),
            "--health-path", "none", "--voice-path", "none", "--media-path", "/media",
            "--model-port", str(model_port), "--tls-dir", str(tmp_path / "tls"), service_log=log)
    finally:
        peer.send_signal(signal.SIGINT)
        try:
            peer.wait(10)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()
    step = _step_has_figures(report)
    assert step["sessions_matched_by"] == "dial order"
    assert step["webhook_ms"]["count"] == 0
    frames = step["frames"]
    # The peer drops what comes before its session is ready: at least the frame sent with `start`.
    assert frames["caller_dropped_at_start"] >= 3, frames
    # It queues 60 ms of bot audio and empties the queue on a barge-in: at least a 40 ms chunk.
    assert frames["barge_ins"] >= 1 and step["barge_in_ms"]["count"] >= 1 and frames["clears_missing"] == 0, frames
    assert frames["model_discarded_on_barge_in"] >= 2 * frames["barge_ins"], frames
    # Nothing else goes missing, and none of that is counted as lost.
    assert frames["caller_lost"] == frames["model_lost"] == 0, frames
    assert "dropped@start" in stdout
