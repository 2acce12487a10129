"""Runs the model's tool calls as tasks, so audio keeps flowing while a tool works."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from phonebot.call.ports import ModelPort, ToolCall
from phonebot.tools.context import ToolContext, ToolError
from phonebot.tools.spec import ToolSpec

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class ToolRecord:
    name: str
    args: dict[str, Any]
    offset_ms: int
    result: dict[str, Any] = field(default_factory=dict)
    ok: bool = False


class ToolRunner:
    def __init__(self, specs: Mapping[str, ToolSpec], ctx: ToolContext, model: ModelPort, started: float) -> None:
        self._specs = specs
        self._ctx = ctx
        self._model = model
        self._started = started
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.records: list[ToolRecord] = []

    def start(self, call: ToolCall) -> None:
        record = ToolRecord(call.name, call.args, int((time.monotonic() - self._started) * 1000))
        self.records.append(record)
        self._tasks[call.call_id] = asyncio.create_task(self._run(call, record), name=f"tool {call.name}")

    def cancel(self, call_ids: tuple[str, ...]) -> None:
        """The model withdrew these calls: stop them, and answer none of them."""
        for call_id in call_ids:
            task = self._tasks.pop(call_id, None)
            if task is not None:
                task.cancel()
                log.info("tool.cancelled", call_id=call_id)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, call: ToolCall, record: ToolRecord) -> None:
        spec = self._specs.get(call.name)
        if spec is None:
            record.result = ToolError("unknown_tool", f"There is no tool called {call.name}.").as_result()
        else:
            record.result, record.ok = await spec.invoke(self._ctx, call.args)
        # Past this point a cancellation no longer finds the task: the answer always goes out whole.
        self._tasks.pop(call.call_id, None)
        log.info("tool.done", tool=call.name, ok=record.ok, ms=int((time.monotonic() - self._started) * 1000) - record.offset_ms)
        when_idle = spec is not None and spec.options.non_blocking
        await self._model.send_tool_result(call.call_id, call.name, record.result, when_idle=when_idle)
