"""The hot path writes and reads Gemini Live's JSON itself: check it against google-genai's own."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from google import genai
from google.genai import live, types

from phonebot.call.ports import (
    BotAudio,
    BotInterrupted,
    BotTurnComplete,
    Checkpoint,
    GoingAway,
    ModelClosed,
    ToolCall,
    ToolCallCancelled,
    Transcript,
)
from phonebot.gemini import wire


class _Socket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)


async def test_audio_message_is_byte_for_byte_what_the_sdk_sends() -> None:
    socket = _Socket()
    session = live.AsyncSession(api_client=genai.Client(api_key="x")._api_client, websocket=socket)
    pcm = bytes(range(256)) * 3  # every byte value, so both base64 alphabets would show
    await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type="audio/pcm;rate=16000"))
    assert wire.audio_message(pcm) == socket.sent[0]


def _sdk_reading(message: dict[str, Any]) -> types.LiveServerMessage:
    from google.genai import _live_converters

    return types.LiveServerMessage._from_response(
        response=_live_converters._LiveServerMessage_from_mldev(message), kwargs={}
    )


def test_server_messages_read_as_the_sdk_reads_them() -> None:
    pcm = bytes(range(256))
    message = {
        "serverContent": {
            "interrupted": True,
            "inputTranscription": {"text": "hello"},
            "modelTurn": {
                "parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(pcm).decode()}}]
            },
            "outputTranscription": {"text": "hi there"},
            "turnComplete": True,
        },
        "toolCall": {"functionCalls": [{"id": "c1", "name": "lookup", "args": {"name": "Ada"}}]},
        "toolCallCancellation": {"ids": ["c0"]},
        "sessionResumptionUpdate": {"newHandle": "h1", "resumable": True, "lastConsumedClientMessageIndex": "41"},
        "goAway": {"timeLeft": "9.5s"},
    }
    sdk = _sdk_reading(message)
    assert sdk.server_content.model_turn.parts[0].inline_data.data == pcm
    assert sdk.session_resumption_update.last_consumed_client_message_index == 41
    assert wire.parse(json.dumps(message)) == [
        BotInterrupted(),
        Transcript("caller", "hello"),
        BotAudio(pcm),
        Transcript("bot", "hi there"),
        BotTurnComplete(),
        ToolCall("c1", "lookup", {"name": "Ada"}),
        ToolCallCancelled(("c0",)),
        Checkpoint("h1", True, 41),
        GoingAway(9.5),
    ]


def test_url_safe_audio_and_unknown_fields() -> None:
    pcm = bytes([251, 255, 190] * 10)
    data = base64.urlsafe_b64encode(pcm).decode().rstrip("=")
    raw = json.dumps({"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": data}}]}}, "usageMetadata": {}})
    assert wire.parse(raw) == [BotAudio(pcm)]
    assert wire.parse('{"setupComplete": {}}') == []
    assert wire.parse('{"sessionResumptionUpdate": {"resumable": false}}') == [Checkpoint("", False, None)]


@pytest.mark.parametrize(
    ("status", "idle"), [(None, True), ("IDLE", True), ("IN_PROGRESS", False), ("REQUIRES_ACTION", True)]
)
def test_interaction_status_says_whether_the_bot_is_done(status: str | None, idle: bool) -> None:
    content: dict[str, Any] = {"turnComplete": True}
    if status is not None:
        content["interactionStatus"] = status
    sdk = _sdk_reading({"serverContent": content})
    assert sdk.server_content.interaction_status == (types.InteractionStatus(status) if status else None)
    assert wire.parse(json.dumps({"serverContent": content})) == [BotTurnComplete(idle=idle)]
    if status != "REQUIRES_ACTION":  # IDLE's deprecated name ("use IDLE instead"); the SDK's helper misses it
        assert live._is_interaction_complete(sdk.server_content) is idle


def test_parts_shaped_wrongly_are_skipped_and_reported_and_the_rest_kept() -> None:
    skipped: list[str] = []
    message = {
        "serverContent": {
            "interrupted": "yes",  # not a bool: no barge-in on the strength of it
            "inputTranscription": {"text": 5},
            "modelTurn": {"parts": [5, {"inlineData": {"data": "AAA"}}, {"inlineData": {"data": "AAAA"}}]},
            "outputTranscription": {"text": "kept"},
            "turnComplete": True,
        },
        "toolCall": {
            "functionCalls": [{"id": 1, "name": "x"}, {"id": "c1", "name": "x", "args": []}, {"id": "c2", "name": "x"}]
        },
        "toolCallCancellation": {"ids": [1]},
        "sessionResumptionUpdate": {"newHandle": "h", "resumable": True, "lastConsumedClientMessageIndex": "²"},
        "goAway": "soon",
        "error": {"code": "x", "message": 5},
    }
    events = wire.parse(json.dumps(message), lambda part, why: skipped.append(part))
    assert events == [
        BotAudio(b"\x00\x00\x00"),
        Transcript("bot", "kept"),
        BotTurnComplete(),
        ToolCall("c2", "x", {}),
        ModelClosed(1011, ""),  # the service said the session failed, however garbled
    ]
    assert skipped == [
        "caller transcription",
        "modelTurn.part",
        "modelTurn.part",
        "toolCall.functionCall",
        "toolCall.functionCall",
        "toolCallCancellation",
        "sessionResumptionUpdate",
        "goAway",
    ]


def test_only_a_message_that_is_no_object_at_all_is_an_error() -> None:
    for raw in ("[]", "5", '"x"', "null", "{not json", "[" * 100_000, b"\xff\xfe"):
        try:
            wire.parse(raw)
        except ValueError:
            continue
        raise AssertionError(f"{raw[:10]!r} was read as a message")
    assert wire.parse('{"serverContent": "x", "toolCall": 5}') == []


def test_go_away_times_are_sane() -> None:
    assert [wire.seconds(value) for value in ("12.5s", "0s", "1e9s", "nans", "-3s", 5, None, "x")] == [
        12.5, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0
    ]
