"""One log pipeline: small structlog processors composed in one list, for our events and for
every library's stdlib records alike (uvicorn, twilio, alembic, sqlalchemy, google-genai,
websockets), so that `LOG_FORMAT=json` output is JSON on every line and nothing is rendered
before numbers are masked and secrets dropped.

Per-call context is bound once with `structlog.contextvars.bound_contextvars(call_sid=...)`
(or `bind_contextvars` in a request's own task, so that uvicorn's access line carries it too).
Libraries' wire-level debug output (frames, headers, SQL) is never shown: it would put
keys, numbers and audio in the log at 50 lines a second. Their chatter (Alembic's lines per
migration, the Twilio client's request dumps, WebSocket open/close) is logged at debug.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

EventDict = MutableMapping[str, Any]

# Keys whose values are phone numbers in whatever format: masked whole.
_PHONE_KEYS = frozenset({"from", "to", "caller", "called", "phone", "from_number", "to_number", "number"})
_SECRET_PARTS = ("token", "secret", "password", "api_key", "api-key", "apikey", "authorization", "signature")

# Numbers inside free text: E.164 (also URL-encoded, "%2B1..."), and national formats as people
# and forms write them. Not inside a word, an id, a path, a time, a date or an address.
_PHONE_IN_TEXT = re.compile(
    r"(?:\+|%2[Bb])\d{6,15}"
    r"|(?<![\w.:/%-])(?:"
    r"\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (415) 555-0123, (020) 7123 4567
    r"|0\d{2,4}[ .-]?\d{3,4}[ .-]?\d{3,4}"  # 07700 900123, 020 7123 4567, 07700900123
    r"|\d{3}[ .-]\d{3}[ .-]\d{4}"  # 415-555-0123, 415.555.0123
    r"|\d{9,15}"  # 4155550123
    r")(?![\w:-]|\.\d)"
)
_MEDIA_TOKEN = re.compile(r"(/(?:twilio|web)/media/)[^\s\"'?/]+")  # single-use stream tokens in paths
_MIN_SECRET = 6  # shorter "secrets" (a test's "x") would redact half the line
_NESTED = 4  # how deep masking looks into dicts and lists

# Library loggers whose debug output is wire-level (frames, headers with keys, SQL with names and
# numbers): never below these levels. uvicorn hands its WebSocket frames to "uvicorn.error".
_FLOORS = {
    "websockets": logging.INFO,
    "uvicorn.error": logging.INFO,
    "aiosqlite": logging.INFO,
    "httpcore": logging.INFO,
    "hpack": logging.INFO,
    "asyncio": logging.INFO,
    "sqlalchemy": logging.WARNING,  # at INFO it logs every statement and its parameters
}
_CHATTY = ("alembic", "twilio", "httpx")  # their info lines are debug to us
_CHATTER_MESSAGES = frozenset({"connection open", "connection closed", '%s - "WebSocket %s" [accepted]'})


def mask_phone(number: str) -> str:
    """Every digit but the last four hidden, the format kept: '+14155550123' -> '+*******0123',
    '(415) 555-0123' -> '(***) ***-0123'. Enough to tell calls apart, not enough to dial."""
    prefix = number[:3] if number[:3] in ("%2B", "%2b") else ""
    body = number[len(prefix) :]
    hide = sum(c.isdigit() for c in body) - 4
    out = []
    for char in body:
        if char.isdigit() and hide > 0:
            out.append("*")
            hide -= 1
        else:
            out.append(char)
    return prefix + "".join(out)


def _mask_text(text: str) -> str:
    text = _PHONE_IN_TEXT.sub(lambda match: mask_phone(match.group()), text)
    return _MEDIA_TOKEN.sub(r"\1[token]", text) if "/media/" in text else text


class _Masker:
    """The processor that drops secrets (by key, and known values anywhere) and masks numbers (by
    key, and inside any text) and stream tokens in paths, in every string of the event, nested
    ones included."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s and len(s) >= _MIN_SECRET)

    def __call__(self, _logger: Any, _method: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if not key.startswith("_"):  # structlog's own (the stdlib record) stays as it is
                event[key] = self._value(key, value, _NESTED)
        return event

    def _value(self, key: str, value: Any, depth: int) -> Any:
        if any(part in key.lower() for part in _SECRET_PARTS):
            return "[redacted]"
        if isinstance(value, str):
            return self._text(mask_phone(value) if key.lower() in _PHONE_KEYS and value else _mask_text(value))
        if depth and isinstance(value, dict):
            return {k: self._value(str(k), v, depth - 1) for k, v in value.items()}
        if depth and isinstance(value, (list, tuple)):
            return [self._value(key, v, depth - 1) for v in value]
        return value

    def _text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text


class _Stderr:
    """Whatever `sys.stderr` is when a line is written (a logger made earlier keeps working when
    it is replaced, as test runners do)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _LibraryLevels(logging.Filter):
    """Libraries' chatter down to debug; then only what the configured level lets through."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and (
            record.name.startswith(_CHATTY) or record.msg in _CHATTER_MESSAGES
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self._level


_handler: logging.Handler | None = None


def configure(level: str = "info", fmt: str | None = None, secrets: Iterable[str] = ()) -> str:
    """Set up structlog and stdlib logging (every library's records) with one set of processors.
    `secrets`: values (keys, tokens, passwords) replaced by "[redacted]" wherever they appear.
    Returns the format chosen (`serve` prints its banner as plain text only on a console)."""
    global _handler
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # before masking: tracebacks quote values too
        _Masker(secrets),
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (print() makes two: the line, then its newline): the workers of one
        # `serve --workers N` share its stderr, and unbuffered (PYTHONUNBUFFERED, as in the image)
        # their lines were cut into each other, making JSON a log collector cannot read.
        logger_factory=structlog.WriteLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_Stderr())  # type: ignore[arg-type]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(_LibraryLevels(numeric))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler
    for name, floor in _FLOORS.items():
        logging.getLogger(name).setLevel(max(numeric, floor))
    logging.captureWarnings(True)  # warnings.warn too, as JSON
    return fmt


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


class Skipped:
    """What one call skipped of a peer's input, counted by kind, with its warnings rate-limited:
    the first of each kind is logged at once, then at most one line per kind every `every_s`,
    carrying the count so far. A peer that sends garbage 50 times a second costs a line now
    and then, not a line a frame. (Where a metric of skipped input would be recorded.)"""

    def __init__(self, logger: Any, every_s: float = 10.0) -> None:
        self._log = logger
        self._every_s = every_s
        self.counts: dict[str, int] = {}
        self._quiet_until: dict[str, float] = {}

    def warning(self, event: str, **fields: Any) -> None:
        count = self.counts[event] = self.counts.get(event, 0) + 1
        now = time.monotonic()
        if now < self._quiet_until.get(event, 0.0):
            return
        self._quiet_until[event] = now + self._every_s
        self._log.warning(event, count=count, **fields)

    def report(self, event: str) -> None:
        """One line with every count (when the call or connection ends), then start over."""
        if self.counts:
            self._log.warning(event, skipped=self.counts)
            self.counts = {}
            self._quiet_until.clear()
