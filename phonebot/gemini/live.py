"""The model's side of a call: one Gemini Live session through google-genai.

`GeminiLive` is the `ModelConnector`; `LiveSession` the `ModelPort`. Gemini's message
types are translated into `phonebot.call.ports` events here and go no further.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import structlog
from google import genai
from google.genai import errors, types

from phonebot.call.ports import (
    BotAudio,
    BotInterrupted,
    BotTurnComplete,
    CallInfo,
    Checkpoint,
    GoingAway,
    HistoryTurn,
    ModelClosed,
    ModelEvent,
    ToolCall,
    ResumeRefused,
    ToolCallCancelled,
    Transcript,
)
from phonebot.gemini.setup import history_content, is_gemini3, live_config
from phonebot.settings import MissingSetting, Settings
from phonebot.tools.spec import ToolSpec

# Pings find a dead connection within half a minute. A pong slower than that (a busy server, a
# congested link) does not end the call either: the connection is replaced and resumed, losing
# nothing. A connection we retire gets a second for its closing handshake, not the default ten:
# the call reads the new connection only once the old one is closed.
KEEPALIVE = {"ping_interval": 10.0, "ping_timeout": 20.0, "close_timeout": 1.0}
# Close codes with which the service refuses a resumption handle (expired or unknown).
_REFUSED = {1007, 1008}

INPUT_RATE = 16000
OUTPUT_RATE = 24000
_INPUT_MIME = f"audio/pcm;rate={INPUT_RATE}"

log = structlog.get_logger(__name__)


class GeminiLive:
    """Opens Live sessions. The SDK reads its key, endpoint and CA bundle from the environment."""

    def __init__(self, settings: Settings, tools: Sequence[ToolSpec] = (), client: genai.Client | None = None) -> None:
        self._settings = settings
        self._tools = tuple(tools)
        self._client = client

    def client(self) -> genai.Client:
        # Made on first use, so that the service starts (and answers health checks) without a key.
        if self._client is None:
            if self._settings.google_api_key is None:
                raise MissingSetting("GOOGLE_API_KEY", "to talk to Gemini (GEMINI_API_KEY works too)")
            self._client = genai.Client(http_options=types.HttpOptions(async_client_args=KEEPALIVE))
        return self._client

    async def connect(
        self, info: CallInfo, resume: str | None = None, history: Sequence[HistoryTurn] = ()
    ) -> LiveSession:
        client = self.client()
        config = live_config(self._settings, info, self._tools, resume, bool(history), transparent=client.vertexai)
        stack = contextlib.AsyncExitStack()
        try:
            session = await stack.enter_async_context(
                client.aio.live.connect(model=self._settings.gemini_model, config=config)
            )
            live = LiveSession(session, stack)
            if history:
                # 3.x ends its history phase with turn_complete (declared in the setup); for 2.5
                # a complete turn would make the model answer the history, so leave it open.
                await live.seed(history, complete=is_gemini3(self._settings.gemini_model))
        except errors.APIError as error:
            await stack.aclose()
            if resume is not None and error.code in _REFUSED:
                raise ResumeRefused(str(error.message or error.code)) from error
            raise
        except BaseException:
            await stack.aclose()
            raise
        return live


class LiveSession:
    input_rate = INPUT_RATE
    output_rate = OUTPUT_RATE

    def __init__(self, session: genai.live.AsyncSession, stack: contextlib.AsyncExitStack) -> None:
        self._session = session
        self._stack = stack
        self.messages_sent = 0  # the setup was message 0

    async def seed(self, history: Sequence[HistoryTurn], complete: bool) -> None:
        """The conversation so far, for a fresh session that could not resume."""
        self.messages_sent += 1
        await self._session.send_client_content(turns=history_content(history), turn_complete=complete)

    async def send_audio(self, pcm: bytes) -> None:
        self.messages_sent += 1
        await self._session.send_realtime_input(audio=types.Blob(data=pcm, mime_type=_INPUT_MIME))

    async def send_text(self, text: str) -> None:
        # Realtime text, not client_content: 3.x models take client_content only as
        # history before the conversation starts.
        self.messages_sent += 1
        await self._session.send_realtime_input(text=text)

    async def send_tool_result(self, call_id: str, name: str, result: dict[str, Any], *, when_idle: bool) -> None:
        response = types.FunctionResponse(
            id=call_id,
            name=name,
            response=result,
            scheduling=types.FunctionResponseScheduling.WHEN_IDLE if when_idle else None,
        )
        self.messages_sent += 1
        await self._session.send_tool_response(function_responses=[response])

    async def events(self) -> AsyncIterator[ModelEvent]:
        try:
            while True:  # receive() ends at each turnComplete
                async for message in self._session.receive():
                    for event in translate(message):
                        yield event
        except errors.APIError as error:
            yield ModelClosed(error.code, str(error.message or error.status or ""))
        except Exception as error:  # noqa: BLE001 - any failure of the socket ends the session
            log.warning("model.receive_failed", error=repr(error))
            yield ModelClosed(1006, repr(error))

    async def close(self) -> None:
        await self._stack.aclose()


def translate(message: types.LiveServerMessage) -> Iterator[ModelEvent]:
    """One server message may carry several things; yield them in the order they matter."""
    content = message.server_content
    if content is not None:
        yield from _content(content)
    if message.session_resumption_update is not None:
        update = message.session_resumption_update
        yield Checkpoint(update.new_handle or "", bool(update.resumable), update.last_consumed_client_message_index)
    if message.go_away is not None:
        yield GoingAway(_seconds(message.go_away.time_left))
    if message.tool_call is not None:
        for call in message.tool_call.function_calls or ():
            yield ToolCall(call.id or "", call.name or "", dict(call.args or {}))
    if message.tool_call_cancellation is not None:
        yield ToolCallCancelled(tuple(message.tool_call_cancellation.ids or ()))


def _content(content: types.LiveServerContent) -> Iterator[ModelEvent]:
    if content.interrupted:
        yield BotInterrupted()
    if content.input_transcription is not None and content.input_transcription.text:
        yield Transcript("caller", content.input_transcription.text)
    if content.model_turn is not None:
        for part in content.model_turn.parts or ():
            if part.inline_data is not None and part.inline_data.data:
                yield BotAudio(part.inline_data.data)
    if content.output_transcription is not None and content.output_transcription.text:
        yield Transcript("bot", content.output_transcription.text)
    if content.turn_complete:
        yield BotTurnComplete()


def _seconds(duration: str | None) -> float:
    """A protobuf Duration in JSON ("12.5s") as seconds; unknown means "soon"."""
    try:
        return float((duration or "").removesuffix("s"))
    except ValueError:
        return 1.0
