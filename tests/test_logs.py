"""Logs carry call_sid, never secrets, and never a whole phone number."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from phonebot import logs
from tests.conftest import AUTH_TOKEN
from tests.fakes.gemini_live import FakeLiveServer
from tests.phone import CALLER, FORM, Intact, answer
from tests.served import serve


def test_phone_numbers_masked_and_secrets_dropped(capsys) -> None:
    logs.configure("info", "json")
    with structlog.contextvars.bound_contextvars(call_sid="CA42"):
        logs.get_logger("t").info(
            "test.event", caller="+14155550123", note="call from +442071234567 ended", auth_token="s3cret"
        )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["call_sid"] == "CA42"
    assert line["caller"] == "+*******0123"
    assert line["note"] == "call from +********4567 ended"
    assert line["auth_token"] == "[redacted]"
    assert "4155550123" not in json.dumps(line) and "s3cret" not in json.dumps(line)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("written", "masked"),
    [
        ("07700 900123", "***** **0123"),
        ("07700900123", "*******0123"),
        ("(415) 555-0123", "(***) ***-0123"),
        ("415-555-0123", "***-***-0123"),
        ("415.555.0123", "***.***.0123"),
        ("020 7123 4567", "*** **** 4567"),
        ("4155550123", "******0123"),
        ("+14155550123", "+*******0123"),
        ("%2B14155550123", "%2B*******0123"),
    ],
)
def test_numbers_are_masked_in_every_format(capsys: pytest.CaptureFixture[str], written: str, masked: str) -> None:
    logs.configure("info", "json")
    logs.get_logger("t").info("test.event", phone=written, note=f"call me on {written}.", nested={"a": [written]})
    (line,) = _lines(capsys)
    assert line["phone"] == masked and line["note"] == f"call me on {masked}." and line["nested"] == {"a": [masked]}


def test_what_only_looks_like_a_number_is_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    kept = (
        "at 2026-12-01T15:07:00.123456Z, 14:30, on 2026-12-01, CA" + "1" * 32
        + ", 550e8400-e29b-41d4-a716-446655440000, from 127.0.0.1:54321 and 192.168.100.200, reference K7M4PX, 20 ms"
    )
    logs.get_logger("t").info("test.event", note=kept)
    assert _lines(capsys)[0]["note"] == kept


def test_library_records_go_through_the_same_processors(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json", secrets=["the-api-key-value"])
    with structlog.contextvars.bound_contextvars(call_sid="CA42"):
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/calls?number=%2B14155550123", "1.1", 200
        )
        refused = '%s - "WebSocket %s" 403'
        logging.getLogger("uvicorn.error").warning(refused, "127.0.0.1:5000", "/twilio/media/s3cr3t-T0ken")
        logging.getLogger("google_genai.live").warning("sent key the-api-key-value for (415) 555-0123")
        logging.getLogger("twilio.http_client").info("-- BEGIN Twilio API Request --")  # chatter: debug
        logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 0001")  # chatter: debug
        logging.getLogger("sqlalchemy.engine.Engine").info("INSERT INTO bookings ... ('Ada', '+14155550123')")
        logging.getLogger("websockets.client").debug("> x-goog-api-key: the-api-key-value")
        try:
            raise ValueError("+14155550123")
        except ValueError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    access, refused, genai, failed = _lines(capsys)
    assert access == access | {"logger": "uvicorn.access", "level": "info", "call_sid": "CA42"}
    assert access["event"] == '127.0.0.1:5000 - "GET /calls?number=%2B*******0123 HTTP/1.1" 200'
    assert refused["event"] == '127.0.0.1:5000 - "WebSocket /twilio/media/[token]" 403'
    assert genai["event"] == "sent key [redacted] for (***) ***-0123"
    assert failed["level"] == "error" and "ValueError: +*******0123" in failed["exception"]


def test_library_chatter_is_debug_and_wire_dumps_are_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("debug", "json")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 0001")
    logging.getLogger("sqlalchemy.engine.Engine").info("SELECT 1")
    logging.getLogger("websockets.client").debug("> x-goog-api-key: AIza")
    logging.getLogger("uvicorn.error").debug("< TEXT '{\"event\":\"media\"...' [300 bytes]")
    logging.getLogger("aiosqlite").debug("executing <function>")
    (alembic,) = _lines(capsys)
    assert alembic["event"] == "Running upgrade  -> 0001" and alembic["level"] == "debug"


class _Writes:
    """A stderr that keeps each write() as it came (unbuffered, as under PYTHONUNBUFFERED)."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_each_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers of `serve --workers N` share one stderr: a line written in pieces gets another
    worker's line cut into it (seen: two JSON events on one line, neither readable)."""
    stderr = _Writes()
    monkeypatch.setattr("sys.stderr", stderr)
    logs.configure("info", "json")
    logs.get_logger("t").info("drain.started", worker=1)
    logging.getLogger("uvicorn.error").warning("a library's line")
    assert len(stderr.writes) == 2, stderr.writes
    for text in stderr.writes:
        assert text.endswith("\n") and text.count("\n") == 1, text
        json.loads(text)


def test_no_secret_is_in_the_settings_repr() -> None:
    from phonebot.settings import Settings

    secrets = {
        "google_api_key": "AIza-the-gemini-key",
        "twilio_auth_token": "the-twilio-auth-token",
        "api_key": "the-operator-api-key",
        "transcript_webhook_secret": "whsec_" + base64.b64encode(b"k" * 32).decode(),
    }
    settings = Settings(**secrets, database_url="postgresql://bob:pa55w0rd@db.internal:5432/phonebot")
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert not [value for value in [*secrets.values(), "pa55w0rd"] if value in shown], shown
        assert "db.internal" in shown and "bob:***@" in shown
    assert set(settings.secret_values()) == {*secrets.values(), "pa55w0rd"}


async def test_every_line_of_a_served_call_is_json_with_its_call_sid_and_no_number(
    tmp_path: Path, gemini: FakeLiveServer
) -> None:
    """A real `phonebot serve` with LOG_FORMAT=json takes a call that does a bit of everything,
    bad input included; every line it writes is JSON, every line written during the call
    (uvicorn's included) carries the call's call_sid, and no number, key or token is in any."""
    async with serve(tmp_path) as served:
        await asyncio.sleep(0.5)  # startup lines done
        before = len(served.log().splitlines())
        call, session = await answer(served, gemini)
        token = call.ws_url.rsplit("/", 1)[-1]
        await session.wait_for_text("Greet")
        intact = Intact(call, session)
        await intact.both_ways()
        await call.send_dtmf("5")
        await call.send_dtmf("5" * 5000)
        await call.send_event({"event": "(415) 555-0123", "streamSid": call.stream_sid})
        await call.send_raw("{not json from 415-555-0123")
        await session.send({"serverContent": "x"})
        await session.send_tool_call([{"id": "t1", "name": "find_booking", "args": {}}])
        await session.send_tool_call([{"id": "t2", "name": "no_such_tool", "args": {"phone": CALLER}}])
        await intact.both_ways()
        await call.stop()
        await _until(lambda: any(e.get("event") == "call.ended" for e in served.events()))
        status = {**FORM, "CallStatus": "completed", "CallDuration": "3"}
        assert (await served.post_status(status)).status_code == 204
        await asyncio.sleep(0.5)
        log = served.log()
    lines = log.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line, startup included, is JSON
    assert all(isinstance(line, dict) for line in parsed)
    during = parsed[before:]
    assert [line for line in during if line.get("call_sid") != FORM["CallSid"]] == []
    loggers = {line.get("logger") for line in during}
    assert "uvicorn.access" in loggers, loggers  # the webhooks' access lines, with the call
    events = [line["event"] for line in during]
    assert "call.started" in events and "stream.unknown_event" in events and "tool.done" in events
    for secret in ("4155550123", "4155550199", "555-0123", "5" * 100, token, "test-api-key", AUTH_TOKEN):
        assert secret not in log, secret


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
