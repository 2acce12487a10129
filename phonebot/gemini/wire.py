"""Gemini Live's JSON on the audio hot path, written and read directly.

google-genai validates every message through pydantic: about 50 us to send one 20 ms audio
frame and 60 us to read one reply, per call, 50 times a second each way, which is most of what
a call costs. So the connection and setup stay the SDK's, and this module writes the realtime
audio message byte for byte as the SDK does and reads server messages (camelCase protobuf
JSON) straight into our events. `tests/gemini/test_wire.py` checks both against the SDK itself.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

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
_AUDIO_HEAD = '{"realtime_input": {"audio": {"data": "'
_AUDIO_TAIL = '", "mime_type": "audio/pcm;rate=16000"}}}'


def audio_message(pcm16k: bytes) -> str:
    """The SDK's `send_realtime_input(audio=Blob(pcm, "audio/pcm;rate=16000"))`, as it goes on the wire."""
    return _AUDIO_HEAD + base64.urlsafe_b64encode(pcm16k).decode("ascii") + _AUDIO_TAIL


def parse(raw: str | bytes) -> list[ModelEvent]:
    """One server message as our events, in the order they matter."""
    message = json.loads(raw)
    events: list[ModelEvent] = []
    if (content := message.get("serverContent")) is not None:
        _content(content, events)
    if (tool_call := message.get("toolCall")) is not None:
        for call in tool_call.get("functionCalls") or ():
            events.append(ToolCall(call.get("id", ""), call.get("name", ""), call.get("args") or {}))
    if (cancellation := message.get("toolCallCancellation")) is not None:
        events.append(ToolCallCancelled(tuple(cancellation.get("ids") or ())))
    if (update := message.get("sessionResumptionUpdate")) is not None:
        consumed = update.get("lastConsumedClientMessageIndex")  # int64: a string in JSON
        events.append(Checkpoint(update.get("newHandle", ""), bool(update.get("resumable")), _int(consumed)))
    if (go_away := message.get("goAway")) is not None:
        events.append(GoingAway(seconds(go_away.get("timeLeft"))))
    if (error := message.get("error")) is not None:
        events.append(ModelClosed(int(error.get("code") or 1011), str(error.get("message", ""))))
    return events


def _content(content: dict[str, Any], events: list[ModelEvent]) -> None:
    if content.get("interrupted"):
        events.append(BotInterrupted())
    if text := (content.get("inputTranscription") or {}).get("text"):
        events.append(Transcript("caller", text))
    for part in (content.get("modelTurn") or {}).get("parts") or ():
        if data := (part.get("inlineData") or {}).get("data"):
            events.append(BotAudio(_bytes(data)))
    if text := (content.get("outputTranscription") or {}).get("text"):
        events.append(Transcript("bot", text))
    if content.get("turnComplete"):
        events.append(_MORE_TO_COME if content.get("interactionStatus") == "IN_PROGRESS" else _DONE)


def _bytes(data: str) -> bytes:
    """Protobuf JSON bytes: standard base64, though the URL-safe alphabet is legal too."""
    if "-" in data or "_" in data:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return binascii.a2b_base64(data)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def seconds(duration: str | None) -> float:
    """A protobuf Duration in JSON ("12.5s") as seconds; unknown means "soon"."""
    try:
        return float((duration or "").removesuffix("s"))
    except ValueError:
        return 1.0
