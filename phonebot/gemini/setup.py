"""The Live session's setup: LiveConnectConfig built from settings and the call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.genai import types

from phonebot.business import Business
from phonebot.call.ports import CallInfo, HistoryTurn
from phonebot.settings import Settings
from phonebot.tools.spec import ToolSpec


def call_context(info: CallInfo, now: datetime, business: Business | None) -> str:
    party = "from" if info.direction == "inbound" else "to"
    number = info.caller_number or "an unknown number"
    context = f"\n\nThis call: an {info.direction} phone call {party} {number}."
    if business is None:
        return context + f" It is now {now:%A %d %B %Y, %H:%M} UTC."
    return context + "\n" + business.brief(now)


def declaration(spec: ToolSpec) -> types.FunctionDeclaration:
    return types.FunctionDeclaration(
        name=spec.name,
        description=spec.description,
        parameters_json_schema=spec.parameters,
        behavior=types.Behavior.NON_BLOCKING if spec.options.non_blocking else None,
    )


def history_content(history: Sequence[HistoryTurn]) -> list[types.Content | types.ContentDict]:
    return [types.Content(role="user" if role == "caller" else "model", parts=[types.Part(text=text)]) for role, text in history]


def is_gemini3(model: str) -> bool:
    return "gemini-3" in model


def live_config(
    settings: Settings,
    info: CallInfo,
    tools: Sequence[ToolSpec] = (),
    business: Business | None = None,
    resume: str | None = None,
    seeded: bool = False,
    transparent: bool | None = False,
) -> types.LiveConnectConfig:
    """`resume`: a handle to continue from; `seeded`: history follows as client_content (3.x wants
    that declared); `transparent`: ask for lastConsumedClientMessageIndex (Vertex only; the
    Gemini API refuses the option)."""
    speech = types.SpeechConfig(
        voice_config=types.VoiceConfig(
            prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=settings.gemini_voice)
        ),
        language_code=settings.gemini_language,
    )
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        system_instruction=settings.prompt() + call_context(info, datetime.now(UTC), business),
        speech_config=speech,
        temperature=settings.gemini_temperature,
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        tools=[types.Tool(function_declarations=[declaration(spec) for spec in tools])] if tools else None,
        # Every session can be resumed, and slides its context window so calls outlast the
        # 15-minute limit of an audio session.
        session_resumption=types.SessionResumptionConfig(handle=resume, transparent=transparent or None),
        context_window_compression=types.ContextWindowCompressionConfig(sliding_window=types.SlidingWindow()),
        history_config=types.HistoryConfig(initial_history_in_client_content=True)
        if seeded and is_gemini3(settings.gemini_model)
        else None,
    )
