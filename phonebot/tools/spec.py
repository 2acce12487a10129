"""A tool's declaration, derived from its typed Python function and docstring, and its safe invocation.

Adding a tool is writing one function:

    @tool(timeout_s=5)
    async def opening_hours(ctx: ToolContext, day: str) -> dict:
        '''Tell the opening hours of one day.

        Args:
            day: The day, as an ISO date like 2026-12-01.
        '''

The first docstring paragraph is the description the model reads; `Args:` describes each
argument; the type hints give the JSON Schema, and the same model validates what the model
sends. A pydantic model per tool does both, so the schema and the checks cannot disagree.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, get_type_hints

import pydantic
import structlog

from phonebot.tools.context import ToolContext, ToolError

ToolFunction = Callable[..., Awaitable[dict[str, Any]]]

DEFAULT_TIMEOUT_S = 10.0

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ToolOptions:
    timeout_s: float = DEFAULT_TIMEOUT_S
    non_blocking: bool = False  # the bot keeps talking ("let me check") while it runs
    phone_only: bool = False  # offered on telephone calls only (a browser's call cannot be put through to a number)


def tool(
    *, timeout_s: float = DEFAULT_TIMEOUT_S, non_blocking: bool = False, phone_only: bool = False
) -> Callable[[ToolFunction], ToolFunction]:
    """Set a tool's options; a plain async function gets the defaults."""

    def mark(function: ToolFunction) -> ToolFunction:
        function.__phonebot_tool__ = ToolOptions(timeout_s, non_blocking, phone_only)  # type: ignore[attr-defined]
        return function

    return mark


def offered(specs: Iterable[ToolSpec], on_phone: bool) -> list[ToolSpec]:
    """The tools one call is given: a call not on a phone line (the softphone's) gets no phone-only tool."""
    return [spec for spec in specs if on_phone or not spec.options.phone_only]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    function: ToolFunction
    arguments: type[pydantic.BaseModel]
    options: ToolOptions

    @classmethod
    def of(cls, function: ToolFunction) -> ToolSpec:
        description, arg_docs = _parse_docstring(inspect.getdoc(function) or "")
        if not description:
            raise ValueError(f"tool {function.__name__} needs a docstring: the model reads it")
        arguments = _arguments_model(function, arg_docs)
        return cls(
            name=function.__name__,
            description=description,
            parameters=_clean_schema(arguments.model_json_schema()),
            function=function,
            arguments=arguments,
            options=getattr(function, "__phonebot_tool__", ToolOptions()),
        )

    async def invoke(self, ctx: ToolContext, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Run the tool; returns (result for the model, ok). Never raises but for cancellation."""
        try:
            parsed = self.arguments.model_validate(args)
        except pydantic.ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in error.errors())
            return ToolError("bad_input", problems).as_result(), False
        # The tool runs as its own task, and the model is answered when the time is up whether or
        # not the task has finished: a cancelled database call may clean up for as long as its
        # driver likes (aiosqlite waits out the busy timeout), but never while the caller waits.
        task = asyncio.ensure_future(self.function(ctx, **parsed.model_dump()))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.options.timeout_s)
        except asyncio.CancelledError:
            _abandon(task)  # the model withdrew the call, or the call ended
            raise
        if not done:
            _abandon(task)
            log.warning("tool.timeout", tool=self.name, timeout_s=self.options.timeout_s)
            message = "That took too long. Apologise and offer to try again or take a message."
            return ToolError("timeout", message).as_result(), False
        try:
            return task.result(), True
        except ToolError as error:
            return error.as_result(), False
        except Exception as error:  # a broken tool is an error result, never a dead call
            log.error("tool.failed", tool=self.name, error=repr(error), exc_info=error)
            message = "Something went wrong on our side. Apologise and offer to take a message."
            return ToolError("internal", message).as_result(), False


_abandoned: set[asyncio.Future[Any]] = set()  # cancelled tools still cleaning up, held until done


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a tool's task and let it finish its clean-up on its own."""
    task.cancel()
    if not task.done():
        _abandoned.add(task)
        task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:  # retrieved, so asyncio does not complain
        log.info("tool.abandoned_failed", error=repr(task.exception()))


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Google style: the first paragraph, and the `name: text` entries (with continuations) under Args:."""
    head, _, section = doc.partition("\nArgs:\n")
    description = " ".join(head.split("\n\n")[0].split())
    lines = [line for line in section.splitlines() if line.strip()]
    base = len(lines[0]) - len(lines[0].lstrip()) if lines else 0
    args: dict[str, str] = {}
    current = ""
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if indent < base:
            break  # the next section (Returns:, ...)
        if indent == base:
            name, _, text = line.strip().partition(":")
            current = name.split(" (")[0]
            args[current] = text.strip()
        elif current:
            args[current] += " " + line.strip()
    return description, args


def _arguments_model(function: ToolFunction, docs: dict[str, str]) -> type[pydantic.BaseModel]:
    hints = get_type_hints(function)
    fields: dict[str, Any] = {}
    for name, param in list(inspect.signature(function).parameters.items())[1:]:  # [0] is ctx
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints[name], pydantic.Field(default, description=docs.get(name)))
    config = pydantic.ConfigDict(extra="ignore")
    return pydantic.create_model(f"{function.__name__}_arguments", __config__=config, **fields)


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's titles (noise to the model); an optional argument is just not required."""
    schema = {k: v for k, v in schema.items() if k != "title"}
    schema["properties"] = {name: _clean_property(prop) for name, prop in schema.get("properties", {}).items()}
    return schema


def _clean_property(prop: dict[str, Any]) -> dict[str, Any]:
    prop = {k: v for k, v in prop.items() if k != "title"}
    types = prop.pop("anyOf", None)
    if types is not None:
        concrete = [t for t in types if t.get("type") != "null"]
        prop.update(concrete[0] if len(concrete) == 1 else {"anyOf": concrete})
        if prop.get("default", 0) is None:
            del prop["default"]
    return prop
