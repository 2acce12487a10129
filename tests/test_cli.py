"""The smaller commands, run as a person runs them: `db upgrade` against a database that is not
there, `setup-number` against the fake Twilio REST API through the real twilio client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.command import arun, closed_port, environment, run
from tests.conftest import AUTH_TOKEN
from tests.fakes.twilio_rest import FakeTwilioRest

ACCOUNT_SID = "AC" + "7" * 32
NUMBER = "+14155552671"
PUBLIC_URL = "https://bot.example.test"


def test_version(tmp_path: Path) -> None:
    done = run("--version", cwd=tmp_path, env=environment(tmp_path))
    assert (done.status, done.out) == (0, f"phonebot {version('phonebot')}\n")


def test_db_upgrade_against_a_database_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    env = environment(tmp_path, DATABASE_URL=f"postgres://phonebot:secret@127.0.0.1:{port}/phonebot")
    done = run("db", "upgrade", cwd=tmp_path, env=env)
    assert (done.status, done.out) == (1, "")
    assert done.err == (
        f"phonebot db upgrade: cannot reach postgresql+asyncpg://phonebot:***@127.0.0.1:{port}/phonebot: "
        "connection refused: nothing is listening there\n"
    )


def test_db_upgrade_says_where_the_sqlite_file_is(tmp_path: Path) -> None:
    done = run("db", "upgrade", cwd=tmp_path, env=environment(tmp_path))
    assert done.status == 0
    assert done.out.startswith(f"phonebot db upgrade: SQLite file {tmp_path}/phonebot.db is at schema revision ")


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN).running() as rest:
        rest.add_number("+14155552670")  # a neighbour the PhoneNumber filter also matches
        yield rest


def number_env(tmp_path: Path, twilio: FakeTwilioRest, **more: str) -> dict[str, str]:
    settings = {
        "PHONEBOT_PUBLIC_URL": PUBLIC_URL,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_API_BASE_URL": twilio.base_url,
    }
    return environment(tmp_path, **{**settings, **more})


async def test_setup_number_points_the_number_here_and_says_what_changed(
    tmp_path: Path, twilio: FakeTwilioRest
) -> None:
    record = twilio.add_number(NUMBER, status_callback_method="GET", voice_application_sid="AP" + "1" * 32)
    neighbour = next(n for n in twilio.numbers.values() if n["phone_number"] != NUMBER)
    env = number_env(tmp_path, twilio, TWILIO_PHONE_NUMBER=NUMBER)
    done = await arun("setup-number", cwd=tmp_path, env=env)  # the number from TWILIO_PHONE_NUMBER
    assert (done.status, done.err) == (0, "")
    assert done.out.splitlines() == [
        f"phonebot setup-number: {NUMBER} ({record['sid']}) now points at {PUBLIC_URL}:",
        f"  A call comes in (URL): https://demo.twilio.com/welcome/voice/ -> {PUBLIC_URL}/twilio/voice",
        f"  Call status changes (URL): (none) -> {PUBLIC_URL}/twilio/status",
        "  Call status changes (HTTP method): GET -> POST",
        f"  TwiML App: AP{'1' * 32} -> (none)",
    ]
    assert record["voice_url"] == f"{PUBLIC_URL}/twilio/voice" and record["voice_method"] == "POST"
    assert record["status_callback"] == f"{PUBLIC_URL}/twilio/status" and record["status_callback_method"] == "POST"
    assert record["voice_application_sid"] is None
    assert neighbour["voice_url"] == "https://demo.twilio.com/welcome/voice/"  # untouched
    (listed, updated) = twilio.requests
    assert listed == ("GET", f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json", {})
    assert updated[:2] == ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers/{record['sid']}.json")

    # Run again (the argument wins over TWILIO_PHONE_NUMBER): nothing left to change, nothing sent.
    again = await arun("setup-number", NUMBER, cwd=tmp_path, env={**env, "TWILIO_PHONE_NUMBER": "+14155552670"})
    assert (again.status, again.err) == (0, "")
    unchanged = f"phonebot setup-number: {NUMBER} ({record['sid']}) already points at {PUBLIC_URL}; nothing changed"
    assert again.out == unchanged + "\n"
    assert [method for method, _, _ in twilio.requests] == ["GET", "POST", "GET"]


WHICH = "which number? Give it (+14155550123) or set TWILIO_PHONE_NUMBER"
REFUSED = "Twilio refused the credentials (HTTP 401, error 20003: Authenticate): check TWILIO_ACCOUNT_SID and"


@pytest.mark.parametrize(
    ("args", "more", "status", "says"),
    [
        (["+14155550000"], {}, 1, f"+14155550000 is not a phone number of account {ACCOUNT_SID}"),
        ([], {}, 2, WHICH),
        (["4155552671"], {}, 2, WHICH),
        ([NUMBER], {"TWILIO_AUTH_TOKEN": "0" * 32}, 1, REFUSED + " TWILIO_AUTH_TOKEN"),
    ],
)
async def test_setup_number_failures_are_one_line(
    tmp_path: Path, twilio: FakeTwilioRest, args: list[str], more: dict[str, str], status: int, says: str
) -> None:
    twilio.add_number(NUMBER)
    done = await arun("setup-number", *args, cwd=tmp_path, env=number_env(tmp_path, twilio, **more))
    assert (done.status, done.out, done.err) == (status, "", f"phonebot setup-number: {says}\n")


async def test_setup_number_will_not_point_a_number_at_a_placeholder(tmp_path: Path, twilio: FakeTwilioRest) -> None:
    env = number_env(tmp_path, twilio, PHONEBOT_PUBLIC_URL="https://phonebot.example.com")
    done = await arun("setup-number", NUMBER, cwd=tmp_path, env=env)
    assert done.status == 2
    assert "PHONEBOT_PUBLIC_URL https://phonebot.example.com is a placeholder" in done.err
    assert twilio.requests == []
