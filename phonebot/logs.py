"""structlog configuration: small processors composed in one list.

Per-call context is bound once with `structlog.contextvars.bound_contextvars(call_sid=...)`.
Phone numbers are masked and secrets dropped before anything is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

_PHONE = re.compile(r"\+\d{6,15}")
_PHONE_KEYS = frozenset({"from", "to", "caller", "called", "phone", "from_number", "to_number"})
_SECRET_PARTS = ("token", "secret", "password", "api_key", "authorization", "signature")

EventDict = MutableMapping[str, Any]


def mask_phone(number: str) -> str:
    """'+14155550123' -> '+*******0123': enough to tell calls apart, not enough to dial."""
    digits = number.lstrip("+")
    return "+" + "*" * max(0, len(digits) - 4) + digits[-4:]


def _mask_text(text: str) -> str:
    return _PHONE.sub(lambda match: mask_phone(match.group()), text)


def mask_phone_numbers(_logger: Any, _method: str, event: EventDict) -> EventDict:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = mask_phone(value) if key in _PHONE_KEYS and value else _mask_text(value)
    return event


def drop_secrets(_logger: Any, _method: str, event: EventDict) -> EventDict:
    for key in [key for key in event if any(part in key.lower() for part in _SECRET_PARTS)]:
        event[key] = "[redacted]"
    return event


class _Stderr:
    """Whatever `sys.stderr` is when a line is written (a logger made earlier keeps working when
    it is replaced, as test runners do)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: str | None = None) -> None:
    """Set up structlog (and stdlib logging, for uvicorn's own lines) once per process."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            drop_secrets,
            mask_phone_numbers,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=numeric, format="%(message)s", stream=sys.stderr)


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
