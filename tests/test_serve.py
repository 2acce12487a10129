"""`phonebot serve` as a newcomer starts it, on a terminal (a pseudo-terminal here): it says where it
listens, what to paste into Twilio, where its data is and what is missing; it answers health
checks all the same, and says it is not ready until the settings are right."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from phonebot import banner
from phonebot.settings import Settings
from tests.command import closed_port, environment
from tests.conftest import API_KEY, AUTH_TOKEN

READY_WITHIN_S = 30
REQUIRED = "it is required for calls"


@contextmanager
def serve_on_a_terminal(cwd: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Start `phonebot serve --port 0` with a terminal for its output; yield its URL and banner."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "phonebot", "serve", "--port", "0"],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
    )
    os.close(terminal)
    try:
        # Up to the banner's last line: what follows (with several workers, the line saying they
        # all serve) may come in the same read.
        screen = _read_until(controller, process, re.compile(r"(To fix: .*|sets them for you\.\))\r?\n"))
        url = re.search(r"phonebot is listening on (http://\S+) ", screen)
        assert url, screen
        yield url[1], screen.replace("\r\n", "\n")
    finally:
        process.terminate()
        process.wait(timeout=10)
        os.close(controller)


def _read_until(controller: int, process: subprocess.Popen[bytes], end: re.Pattern[str]) -> str:
    """What the terminal shows, up to the end of `end`'s first match."""
    screen, deadline = "", time.monotonic() + READY_WITHIN_S
    while not (found := end.search(screen)):
        assert time.monotonic() < deadline and process.poll() is None, f"no banner; the terminal shows:\n{screen}"
        if select.select([controller], [], [], 0.2)[0]:
            screen += os.read(controller, 65536).decode(errors="replace")
    return screen[: found.end()]


def test_with_no_settings_it_names_what_is_missing_and_serves_health_but_is_not_ready(tmp_path: Path) -> None:
    with serve_on_a_terminal(tmp_path, environment(tmp_path)) as (url, screen):
        assert f"phonebot is listening on {url} (this machine only; a container needs --host 0.0.0.0)." in screen
        assert url.startswith("http://127.0.0.1:")
        assert f"  Call the bot from a browser: {url}/phone (set PHONEBOT_API_KEY first: it asks for it).\n" in screen
        assert f"  Database: SQLite file {tmp_path}/phonebot.db\n" in screen
        assert "Set PHONEBOT_PUBLIC_URL (your tunnel's or server's https URL) to see what to paste" in screen
        banner = screen[screen.index("Not ready for calls yet:") :].splitlines()
        assert banner == [
            "Not ready for calls yet:",
            f"  - GOOGLE_API_KEY (or GEMINI_API_KEY) is not set; {REQUIRED} (or GOOGLE_GENAI_USE_VERTEXAI=true)",
            f"  - PHONEBOT_PUBLIC_URL is not set; {REQUIRED}",
            f"  - TWILIO_ACCOUNT_SID is not set; {REQUIRED}",
            f"  - TWILIO_AUTH_TOKEN is not set; {REQUIRED}",
            "To fix: `cp .env.example .env`, fill it in, check it with `phonebot doctor`, and start again.",
        ]
        assert "{" not in screen  # plain words: no JSON log lines on a terminal

        assert httpx.get(f"{url}/healthz").json() == {"ok": True}
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503
        error = ready.json()["error"]
        assert error["code"] == "not_ready"
        assert [reason.split(" ")[0] for reason in error["reasons"]] == [
            "GOOGLE_API_KEY", "PHONEBOT_PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"
        ]


def test_with_settings_it_says_what_to_paste_into_twilio_and_is_ready(tmp_path: Path) -> None:
    env = environment(
        tmp_path,
        GOOGLE_API_KEY=API_KEY,
        PHONEBOT_PUBLIC_URL="https://bot.example.test/",
        TWILIO_ACCOUNT_SID="AC" + "0" * 32,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        DATABASE_URL="sqlite:///data/calls.db",
    )
    with serve_on_a_terminal(tmp_path, env) as (url, screen):
        softphone = f"{url}/phone on this machine, https://bot.example.test/phone from anywhere"
        assert f"  Call the bot from a browser: {softphone} (set PHONEBOT_API_KEY first: it asks for it).\n" in screen
        assert screen.endswith(
            f"  Database: SQLite file {tmp_path}/data/calls.db\n"
            "  In the Twilio console, on your number:\n"
            "    A call comes in (Webhook, HTTP POST)  https://bot.example.test/twilio/voice\n"
            "    Call status changes (HTTP POST)       https://bot.example.test/twilio/status\n"
            "  (`phonebot setup-number` sets them for you.)\n"
        )
        assert "Not ready" not in screen
        assert httpx.get(f"{url}/readyz").json() == {"ready": True, "active_calls": 0}


def test_without_a_terminal_the_same_facts_are_log_events(tmp_path: Path) -> None:
    # Under systemd or in a container, logs are JSON: the banner's facts come as events instead of a
    # paragraph that would break the stream; the voice webhook names the setting it lacks.
    port = closed_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "phonebot", "serve", "--port", str(port)],
        cwd=tmp_path, env=environment(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"ok": True}
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        voice = httpx.post(f"http://127.0.0.1:{port}/twilio/voice", data={"CallSid": "CA1"})
        assert voice.status_code == 500
        assert voice.json()["error"] == {
            "code": "missing_setting",
            "message": "PHONEBOT_PUBLIC_URL is not set; it is required to answer calls (Twilio signs this URL)",
        }
    finally:
        process.terminate()
        stderr = process.communicate(timeout=10)[1]
    events = [json.loads(line) for line in stderr.splitlines()]  # every line: JSON
    (listening,) = [event for event in events if event["event"] == "serve.listening"]
    assert listening["url"] == f"http://127.0.0.1:{port}"
    assert listening["softphone"] == f"http://127.0.0.1:{port}/phone"
    assert listening["database"] == f"SQLite file {tmp_path}/phonebot.db"
    missing = ("GOOGLE_API_KEY", "PHONEBOT_PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")
    problems = [event for event in events if event["event"] == "settings.problem"]
    assert [(event["variable"], event["not_ready"]) for event in problems] == [(name, True) for name in missing]


def test_the_softphone_is_where_a_browser_on_this_machine_reaches_it() -> None:
    settings = Settings(api_key="k" * 32, public_url=None)
    assert banner.softphone_urls(settings, "0.0.0.0", 8000) == ["http://127.0.0.1:8000/phone"]
    assert banner.softphone_urls(settings, "::1", 8000) == ["http://[::1]:8000/phone"]
    line = banner.lines(settings, "127.0.0.1", 8000)[1]
    assert line == "  Call the bot from a browser: http://127.0.0.1:8000/phone (it asks for PHONEBOT_API_KEY)."
