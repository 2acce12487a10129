"""What the softphone page shows while its call goes on: the transcript, tool calls, the end.

The call record already hears all of it: each transcription fragment (`progress`), a finished
or cut-short turn and each tool call as it starts and ends (`entry`), the end (`ended`). `LiveView`
is the calls' `RecordSink`, wrapped around the store's: everything goes on to the store as before,
and what belongs to a call that has a page attached is also sent to that page, as JSON events on
its own WebSocket. The events are phonebot's, not Twilio's, and only web calls get them:

    {"event": "turn",   "turn":   {"seq", "role", "text", "interrupted", "final", "offset_ms"}}
    {"event": "tool",   "tool":   {"seq", "name", "args", "done", "ok", "result", "offset_ms"}}
    {"event": "ended",  "ended":  {"reason"}}
    {"event": "notice", "notice": {"text"}}   (what a phone caller would hear: the apology)

A phone call has no page: its stream is never written to from here, and its entries cost one
dict lookup on their way to the store. Nothing here is on the audio path, and nothing waits for a
page: events are queued and sent by one task per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from phonebot.call.record import CallRecord, Digit, Entry, RecordSink, ToolRecord, Turn

log = structlog.get_logger(__name__)

MAX_QUEUED = 500  # events a page that does not read may fall behind by; the oldest then go
FLUSH_S = 2.0  # at the end of a call: how long its last events may take to leave


def event(entry: Entry, final: bool) -> dict[str, Any] | None:
    """A timeline entry as the page's JSON event (None: nothing to show; a web call has no keypad)."""
    match entry:
        case Turn(role=role, text=text, interrupted=interrupted):
            turn = {"role": role, "text": text, "interrupted": interrupted, "final": final}
            return {"event": "turn", "turn": {"seq": entry.seq, **turn, "offset_ms": entry.offset_ms}}
        case ToolRecord(name=name, args=args, done=done, ok=ok, result=result):
            tool = {"name": name, "args": args, "done": done, "ok": ok, "result": result if done else None}
            return {"event": "tool", "tool": {"seq": entry.seq, **tool, "offset_ms": entry.offset_ms}}
        case Digit():
            return None


class PageFeed:
    """Events for one page, sent in order by their own task: the call never waits for the page."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._queue: deque[tuple[str, bool]] = deque()
        self._waiting = asyncio.Event()
        self._told = asyncio.Event()  # the page has been sent the call's end
        self._idle = asyncio.Event()  # nothing queued, nothing being sent
        self._idle.set()
        self._dropped = 0
        self._task = asyncio.create_task(self._send_all(), name="page feed")

    def put(self, message: dict[str, Any], last: bool = False) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append((json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str), last))
        self._idle.clear()
        self._waiting.set()

    async def told(self) -> None:
        """Wait (up to FLUSH_S) until the page has been sent the call's end."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_S):
                await self._told.wait()

    async def close(self) -> None:
        """Send what is queued (for up to FLUSH_S), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_S):
                await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._dropped:
            log.warning("web.page_behind", dropped_events=self._dropped)

    async def _send_all(self) -> None:
        try:
            while True:
                await self._waiting.wait()
                self._waiting.clear()
                while self._queue:
                    text, last = self._queue.popleft()
                    if self._ws.application_state != WebSocketState.CONNECTED:
                        return
                    await self._ws.send_text(text)
                    if last:
                        self._told.set()
                self._idle.set()
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the page went; the call notices by itself
        finally:
            self._queue.clear()
            self._idle.set()


class LiveView:
    """The calls' RecordSink: the store's (`then`), plus the page of each web call that has one."""

    def __init__(self, then: RecordSink | None = None) -> None:
        self._then = then
        self._pages: dict[str, PageFeed] = {}

    @contextlib.asynccontextmanager
    async def attach(self, call_sid: str, websocket: WebSocket) -> AsyncIterator[PageFeed]:
        """Show `call_sid` on the page at the other end of `websocket` for as long as this lasts."""
        page = self._pages[call_sid] = PageFeed(websocket)
        try:
            yield page
        finally:
            del self._pages[call_sid]
            await page.close()

    def notice(self, call_sid: str, text: str) -> None:
        if (page := self._pages.get(call_sid)) is not None:
            page.put({"event": "notice", "notice": {"text": text}})

    # -- RecordSink ---------------------------------------------------------------------------

    def started(self, record: CallRecord) -> None:
        if self._then is not None:
            self._then.started(record)

    def entry(self, record: CallRecord, entry: Entry) -> None:
        if self._then is not None:
            self._then.entry(record, entry)
        self._show(record, entry, final=True)

    def progress(self, record: CallRecord, entry: Entry) -> None:
        if self._then is not None:
            self._then.progress(record, entry)
        self._show(record, entry, final=False)

    def ended(self, record: CallRecord) -> None:
        if self._then is not None:
            self._then.ended(record)
        if (page := self._pages.get(record.call_sid)) is not None:
            page.put({"event": "ended", "ended": {"reason": record.end_reason}}, last=True)

    def _show(self, record: CallRecord, entry: Entry, final: bool) -> None:
        page = self._pages.get(record.call_sid)
        if page is not None and (message := event(entry, final)) is not None:
            page.put(message)
