"""What a tool may use: the call it serves (as plain values), the clock, and the business's services.

A tool is `async def name(ctx: ToolContext, <typed, documented arguments>) -> dict`. Its
docstring's first paragraph is the description the model reads; its `Args:` section describes
each argument. It returns a JSON-able dict, or raises `ToolError` for something the bot should
explain to the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


class ToolError(Exception):
    """An outcome the bot explains to the caller ("we are closed then"), not a crash."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_result(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class CallControl(Protocol):
    """What the control tools (end_call, transfer_call) may do to the call."""

    async def end_call(self) -> None: ...

    async def transfer(self) -> None:
        """To the business's transfer number (the tool is offered only when one is set)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ToolContext:
    call_sid: str
    caller_number: str  # E.164, or "" when unknown
    bookings: Any = None  # phonebot.store's booking desk (None when booking is not configured)
    control: CallControl | None = None
    now: Callable[[], datetime] = field(default=_utc_now)  # aware UTC; tests fix it
    # References whose owner's name the caller got wrong on this call (see tools/ownership.py).
    failed_proofs: list[str] = field(default_factory=list)
