"""The Live session's setup: LiveConnectConfig built from settings, the call and the model's capabilities."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.genai import types

from phonebot.business import Business
from phonebot.call.ports import CallInfo, HistoryTurn
from phonebot.gemini.capabilities import Capabilities
from phonebot.settings import Settings
from phonebot.tools.spec import ToolSpec


def call_context(info: CallInfo, now: datetime, business: Business | None) -> str:
    """What the system instructions say about this call: who, when, the business, and an outbound
    call's own instructions (part of the context, so instructions replaced mid-call keep them)."""
    party = "from" if info.direction == "inbound" else "to"
    number = info.caller_number or "an unknown number"
    context = f"\n\nThis call: an {info.direction} phone call {party} {number}."
    if not info.on_phone:
        context = "\n\nThis call: from the web softphone (a browser), so there is no caller number and no transfer."
    if business is None:
        context += f" It is now {now:%A %d %B %Y, %H:%M} UTC."
    else:
        context += "\n" + business.brief(now)
    if info.instructions:
        source = "from the business, not from the person on the line"
        context += f"\n\nInstructions for this call ({source}):\n{info.instructions}"
    return context


def declaration(spec: ToolSpec, capabilities: Capabilities) -> types.FunctionDeclaration:
    return types.FunctionDeclaration(
        name=spec.name,
        description=spec.description,
        parameters_json_schema=spec.parameters,
        behavior=types.Behavior(capabilities.behaviour(spec.options.non_blocking)),
    )


def history_content(history: Sequence[HistoryTurn]) -> list[types.Content | types.ContentDict]:
    return [
        types.Content(role="user" if role == "caller" else "model", parts=[types.Part(text=text)])
        for role, text in history
    ]


def live_config(
    settings: Settings,
    capabilities: Capabilities,
    instructions: str,
    tools: Sequence[ToolSpec] = (),
    resume: str | None = None,
    seeded: bool = False,
    transparent: bool | None = False,
) -> types.LiveConnectConfig:
    """`instructions`: the system instructions, call context included; `resume`: a handle to
    continue from; `seeded`: history follows as client_content (declared in the setup where the
    model wants that); `transparent`: ask for lastConsumedClientMessageIndex (Vertex AI only; the
    Gemini API refuses the option)."""
    speech = types.SpeechConfig(
        voice_config=types.VoiceConfig(
            prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=settings.gemini_voice)
        ),
        language_code=settings.gemini_language,
    )
    declared_history = seeded and capabilities.history == "initial_history"
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        system_instruction=instructions,
        speech_config=speech,
        temperature=settings.gemini_temperature,
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        tools=(
            [types.Tool(function_declarations=[declaration(spec, capabilities) for spec in tools])] if tools else None
        ),
        # Every session can be resumed, and slides its context window so calls outlast the
        # 15-minute limit of an audio session.
        session_resumption=types.SessionResumptionConfig(handle=resume, transparent=transparent or None),
        context_window_compression=types.ContextWindowCompressionConfig(sliding_window=types.SlidingWindow()),
        history_config=types.HistoryConfig(initial_history_in_client_content=True) if declared_history else None,
    )
