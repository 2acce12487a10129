"""A model conversation that outlives its connections.

A Live connection lasts about ten minutes and networks drop, so the call talks to a
`ResilientModel`: one `ModelPort` over a succession of connections.

- Every message we send is kept in the outbox until a resumable `Checkpoint` covers it (the
  Live API's advice: a handle holds the state as of that update, nothing sent after it).
  A new connection resumes from the newest handle and is sent the outbox again, in order:
  nothing the caller said is lost or repeated, including audio written into a socket that
  turned out to be dead.
- `GoingAway`: a replacement is opened before the old connection ends, at a resumable point
  (the bot not mid-turn, so nothing it said is spoken twice) or, failing that, just before the
  deadline; then the outbox is replayed into it and it takes over.
- Abrupt loss: reconnect from the newest handle with exponential backoff and jitter, bounded
  in attempts and time. Meanwhile caller audio is kept up to a bound, then the oldest dropped.
- A refused handle: a fresh connection seeded with the conversation so far.
- A tool call made on an old connection is answered on the new one as text: the resumed
  state predates the call (no handle is resumable while a tool runs), so its id means nothing there.
- Instructions replaced mid-call go into every later connection's setup, and through the outbox
  like any message, so a connection resumed from before the change hears of it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from phonebot import metrics
from phonebot.call.ports import (
    BotAudio,
    BotInterrupted,
    BotTurnComplete,
    CallInfo,
    Checkpoint,
    GoingAway,
    HistoryTurn,
    ModelClosed,
    ModelConnection,
    ModelConnector,
    ModelEvent,
    ResumeRefused,
    ToolCall,
    Transcript,
)
from phonebot.call.record import Turn, merge_fragment

log = structlog.get_logger(__name__)

MAX_HISTORY_TURNS = 60
_AUDIO_BYTES_PER_S = 32000  # what the model takes: 16-bit PCM at 16 kHz


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    attempts: int = 6
    budget_s: float = 20.0  # give up reconnecting after this long
    first_delay_s: float = 0.1
    max_delay_s: float = 2.0
    connect_timeout_s: float = 10.0
    outage_audio_s: float = 5.0  # caller audio kept while disconnected
    replay_audio_s: float = 60.0  # the outbox's bound if no handle comes for that long (~2 MB)
    switch_margin_s: float = 1.0  # switch this long before a goAway deadline at the latest


class ModelUnreachable(Exception):
    """No connection could be made within the policy's bounds."""


@dataclass(slots=True)
class _Message:
    kind: Literal["audio", "text", "tool", "instructions"]
    payload: Any  # bytes | str | (call_id, name, result, when_idle, generation that made the call)
    connection: int = 0  # generation of the connection it went out on; 0: not sent yet
    index: int = 0  # its index on that connection


class ResilientModel:
    def __init__(self, connector: ModelConnector, info: CallInfo, policy: ReconnectPolicy) -> None:
        self._connector = connector
        self._info = info
        self._policy = policy
        self._conn: ModelConnection | None = None
        self._generation = 0
        self._lock = asyncio.Lock()  # sends and connection swaps, one at a time
        self._outbox: deque[_Message] = deque()
        self._outbox_audio = 0  # bytes of audio in the outbox
        self._unsent_audio = 0  # ... of which not sent on any connection yet
        self._handle: str | None = None
        self._history: list[Turn] = []
        self._instructions: str | None = None  # what replaced the configured instructions
        self._call_generation: dict[str, int] = {}  # tool call id -> connection that made it
        self._generating = False
        self._resumable = asyncio.Event()  # at a point where a switch loses nothing
        self._switcher: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped_audio_messages = 0
        self.dropped_audio_bytes = 0
        self.switches = 0
        self.reconnects = 0

    @classmethod
    async def open(cls, connector: ModelConnector, info: CallInfo, policy: ReconnectPolicy) -> ResilientModel:
        model = cls(connector, info, policy)
        await model._reconnect()
        return model

    @property
    def handle(self) -> str | None:
        """The newest resumable handle: where a new connection would continue from."""
        return self._handle

    @property
    def input_rate(self) -> int:
        assert self._conn is not None
        return self._conn.input_rate

    @property
    def output_rate(self) -> int:
        assert self._conn is not None
        return self._conn.output_rate

    # -- sending ---------------------------------------------------------------------------

    async def send_audio(self, pcm: bytes) -> None:
        message, conn = _Message("audio", pcm), self._conn
        if conn is None or self._lock.locked():
            await self._send(message)
            return
        # The common case, 50 times a second: written at once, with nothing able to run meanwhile,
        # so without the lock (five calls less a frame).
        self._keep(message)
        try:
            sent = conn.send_audio_now(pcm)
        except Exception:  # noqa: BLE001 - a dead socket: as in `_deliver`, the outbox still has it
            sent = False
        if sent:
            self._unsent_audio -= len(pcm)
            message.connection, message.index = self._generation, conn.messages_sent
            return
        async with self._lock:  # flow control: it waits its turn like any send
            if message.connection == 0 and self._conn is not None:  # (not replayed meanwhile)
                await self._deliver(self._conn, self._generation, message)

    async def send_text(self, text: str) -> None:
        await self._send(_Message("text", text))

    async def send_tool_result(self, call_id: str, name: str, result: dict[str, Any], *, when_idle: bool) -> None:
        made_on = self._call_generation.pop(call_id, -1)
        await self._send(_Message("tool", (call_id, name, result, when_idle, made_on)))

    async def update_instructions(self, instructions: str) -> None:
        self._instructions = instructions
        await self._send(_Message("instructions", instructions))

    async def _send(self, message: _Message) -> None:
        async with self._lock:
            self._keep(message)
            if self._conn is not None:
                await self._deliver(self._conn, self._generation, message)

    async def _deliver(self, conn: ModelConnection, generation: int, message: _Message) -> None:
        if message.connection == 0 and message.kind == "audio":
            self._unsent_audio -= len(message.payload)
        try:
            if message.kind == "audio":
                await conn.send_audio(message.payload)
            elif message.kind == "text":
                await conn.send_text(message.payload)
            elif message.kind == "instructions":
                await conn.update_instructions(message.payload)
            else:
                call_id, name, result, when_idle, made_on = message.payload
                if made_on == generation:
                    await conn.send_tool_result(call_id, name, result, when_idle=when_idle)
                else:  # the call came from a connection that is gone: this one never saw it
                    await conn.send_text(_result_as_text(name, result))
        except Exception as error:  # noqa: BLE001 - a dead socket: the outbox still has it
            log.debug("model.send_failed", error=repr(error))
        message.connection, message.index = generation, conn.messages_sent

    def _keep(self, message: _Message) -> None:
        self._outbox.append(message)
        if message.kind != "audio":
            return
        size = len(message.payload)
        self._outbox_audio += size
        self._unsent_audio += size
        if self._conn is None:  # disconnected: keep the newest few seconds of what the caller says
            while self._unsent_audio > self._policy.outage_audio_s * _AUDIO_BYTES_PER_S:
                self._drop_oldest_unsent_audio()
        while self._outbox_audio > self._policy.replay_audio_s * _AUDIO_BYTES_PER_S:
            self._drop(self._outbox.popleft())

    def _drop_oldest_unsent_audio(self) -> None:
        for position, message in enumerate(self._outbox):
            if message.connection == 0 and message.kind == "audio":
                del self._outbox[position]
                self._drop(message)
                return

    def _drop(self, message: _Message) -> None:
        if message.kind == "audio":
            self._outbox_audio -= len(message.payload)
            if message.connection == 0:
                self._unsent_audio -= len(message.payload)
                self.dropped_audio_messages += 1
                self.dropped_audio_bytes += len(message.payload)

    # -- receiving ---------------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[ModelEvent, None]:
        while not self._closed:
            conn = self._conn
            assert conn is not None
            closed: ModelClosed | None = None
            async with contextlib.aclosing(conn.events()) as events:
                async for event in events:
                    if conn is not self._conn:
                        break  # switched: whatever the old connection still says is not for us
                    if isinstance(event, ModelClosed):
                        closed = event
                        break
                    if await self._observe(event):
                        yield event
            if self._closed or conn is not self._conn:
                continue
            log.warning(
                "model.connection_lost", code=closed.code if closed else None, reason=closed.reason if closed else ""
            )
            try:
                await self._reconnect()
            except ModelUnreachable as error:
                yield ModelClosed(1011, f"model unreachable: {error}")
                return

    async def _observe(self, event: ModelEvent) -> bool:
        """Keep what reconnecting needs; True if the call should see the event."""
        match event:
            case Checkpoint(handle=handle, resumable=resumable, consumed=consumed):
                if resumable and handle:
                    async with self._lock:
                        self._handle = handle
                        self._trim(consumed)
                    if not self._generating:
                        self._resumable.set()
                else:
                    self._resumable.clear()
                return False
            case GoingAway(seconds=seconds):
                log.info("model.go_away", seconds=seconds)
                if self._switcher is None:
                    deadline = time.monotonic() + seconds - self._policy.switch_margin_s
                    self._switcher = asyncio.create_task(self._switch_before(deadline), name="model switch")
                return False
            case BotAudio() | ToolCall():
                self._generating = True
                self._resumable.clear()
                if isinstance(event, ToolCall):
                    self._call_generation[event.call_id] = self._generation
            case BotTurnComplete(idle=idle):
                # Extended thinking speaks, works and speaks again: switching between its
                # utterances would lose what it is working on.
                self._generating = not idle
            case BotInterrupted():
                self._generating = False
            case Transcript(role=role, text=text):
                self._remember(role, text)
        return True

    def _trim(self, consumed: int | None) -> None:
        """Forget what the newest handle covers."""
        while self._outbox:
            first = self._outbox[0]
            covered = first.connection != 0 and (
                consumed is None or first.connection < self._generation or first.index <= consumed
            )
            if not covered:
                return
            self._drop(self._outbox.popleft())

    def _remember(self, role: Literal["caller", "bot"], text: str) -> None:
        if merge_fragment(self._history, role, text, offset_ms=0)[1]:
            del self._history[:-MAX_HISTORY_TURNS]

    # -- connections -------------------------------------------------------------------------

    async def _open(self) -> tuple[ModelConnection, str | None]:
        """A new connection, and the handle it resumed from (None: fresh, seeded with the history)."""
        handle, instructions = self._handle, self._instructions
        if handle is not None:
            try:
                return await self._connector.connect(self._info, resume=handle, instructions=instructions), handle
            except ResumeRefused as error:
                log.warning("model.resume_refused", reason=str(error))
                if self._handle == handle:
                    self._handle = None
        history: tuple[HistoryTurn, ...] = tuple((turn.role, turn.text) for turn in self._history)
        return await self._connector.connect(self._info, history=history, instructions=instructions), None

    async def _adopt(self, conn: ModelConnection) -> None:
        """Make `conn` current: replay the outbox into it, then retire the old connection."""
        async with self._lock:
            generation = self._generation + 1
            for message in self._outbox:
                await self._deliver(conn, generation, message)
            old, self._conn, self._generation = self._conn, conn, generation
        if old is not None:
            await old.close()

    async def _reconnect(self) -> None:
        """Connect (again) within the policy's bounds, or raise ModelUnreachable."""
        if self._switcher is not None:
            self._switcher.cancel()
        async with self._lock:
            self._conn = None
        dropped_before = self.dropped_audio_bytes
        try:
            attempts = await self._connect_within_policy()
        finally:  # the outage is over (or the call is): what the caller said in vain, counted once
            dropped_s = (self.dropped_audio_bytes - dropped_before) / _AUDIO_BYTES_PER_S
            if dropped_s:
                metrics.CALLER_AUDIO_DROPPED.inc(dropped_s)
        if self._generation > 1:
            self.reconnects += 1
            metrics.MODEL_RECONNECTS.labels("connection_lost").inc()
            log.info("model.reconnected", attempts=attempts, dropped_ms=round(dropped_s * 1000))

    async def _connect_within_policy(self) -> int:
        """Connect, retrying with backoff; returns the attempts it took, or raises ModelUnreachable."""
        policy, started, delay = self._policy, time.monotonic(), self._policy.first_delay_s
        for attempt in range(1, policy.attempts + 1):
            try:
                async with asyncio.timeout(policy.connect_timeout_s):
                    conn, _ = await self._open()
            except Exception as error:  # noqa: BLE001 - every failure is retried the same way
                log.warning("model.connect_failed", attempt=attempt, error=repr(error))
            else:
                await self._adopt(conn)
                return attempt
            if attempt == policy.attempts or time.monotonic() - started + delay > policy.budget_s:
                break
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, policy.max_delay_s)
        raise ModelUnreachable(f"{attempt} attempts in {time.monotonic() - started:.1f}s")

    async def _switch_before(self, deadline: float) -> None:
        """goAway: move to a new connection at a resumable point, or at the deadline."""
        try:
            while not self._closed:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await self._resumable.wait()
                except TimeoutError:
                    log.warning("model.switch_at_deadline", generating=self._generating)
                async with asyncio.timeout(max(self._policy.connect_timeout_s, deadline - time.monotonic())):
                    conn, resumed_from = await self._open()
                try:
                    if resumed_from != self._handle and time.monotonic() < deadline:
                        await conn.close()  # the conversation moved on while connecting: resume from the newer state
                        continue
                    await self._adopt(conn)
                except BaseException:
                    if conn is not self._conn:
                        await conn.close()
                    raise
                self.switches += 1
                metrics.MODEL_RECONNECTS.labels("go_away").inc()
                log.info("model.switched", handle_age_messages=len(self._outbox))
                return
        except Exception as error:  # noqa: BLE001 - the old connection's end will reconnect instead
            log.warning("model.switch_failed", error=repr(error))
        finally:
            self._switcher = None

    async def close(self) -> None:
        self._closed = True
        if self._switcher is not None:
            self._switcher.cancel()
        if self._conn is not None:
            await self._conn.close()


def _result_as_text(name: str, result: dict[str, Any]) -> str:
    return f"(Result of your earlier {name} call: {json.dumps(result, default=str)})"
