"""The two seams of a call, as protocols and plain event types.

The telephony side (`phonebot.telephony`) implements `CallerPort`; the model side
(`phonebot.gemini`) implements `ModelPort`. Neither imports the other: this module is
all they share. Audio crossing either seam is 16-bit little-endian mono PCM bytes at
the side's own rate.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Direction = Literal["inbound", "outbound", "web"]  # web: the browser softphone


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What is known about a call before any audio flows."""

    call_sid: str
    from_number: str = ""
    to_number: str = ""
    direction: Direction = "inbound"
    parameters: dict[str, str] = field(default_factory=dict)
    instructions: str | None = None  # an outbound call's own, added to the bot's for this call only
    metadata: dict[str, Any] = field(default_factory=dict)  # the operator's, for the record and webhook

    @property
    def caller_number(self) -> str:
        """The other party's number: who dialled us, or whom we dialled."""
        return self.from_number if self.direction == "inbound" else self.to_number

    @property
    def on_phone(self) -> bool:
        """A telephone call, not the browser softphone's: it has a number, and can be transferred to another."""
        return self.direction != "web"


# -- caller side --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerAudio:
    pcm: bytes


@dataclass(frozen=True, slots=True)
class CallerDigit:
    digit: str


@dataclass(frozen=True, slots=True)
class PlaybackMark:
    """All bot audio sent before the mark of this name has been played to the caller."""

    name: str


CallerEvent = CallerAudio | CallerDigit | PlaybackMark


class CallerPort(Protocol):
    """The person on the phone. `events()` ends when they hang up."""

    info: CallInfo
    sample_rate: int

    def events(self) -> AsyncIterator[CallerEvent]: ...

    async def play(self, pcm: bytes) -> None:
        """Queue bot audio for the caller (any length; sent as it completes frames)."""

    async def mark(self, name: str) -> None:
        """Ask for `PlaybackMark(name)` once everything queued so far has been heard."""

    async def flush(self) -> None:
        """Send any partial frame now (the end of a bot turn)."""

    async def clear(self) -> None:
        """Drop every bit of bot audio the caller has not heard yet."""

    async def redirect(self, say: str | None = None, dial: str | None = None) -> None:
        """Take the call out of this stream: say `say` (if any), then dial `dial` or hang up."""

    async def close(self) -> None:
        """End the stream (idempotent)."""


# -- model side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BotAudio:
    pcm: bytes


@dataclass(frozen=True, slots=True)
class BotInterrupted:
    """The caller spoke over the bot; the model stopped generating this turn."""


@dataclass(frozen=True, slots=True)
class BotTurnComplete:
    """The model finished an utterance. `idle`: and has nothing more coming. A model that reasons
    in the background (extended thinking) may speak, call a tool and speak again within one
    interaction: the bot is done only when it is idle."""

    idle: bool = True


@dataclass(frozen=True, slots=True)
class Transcript:
    role: Literal["caller", "bot"]
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCallCancelled:
    """The model no longer wants these results (the caller talked over it): send none."""

    call_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The model's state can be resumed from `handle` (when `resumable`).

    `consumed` is the index of the last message of ours that the state includes, when the
    service says so; otherwise the state includes what we had sent when this arrived.
    """

    handle: str
    resumable: bool
    consumed: int | None = None


@dataclass(frozen=True, slots=True)
class GoingAway:
    """The connection will be closed in `seconds`: move to a new one before then."""

    seconds: float


@dataclass(frozen=True, slots=True)
class ModelClosed:
    """The model's connection ended; `code` is the WebSocket close code."""

    code: int
    reason: str


ModelEvent = (
    BotAudio
    | BotInterrupted
    | BotTurnComplete
    | Transcript
    | ToolCall
    | ToolCallCancelled
    | Checkpoint
    | GoingAway
    | ModelClosed
)


class ModelPort(Protocol):
    """One conversation with the model. `events()` ends after `ModelClosed`."""

    @property
    def input_rate(self) -> int: ...

    @property
    def output_rate(self) -> int: ...

    async def send_audio(self, pcm: bytes) -> None: ...

    async def send_text(self, text: str) -> None:
        """Text the model reads as the caller's input, mid-call (greeting cue, DTMF)."""

    async def send_tool_result(self, call_id: str, name: str, result: dict[str, Any], *, when_idle: bool) -> None:
        """Answer a `ToolCall`. `when_idle`: for a non-blocking tool, speak of it once the bot is quiet."""

    async def update_instructions(self, instructions: str) -> None:
        """Replace the bot's instructions for the rest of the call (an answering machine: leave a
        message instead). Mid-session where the model allows it, else as text it reads."""

    def events(self) -> AsyncGenerator[ModelEvent, None]: ...

    async def close(self) -> None:
        """End the conversation (idempotent)."""


class ModelConnection(ModelPort, Protocol):
    """One connection to the model; `messages_sent` counts our messages on it, setup being 0."""

    messages_sent: int

    def send_audio_now(self, pcm: bytes) -> bool:
        """Send caller audio at once if that needs no waiting (the connection open, its buffer not
        full); whether it was sent. If not, `send_audio` it (which waits, or fails)."""
        ...


class ResumeRefused(Exception):
    """The model would not resume from the handle (expired or unknown)."""


HistoryTurn = tuple[Literal["caller", "bot"], str]


class ModelConnector(Protocol):
    async def connect(
        self,
        info: CallInfo,
        resume: str | None = None,
        history: Sequence[HistoryTurn] = (),
        instructions: str | None = None,
    ) -> ModelConnection:
        """Open a connection: fresh, resumed from a `Checkpoint` handle, or seeded with `history`.
        `instructions`: what replaced the configured ones during the call, if anything did."""
