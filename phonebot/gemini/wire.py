"""Gemini Live's JSON on the audio hot path, written and read directly.

google-genai validates every message through pydantic: about 50 us to send one 20 ms audio
frame and 60 us to read one reply, per call, 50 times a second each way, which is most of what
a call costs. So the connection and setup stay the SDK's, and this module writes the realtime
audio message byte for byte as the SDK does and reads server messages (camelCase protobuf
JSON) straight into our events. `tests/gemini/test_wire.py` checks both against the SDK itself.
Reading checks every type it relies on, since a message shaped wrongly must cost one message,
never the call; on an audio message that is a few isinstance checks.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Literal

import orjson
import pybase64

from phonebot.call.ports import (
    BotAudio,
    BotInterrupted,
    BotTurnComplete,
    Checkpoint,
    GoingAway,
    ModelClosed,
    ModelEvent,
    ToolCall,
    ToolCallCancelled,
    Transcript,
)

# interaction_status comes with turnComplete from models that reason in the background: IN_PROGRESS
# while more may follow, IDLE (formerly REQUIRES_ACTION) when done. Without it, a turn ends it all.
_DONE = BotTurnComplete(idle=True)
_MORE_TO_COME = BotTurnComplete(idle=False)

Skip = Callable[[str, str], None]  # (part of the message, why it was left out)
_SHAPE_ERRORS = (AttributeError, TypeError, ValueError, KeyError, OverflowError)  # binascii.Error is a ValueError


def _ignore(_part: str, _why: str) -> None:
    pass


_AUDIO_HEAD = '{"realtime_input": {"audio": {"data": "'
_AUDIO_TAIL = '", "mime_type": "audio/pcm;rate=16000"}}}'


_AUDIO_HEAD_BYTES, _AUDIO_TAIL_BYTES = _AUDIO_HEAD.encode(), _AUDIO_TAIL.encode()


def audio_message(pcm16k: bytes) -> str:
    """The SDK's `send_realtime_input(audio=Blob(pcm, "audio/pcm;rate=16000"))`, as it goes on the wire."""
    return _AUDIO_HEAD + pybase64.urlsafe_b64encode(pcm16k).decode("ascii") + _AUDIO_TAIL


def audio_payload(pcm16k: bytes) -> bytes:
    """`audio_message(pcm16k)`, UTF-8 encoded: a text frame's payload."""
    return _AUDIO_HEAD_BYTES + pybase64.urlsafe_b64encode(pcm16k) + _AUDIO_TAIL_BYTES


def parse(raw: str | bytes, skip: Skip = _ignore) -> list[ModelEvent]:
    """One server message as our events, in the order they matter.

    Each part of a message is read on its own: a part shaped wrongly (a string where an object
    belongs, a list of the wrong things) is reported to `skip(part, why)` and left out, and the
    rest of the message still counts. Raises ValueError only when the whole message is not a
    JSON object. Every event out of here has the types `ports` declares.
    """
    # orjson: a quarter of json.loads' time on an audio chunk. Its ValueError says "not JSON", also
    # for JSON nested over 1024 deep (where json.loads would raise RecursionError).
    message = orjson.loads(raw)
    if not isinstance(message, dict):
        raise ValueError(f"not a JSON object but {type(message).__name__}")
    events: list[ModelEvent] = []
    if (content := message.get("serverContent")) is not None:
        if isinstance(content, dict):
            _content(content, events, skip)
        else:
            skip("serverContent", "not an object")
    for key, read in _SECTIONS:
        if (section := message.get(key)) is not None:
            try:
                read(section, events, skip)
            except _SHAPE_ERRORS as error:
                skip(key, _why(error))
    return events


def _content(content: dict[str, Any], events: list[ModelEvent], skip: Skip) -> None:
    if content.get("interrupted") is True:
        events.append(BotInterrupted())
    if (heard := content.get("inputTranscription")) is not None:
        _transcript("caller", heard, events, skip)
    if (turn := content.get("modelTurn")) is not None:
        parts = turn.get("parts") if isinstance(turn, dict) else None
        if not isinstance(parts, list):
            if parts is not None or not isinstance(turn, dict):
                skip("modelTurn", "parts is not a list")
            parts = ()
        for part in parts:
            try:
                if data := (part.get("inlineData") or {}).get("data"):
                    events.append(BotAudio(_bytes(data)))
            except _SHAPE_ERRORS as error:
                skip("modelTurn.part", _why(error))
    if (said := content.get("outputTranscription")) is not None:
        _transcript("bot", said, events, skip)
    if content.get("turnComplete") is True:
        events.append(_MORE_TO_COME if content.get("interactionStatus") == "IN_PROGRESS" else _DONE)


def _transcript(role: Literal["caller", "bot"], part: Any, events: list[ModelEvent], skip: Skip) -> None:
    text = part.get("text") if isinstance(part, dict) else None
    if isinstance(text, str):
        if text:
            events.append(Transcript(role, text))
    elif text is not None or not isinstance(part, dict):
        skip(f"{role} transcription", "text is not a string")


def _tool_call(section: Any, events: list[ModelEvent], skip: Skip) -> None:
    calls = section.get("functionCalls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise TypeError("functionCalls is not a list")
    for call in calls:
        if not isinstance(call, dict):
            skip("toolCall.functionCall", "not an object")
            continue
        call_id, name, args = call.get("id", ""), call.get("name"), call.get("args")
        if args is None:
            args = {}
        if isinstance(call_id, str) and isinstance(name, str) and name and isinstance(args, dict):
            events.append(ToolCall(call_id, name, args))
        else:
            skip("toolCall.functionCall", "needs a string id and name and an object of args")


def _cancellation(section: Any, events: list[ModelEvent], skip: Skip) -> None:
    ids = section.get("ids") or []
    if not isinstance(ids, list) or not all(isinstance(call_id, str) for call_id in ids):
        raise TypeError("ids is not a list of strings")
    events.append(ToolCallCancelled(tuple(ids)))


def _resumption(section: Any, events: list[ModelEvent], skip: Skip) -> None:
    handle = section.get("newHandle", "")
    if not isinstance(handle, str):
        raise TypeError("newHandle is not a string")
    consumed = section.get("lastConsumedClientMessageIndex")  # int64: a string in JSON
    events.append(Checkpoint(handle, section.get("resumable") is True, None if consumed is None else _index(consumed)))


def _go_away(section: Any, events: list[ModelEvent], skip: Skip) -> None:
    if not isinstance(section, dict):
        raise TypeError("goAway is not an object")
    events.append(GoingAway(seconds(section.get("timeLeft"))))  # a garbled time still means "going away"


def _error(section: Any, events: list[ModelEvent], skip: Skip) -> None:
    # The service says the session failed: that holds even when the details are garbled.
    code = section.get("code") if isinstance(section, dict) else None
    message = section.get("message") if isinstance(section, dict) else None
    if not (isinstance(code, int) and not isinstance(code, bool) and 1000 <= code <= 4999):
        code = 1011
    events.append(ModelClosed(code, message[:200] if isinstance(message, str) else ""))


_SECTIONS: tuple[tuple[str, Callable[[Any, list[ModelEvent], Skip], None]], ...] = (
    ("toolCall", _tool_call),
    ("toolCallCancellation", _cancellation),
    ("sessionResumptionUpdate", _resumption),
    ("goAway", _go_away),
    ("error", _error),
)


def _bytes(data: str) -> bytes:
    """Protobuf JSON bytes: standard base64, though the URL-safe alphabet is legal too."""
    try:  # valid standard base64 (the model's audio): SIMD, a fifth of the stdlib's time
        return pybase64.b64decode(data, validate=True)
    except ValueError:
        pass
    if "-" in data or "_" in data:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return binascii.a2b_base64(data)


def _index(value: Any) -> int:
    """An int64 message index, as protobuf JSON writes it (a string) or as a plain number."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    raise ValueError("lastConsumedClientMessageIndex is not an index")


def _why(error: BaseException) -> str:
    text = repr(error)
    return text if len(text) <= 80 else text[:77] + "..."


MAX_GO_AWAY_S = 600.0


def seconds(duration: Any) -> float:
    """A protobuf Duration in JSON ("12.5s") as seconds; unknown or absurd means "soon"."""
    try:
        value = float(duration.removesuffix("s")) if isinstance(duration, str) else 1.0
    except ValueError:
        return 1.0
    return value if 0.0 <= value <= MAX_GO_AWAY_S else 1.0  # also false for NaN
