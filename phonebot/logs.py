"""structlog configuration: small processors composed in one list.

Per-call context is bound once with `structlog.contextvars.bound_contextvars(call_sid=...)`.
Phone numbers are masked and secrets dropped before anything is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
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
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=numeric, format="%(message)s", stream=sys.stderr)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
