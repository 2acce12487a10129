"""Waiting for a fake's state to change, without polling: one Condition, notified on every change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Changes:
    def __init__(self, closed: asyncio.Event, name: str) -> None:
        self._condition = asyncio.Condition()
        self._closed = closed
        self._name = name

    async def notify(self) -> None:
        async with self._condition:
            self._condition.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for `predicate`; fail fast with ConnectionError if the connection ends first."""
        try:
            async with asyncio.timeout(timeout):
                async with self._condition:
                    await self._condition.wait_for(lambda: predicate() or self._closed.is_set())
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None
        if not predicate():
            raise ConnectionError(f"{self._name} closed while waiting for {what}")
