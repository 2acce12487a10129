"""The rules each family of Live models holds a session to, for the fake Live server.

Written from the documentation, independently of phonebot's own table (gemini/capabilities.py),
so that a mistake there shows here as a refused setup or a closed session, the way the service
shows it:

- gemini-3.8-live (https://ai.google.dev/gemini-api/docs/models/gemini-3.8-live): no thinking
  config; NON_BLOCKING function calls by default, BLOCKING still accepted, results scheduled
  SILENT / WHEN_IDLE / INTERRUPT; client_content with explicit roles for the whole session;
  proactive audio always on (`proactive_audio: false` is an error); affective dialog removed from
  the API; system instructions and tools can be updated mid-session; audio the only modality.
- gemini-3.8-live-extended-thinking (…/models/gemini-3.8-live-extended-thinking,
  …/live-api/thinking): as 3.8, but function calling is asynchronous only, thinking_level is
  taken, and every turnComplete carries interaction_status: IN_PROGRESS while the model may say
  more, IDLE when the interaction is over.
- gemini-3.1-flash-live-preview (…/models/gemini-3.1-flash-live-preview, …/live-api/tools):
  synchronous function calls only; a setup with proactive audio or affective dialog never
  completes; client_content only as initial history declared in the setup (livekit/agents#5251:
  anything later is closed with 1007).
- 2.5 native audio: everything phonebot uses, client_content at any time.

Where the docs say something is refused but not how, the fake closes with 1007 (invalid payload)
and says why: that is how the service answers every malformed or unsupported message we know of.
Mid-session context updates on 2.5 and 3.1 are refused the same way (their docs offer none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    behaviours: frozenset[str]  # FunctionDeclaration.behavior values the model takes
    scheduling: bool  # FunctionResponse.scheduling is taken (asynchronous function calling)
    late_client_content: bool  # client_content after the conversation has started
    context_update: bool  # contextUpdate (system instructions, tools) mid-session
    interaction_status: bool  # turnComplete carries interactionStatus
    thinking: bool  # thinkingConfig is taken
    proactive_off: bool  # proactivity.proactiveAudio: false is taken
    affective_dialog: bool  # enableAffectiveDialog is taken
    hangs_on: tuple[str, ...] = ()  # setup fields with which the setup never completes


GEMINI_25 = Family("2.5", frozenset({"BLOCKING", "NON_BLOCKING"}), True, True, False, False, True, True, True)
GEMINI_31 = Family(
    "3.1", frozenset({"BLOCKING"}), False, False, False, False, True, True, False,
    hangs_on=("proactivity", "enableAffectiveDialog"),
)
GEMINI_38 = Family("3.8", frozenset({"BLOCKING", "NON_BLOCKING"}), True, True, True, True, False, False, False)
GEMINI_38_THINKING = Family(
    "3.8-thinking", frozenset({"NON_BLOCKING"}), True, True, True, True, True, False, False
)

_PREFIXES = {
    "gemini-2.5-flash-native-audio": GEMINI_25,
    "gemini-live-2.5-flash-native-audio": GEMINI_25,
    "gemini-3.1-flash-live": GEMINI_31,
    "gemini-3.8-live": GEMINI_38,
    "gemini-3.8-live-extended-thinking": GEMINI_38_THINKING,
}


def family_of(model: str) -> Family | None:
    """The family of a setup's model (`models/…` or a Vertex resource name); None: no such model."""
    name = model.rsplit("/", 1)[-1]
    prefixes = [prefix for prefix in _PREFIXES if name.startswith(prefix)]
    return _PREFIXES[max(prefixes, key=len)] if prefixes else None


class Refused(Exception):
    """The setup is refused: the socket is closed with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def _get(obj: Any, name: str) -> Any:
    """A field in camelCase or snake_case (protobuf JSON takes both; the SDK writes some of each)."""
    if not isinstance(obj, dict):
        return None
    if name in obj:
        return obj[name]
    head, *rest = name.split("_")
    return obj.get(head + "".join(word.title() for word in rest))


def check_setup(setup: dict[str, Any]) -> tuple[Family, bool]:
    """The setup's family, and whether the setup completes; raises Refused if it is refused."""
    model = setup["model"]
    family = family_of(model)
    if family is None:
        reason = f"{model} is not found for API version v1beta, or is not supported for bidiGenerateContent."
        raise Refused(CLOSE_POLICY_VIOLATION, reason)
    generation = _get(setup, "generation_config") or {}
    for field in family.hangs_on:
        if _get(setup, field) is not None or _get(generation, field) is not None:
            return family, False
    modalities = _get(generation, "response_modalities")
    if family in (GEMINI_38, GEMINI_38_THINKING) and modalities not in (None, ["AUDIO"]):
        raise Refused(CLOSE_INVALID_PAYLOAD, f"Response modalities {modalities} are not supported: audio only.")
    if _get(generation, "thinking_config") is not None and not family.thinking:
        raise Refused(CLOSE_INVALID_PAYLOAD, "thinking_config is not supported by this model; omit it.")
    if _get(generation, "enable_affective_dialog") is not None and not family.affective_dialog:
        raise Refused(CLOSE_INVALID_PAYLOAD, "enable_affective_dialog is not supported by this model.")
    if _get(_get(setup, "proactivity"), "proactive_audio") is False and not family.proactive_off:
        raise Refused(CLOSE_INVALID_PAYLOAD, "proactive_audio cannot be disabled for this model.")
    for tool in _get(setup, "tools") or ():
        for declaration in _get(tool, "function_declarations") or ():
            behaviour = _get(declaration, "behavior")
            if behaviour not in (None, "UNSPECIFIED") and behaviour not in family.behaviours:
                raise Refused(CLOSE_INVALID_PAYLOAD, f"Function behavior {behaviour} is not supported by this model.")
    return family, True


def declares_history(setup: dict[str, Any]) -> bool:
    return bool(_get(_get(setup, "history_config"), "initial_history_in_client_content"))


def check_tool_response(family: Family, body: dict[str, Any]) -> None:
    """Raises Refused for a tool response the model cannot take."""
    for response in _get(body, "function_responses") or ():
        if _get(response, "scheduling") is not None and not family.scheduling:
            reason = "FunctionResponse.scheduling is not supported: function calls are synchronous."
            raise Refused(CLOSE_INVALID_PAYLOAD, reason)


def default_behaviour(family: Family, declaration: dict[str, Any]) -> str:
    """How a declared function runs on this model: as declared, else the model's default."""
    declared = _get(declaration, "behavior")
    if declared not in (None, "UNSPECIFIED"):
        return str(declared)
    return "NON_BLOCKING" if family in (GEMINI_38, GEMINI_38_THINKING) else "BLOCKING"
