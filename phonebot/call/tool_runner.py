"""Runs the model's tool calls as tasks, so audio keeps flowing while a tool works."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog

from phonebot import metrics
from phonebot.call.ports import ModelPort, ToolCall
from phonebot.call.record import CallRecord, ToolRecord
from phonebot.tools.context import ToolContext, ToolError
from phonebot.tools.spec import ToolSpec

log = structlog.get_logger(__name__)

WITHDRAWN = ToolError("cancelled", "The call was withdrawn before it finished.").as_result()


class ToolRunner:
    def __init__(self, specs: Mapping[str, ToolSpec], ctx: ToolContext, model: ModelPort, record: CallRecord) -> None:
        self._specs = specs
        self._ctx = ctx
        self._model = model
        self._record = record
        self._tasks: dict[str, tuple[asyncio.Task[None], ToolRecord]] = {}

    @property
    def running(self) -> bool:
        """Whether a tool is still at work (the model may be waiting on it)."""
        return bool(self._tasks)

    def start(self, call: ToolCall) -> None:
        entry = self._record.tool_started(call.name, call.args)
        task = asyncio.create_task(self._run(call, entry), name=f"tool {call.name}")
        self._tasks[call.call_id] = (task, entry)

    def cancel(self, call_ids: tuple[str, ...]) -> None:
        """The model withdrew these calls: stop them, and answer none of them."""
        for call_id in call_ids:
            if call_id in self._tasks:
                self._withdraw(call_id)
                log.info("tool.cancelled", call_id=call_id)

    async def aclose(self) -> None:
        tasks = [self._withdraw(call_id) for call_id in list(self._tasks)]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _withdraw(self, call_id: str) -> asyncio.Task[None]:
        task, entry = self._tasks.pop(call_id)
        task.cancel()
        self._record.tool_finished(entry, WITHDRAWN, ok=False)
        return task

    async def _run(self, call: ToolCall, entry: ToolRecord) -> None:
        started = time.monotonic()
        spec = self._specs.get(call.name)
        if spec is None:
            result, ok = ToolError("unknown_tool", f"There is no tool called {call.name}.").as_result(), False
        else:
            result, ok = await spec.invoke(self._ctx, call.args)
        # Past this point a cancellation no longer finds the task: the answer always goes out whole.
        self._tasks.pop(call.call_id, None)
        self._record.tool_finished(entry, result, ok)
        took = time.monotonic() - started
        tool = call.name if spec is not None else metrics.UNKNOWN_TOOL
        metrics.TOOL_SECONDS.labels(tool, "true" if ok else "false").observe(took)
        log.info("tool.done", tool=call.name, ok=ok, ms=int(took * 1000))
        when_idle = spec is not None and spec.options.non_blocking
        await self._model.send_tool_result(call.call_id, call.name, result, when_idle=when_idle)
