"""Logs carry call_sid, never secrets, and never a whole phone number."""

from __future__ import annotations

import json

import structlog

from phonebot import logs


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
