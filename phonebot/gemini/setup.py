"""The Live session's setup: LiveConnectConfig built from settings and the call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.genai import types

from phonebot.call.ports import CallInfo
from phonebot.settings import Settings
from phonebot.tools.spec import ToolSpec


def call_context(info: CallInfo, now: datetime) -> str:
    party = "from" if info.direction == "inbound" else "to"
    number = info.caller_number or "an unknown number"
    return (
        f"\n\nThis call: an {info.direction} phone call {party} {number}. "
        f"It is now {now:%A %d %B %Y, %H:%M} UTC."
    )


def declaration(spec: ToolSpec) -> types.FunctionDeclaration:
    return types.FunctionDeclaration(
        name=spec.name,
        description=spec.description,
        parameters_json_schema=spec.parameters,
        behavior=types.Behavior.NON_BLOCKING if spec.options.non_blocking else None,
    )


def live_config(settings: Settings, info: CallInfo, tools: Sequence[ToolSpec] = ()) -> types.LiveConnectConfig:
    speech = types.SpeechConfig(
        voice_config=types.VoiceConfig(
            prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=settings.gemini_voice)
        ),
        language_code=settings.gemini_language,
    )
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        system_instruction=settings.prompt() + call_context(info, datetime.now(UTC)),
        speech_config=speech,
        temperature=settings.gemini_temperature,
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        tools=[types.Tool(function_declarations=[declaration(spec) for spec in tools])] if tools else None,
    )
