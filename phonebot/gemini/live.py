"""The model's side of a call: one Gemini Live session through google-genai.

`GeminiLive` is the `ModelConnector`; `LiveSession` the `ModelConnection`. Gemini's
messages become `phonebot.call.ports` events here (`wire.parse`) and go no further.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from google import genai
from google.genai import errors, types
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from phonebot import wsframe
from phonebot.business import Business
from phonebot.call.ports import (
    BotAudio,
    CallInfo,
    HistoryTurn,
    ModelClosed,
    ModelEvent,
    ResumeRefused,
)
from phonebot.gemini import wire
from phonebot.gemini.capabilities import FALLBACK, Capabilities, capabilities
from phonebot.gemini.config import call_context, history_content, live_config
from phonebot.gemini.lane import Lane
from phonebot.logs import Skipped
from phonebot.settings import MissingSetting, Settings
from phonebot.tools.spec import ToolSpec, offered

# Pings find a dead connection within half a minute. A pong slower than that (a busy server, a
# congested link) does not end the call either: the connection is replaced and resumed, losing
# nothing. A connection we retire gets a second for its closing handshake, not the default ten:
# the call reads the new connection only once the old one is closed.
# max_size: the largest server message read (websockets' own default, said out loud): a model
# turn's audio comes in chunks of a few kB, and nothing larger is ever read into memory.
# max_queue: messages read ahead before reading pauses. An early session (opened while the phone
# rings) holds its whole greeting unread until the call is answered; at websockets' default of 16
# reading would pause mid-greeting, the pongs behind it would go unread, and the keepalive would
# close the session ~30 s into the ringing. A greeting is a few hundred messages at most.
# compression: websockets offers permessage-deflate unless told not to, and a server that takes it
# deflates every audio message: CPU both ways for a little bandwidth, and `lane.py` hands every
# compressed frame back to websockets (as does the Twilio side: `ws_per_message_deflate` is off).
KEEPALIVE: dict[str, Any] = {
    "ping_interval": 10.0,
    "ping_timeout": 20.0,
    "close_timeout": 1.0,
    "max_size": 2**20,
    "max_queue": 1024,
    "compression": None,
}
# Close codes with which the service refuses a resumption handle (expired or unknown).
_REFUSED = {1007, 1008}

INPUT_RATE = 16000
OUTPUT_RATE = 24000
# The model's audio already waiting when a chunk is read goes with it, up to this much (100 ms).
GATHER_BYTES = OUTPUT_RATE * 2 // 10

log = structlog.get_logger(__name__)


class GeminiLive:
    """Opens Live sessions. The SDK reads its key or Vertex AI project, endpoint and CA bundle
    from the environment."""

    def __init__(
        self,
        settings: Settings,
        tools: Sequence[ToolSpec] = (),
        business: Business | None = None,
        client: genai.Client | None = None,
    ) -> None:
        self._settings = settings
        self._tools = tuple(tools)
        self._business = business
        self._client = client
        self.capabilities = capabilities(settings.gemini_model)
        if self.capabilities is FALLBACK:
            log.warning("model.unknown", model=settings.gemini_model, assumed="gemini-3.8-live")

    def client(self) -> genai.Client:
        # Made on first use, so that the service starts (and answers health checks) without a key.
        # On Vertex AI the SDK finds Application Default Credentials itself.
        if self._client is None:
            if self._settings.google_api_key is None and not self._settings.vertex_ai:
                raise MissingSetting("GOOGLE_API_KEY", "to talk to Gemini (GEMINI_API_KEY works too)")
            self._client = genai.Client(http_options=types.HttpOptions(async_client_args=KEEPALIVE))
        return self._client

    async def connect(
        self,
        info: CallInfo,
        resume: str | None = None,
        history: Sequence[HistoryTurn] = (),
        instructions: str | None = None,
    ) -> LiveSession:
        client = self.client()
        context = call_context(info, datetime.now(UTC), self._business)
        system = (instructions or self._settings.prompt()) + context
        # Vertex AI says which of our messages a handle covers (transparent resumption).
        tools = offered(self._tools, info.on_phone)
        config = live_config(
            self._settings, self.capabilities, system, tools, resume, bool(history), transparent=client.vertexai
        )
        stack = contextlib.AsyncExitStack()
        try:
            session = await stack.enter_async_context(
                client.aio.live.connect(model=self._settings.gemini_model, config=config)
            )
            live = LiveSession(session, stack, self.capabilities, context)
            if history:
                await live.seed(history)
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
    """One Live connection. Audio goes over the SDK's own socket through `wire` (the hot path);
    tool responses and history go through the SDK's methods."""

    input_rate = INPUT_RATE
    output_rate = OUTPUT_RATE

    def __init__(
        self,
        session: genai.live.AsyncSession,
        stack: contextlib.AsyncExitStack,
        capabilities: Capabilities,
        context: str = "",
    ) -> None:
        self._session = session
        self._ws = session._ws  # the SDK keeps its websocket here; `wire` writes what the SDK would
        # Its messages read off it directly, with websockets' own limits.
        self._lane = Lane.install(self._ws, int(KEEPALIVE["max_size"]), int(KEEPALIVE["max_queue"]))
        self._stack = stack
        self._capabilities = capabilities
        self._context = context  # what the system instructions say about this call
        self.messages_sent = 0  # the setup was message 0
        self.skipped = Skipped(log)  # what the model sent that could not be read, counted

    async def seed(self, history: Sequence[HistoryTurn]) -> None:
        """The conversation so far, for a fresh session that could not resume. Declared initial
        history ends with turn_complete; an open turn stays open, or the model would answer it."""
        self.messages_sent += 1
        complete = self._capabilities.history == "initial_history"
        await self._session.send_client_content(turns=history_content(history), turn_complete=complete)

    def send_audio_now(self, pcm: bytes) -> bool:
        ws = self._ws
        if ws.protocol.state is not State.OPEN or ws.paused or ws.send_in_progress is not None:
            return False  # closing, or flow control: websockets' own send waits or raises
        self.messages_sent += 1
        ws.transport.write(wsframe.client_text(wire.audio_payload(pcm)))  # the frame websockets would write
        return True

    async def send_audio(self, pcm: bytes) -> None:
        if not self.send_audio_now(pcm):
            self.messages_sent += 1
            await self._ws.send(wire.audio_message(pcm))

    async def send_text(self, text: str) -> None:
        # Realtime text on every model (see capabilities.py).
        self.messages_sent += 1
        await self._session.send_realtime_input(text=text)

    async def send_tool_result(self, call_id: str, name: str, result: dict[str, Any], *, when_idle: bool) -> None:
        scheduling = self._capabilities.scheduling(when_idle)
        response = types.FunctionResponse(
            id=call_id,
            name=name,
            response=result,
            scheduling=types.FunctionResponseScheduling(scheduling) if scheduling else None,
        )
        self.messages_sent += 1
        await self._session.send_tool_response(function_responses=[response])

    async def update_instructions(self, instructions: str) -> None:
        self.messages_sent += 1
        if self._capabilities.instructions_update:
            await self._session.send_context_update(system_instruction=instructions + self._context)
        else:
            await self._session.send_realtime_input(text=instructions_cue(instructions))

    async def events(self) -> AsyncGenerator[ModelEvent, None]:
        lane = self._lane
        while True:
            try:
                raw = await lane.next() if lane is not None else None
                if raw is None:  # websockets reads the connection (closing, or something unusual)
                    raw = await self._ws.recv(decode=False)
            except ConnectionClosed as closed:
                code, reason = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (1006, "no close frame")
                yield ModelClosed(code, reason)
                return
            if (events := self._parse(raw)) is None:
                continue
            if lane is not None and len(events) == 1 and type(events[0]) is BotAudio and lane.waiting():
                events = self._gather_audio(lane, events[0].pcm)
            for event in events:
                yield event
                if isinstance(event, ModelClosed):
                    return

    def _parse(self, raw: bytes) -> list[ModelEvent] | None:
        try:
            return wire.parse(raw, self._skip)
        except ValueError as error:  # one garbled message is not worth a call
            self.skipped.warning("model.bad_message", error=str(error)[:80], size=len(raw))
            return None

    def _gather_audio(self, lane: Lane, pcm: bytes) -> list[ModelEvent]:
        """Where the call has fallen behind (more of the model's audio already received, unread),
        that audio goes with this chunk, up to `GATHER_BYTES`: one resampling and one write to the
        caller instead of several, for audio already late (as the caller's side does)."""
        parts, size = [pcm], len(pcm)
        while size < GATHER_BYTES and (raw := lane.next_nowait()) is not None:
            if (events := self._parse(raw)) is None:
                continue
            if len(events) == 1 and type(events[0]) is BotAudio:
                parts.append(events[0].pcm)
                size += len(events[0].pcm)
                continue
            return [BotAudio(b"".join(parts)), *events]
        return [BotAudio(b"".join(parts))]

    def _skip(self, part: str, why: str) -> None:
        self.skipped.warning("model.bad_part", part=part, error=why)

    async def close(self) -> None:
        self.skipped.report("model.skipped_messages")
        await self._stack.aclose()


def instructions_cue(instructions: str) -> str:
    """New instructions as text, for a model that cannot take them mid-session."""
    return f"(New instructions for the rest of this call; they replace your earlier ones: {instructions})"
