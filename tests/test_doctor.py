"""`phonebot doctor`: every bad value named from the file it is given, and `--online` saying which
of the database, Twilio and Gemini failed and why, against local peers that answer as the real ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.command import arun, closed_port, environment, run
from tests.conftest import API_KEY, AUTH_TOKEN
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_rest import FakeTwilioRest

ACCOUNT_SID = "AC" + "5" * 32
GOOD = {
    "GOOGLE_API_KEY": API_KEY,
    "PHONEBOT_PUBLIC_URL": "https://bot.example.test",
    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
}
# What the issue saw pass: the template's placeholders, made-up credentials, a short API key.
BAD = {
    "GOOGLE_API_KEY": "my-gemini-key",
    "PHONEBOT_PUBLIC_URL": "https://phonebot.example.com",
    "TWILIO_ACCOUNT_SID": "hello",
    "TWILIO_AUTH_TOKEN": "hunter2",
    "PHONEBOT_API_KEY": "changeme",
    "TWILIO_PHONE_NUMBER": "+14155550199",
    "TRANSCRIPT_WEBHOOK_URL": "https://crm.example.com/hooks/phonebot",
    "TRANSCRIPT_WEBHOOK_SECRET": "whsec_...",
}


def env_file(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def test_every_bad_value_in_the_file_is_named(tmp_path: Path) -> None:
    settings = env_file(tmp_path / "phonebot.env", BAD)
    done = run("doctor", "--env-file", str(settings), cwd=tmp_path, env=environment(tmp_path))
    assert done.status == 1
    assert f"settings from {settings}" in done.out
    expected = [
        "GOOGLE_API_KEY does not look like a Gemini API key",
        "PHONEBOT_PUBLIC_URL https://phonebot.example.com is a placeholder (example.com is reserved for examples)",
        "TWILIO_ACCOUNT_SID 'hello' is not an Account SID: AC and 32 hex digits",
        "TWILIO_AUTH_TOKEN is not an auth token: 32 hex digits",
        "TWILIO_PHONE_NUMBER +14155550199 is a placeholder",
        "PHONEBOT_API_KEY is 8 characters",
        "TRANSCRIPT_WEBHOOK_URL https://crm.example.com/hooks/phonebot is a placeholder",
        "TRANSCRIPT_WEBHOOK_SECRET must be whsec_ followed by the base64 of 24 to 64 random bytes",
    ]
    for line in expected:
        assert f"  - {line}" in done.out
    assert "8 problem(s)" in done.out
    assert "hunter2" not in done.out and "my-gemini-key" not in done.out and "changeme" not in done.out


def test_the_env_file_given_is_read_and_not_the_one_in_the_directory(tmp_path: Path) -> None:
    env_file(tmp_path / ".env", BAD)
    settings = env_file(tmp_path / "production.env", GOOD)
    done = run("doctor", "--env-file", str(settings), cwd=tmp_path, env=environment(tmp_path))
    assert (done.status, done.err) == (0, "")
    assert "The settings look right." in done.out
    # Without --env-file, ./.env it is.
    assert run("doctor", cwd=tmp_path, env=environment(tmp_path)).status == 1


def test_a_missing_env_file_is_one_line(tmp_path: Path) -> None:
    done = run("doctor", "--env-file", "/etc/phonebot/nope.env", cwd=tmp_path, env=environment(tmp_path))
    assert (done.status, done.out, done.err) == (2, "", "phonebot doctor: /etc/phonebot/nope.env is not a file\n")


def test_invalid_values_are_named_and_online_checks_wait_for_them(tmp_path: Path) -> None:
    settings = env_file(tmp_path / "phonebot.env", {**GOOD, "PHONEBOT_PUBLIC_URL": "http://bot.example.test"})
    done = run("doctor", "--env-file", str(settings), "--online", cwd=tmp_path, env=environment(tmp_path))
    assert done.status == 1
    assert "PHONEBOT_PUBLIC_URL must be the https:// URL Twilio reaches this service at" in done.out
    assert "Online checks skipped: fix the invalid values above first." in done.out


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN, friendly_name="Riverside Dental").running() as rest:
        yield rest


@pytest.fixture
async def live(tls: tuple[Any, str]) -> AsyncIterator[FakeLiveServer]:
    """A Live server that knows one key, and refuses any other as the real service does (1008)."""
    async with FakeLiveServer(tls[0], api_key="my-odd-but-real-key") as server:
        yield server


def online_env(tmp_path: Path, twilio: FakeTwilioRest, live: FakeLiveServer, ca_file: str) -> dict[str, str]:
    return environment(
        tmp_path, TWILIO_API_BASE_URL=twilio.base_url, GOOGLE_GEMINI_BASE_URL=live.base_url, SSL_CERT_FILE=ca_file
    )


async def test_online_says_which_failed_and_why(
    tmp_path: Path, twilio: FakeTwilioRest, live: FakeLiveServer, tls: tuple[Any, str]
) -> None:
    port = closed_port()
    database = f"postgresql+asyncpg://phonebot:secret@127.0.0.1:{port}/phonebot"
    wrong = {**GOOD, "TWILIO_AUTH_TOKEN": "0" * 32, "GOOGLE_API_KEY": API_KEY, "DATABASE_URL": database}
    settings = env_file(tmp_path / "phonebot.env", wrong)
    env = online_env(tmp_path, twilio, live, tls[1])
    done = await arun("doctor", "--env-file", str(settings), "--online", cwd=tmp_path, env=env)
    assert done.status == 1
    assert "The settings look right." in done.out  # their shapes are right: only trying them tells
    unreachable = f"cannot reach postgresql+asyncpg://phonebot:***@127.0.0.1:{port}/phonebot"
    refused = "Twilio refused the credentials (HTTP 401, error 20003: Authenticate)"
    bad_key = "the Gemini API refused a Live session with gemini-3.8-live (1008): API key not valid."
    assert done.out.splitlines()[-3:] == [
        f"  FAIL  database: {unreachable}: connection refused: nothing is listening there",
        f"  FAIL  Twilio: {refused}: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
        f"  FAIL  Gemini: {bad_key} Please pass a valid API key.",
    ]
    assert "Traceback" not in done.out + done.err and "secret" not in done.out
    assert live.sessions == []  # refused before any session


async def test_online_passes_when_everything_answers(
    tmp_path: Path, twilio: FakeTwilioRest, live: FakeLiveServer, tls: tuple[Any, str]
) -> None:
    # A key of a shape phonebot does not know: a doubt offline, settled by a session that opens.
    settings = env_file(tmp_path / "phonebot.env", {**GOOD, "GOOGLE_API_KEY": "my-odd-but-real-key"})
    env = online_env(tmp_path, twilio, live, tls[1])
    offline = run("doctor", "--env-file", str(settings), cwd=tmp_path, env=env)
    assert offline.status == 1 and "GOOGLE_API_KEY does not look like a Gemini API key" in offline.out
    assert run("db", "upgrade", cwd=tmp_path, env={**env, "DATABASE_URL": "sqlite:///./phonebot.db"}).status == 0

    done = await arun("doctor", "--env-file", str(settings), "--online", cwd=tmp_path, env=env)
    assert (done.status, done.err) == (0, ""), done.out
    assert "The settings look right." in done.out
    lines = done.out.splitlines()
    assert lines[-4] == "Online:"
    assert lines[-3].startswith(f"  ok    database: SQLite file {tmp_path}/phonebot.db is at schema revision ")
    assert lines[-3].endswith(", the latest")
    assert lines[-2] == f"  ok    Twilio: account 'Riverside Dental' ({ACCOUNT_SID}) is active"
    assert lines[-1] == "  ok    Gemini: a Live session with gemini-3.8-live on the Gemini API opened and closed"
    (session,) = live.sessions  # exactly as a call opens it: the same model, the same tools
    assert session.model == "models/gemini-3.8-live"
    assert "book_appointment" in str(session.setup.get("tools"))
    await session.closed.wait()
    assert twilio.requests == [("GET", f"/2010-04-01/Accounts/{ACCOUNT_SID}.json", {})]
