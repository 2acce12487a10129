"""What each family of Gemini Live models takes, in one table chosen by model id.

Live models differ in what a session may carry and how it behaves, and the differences decide
what the caller hears (does the bot fall silent while a tool runs? when is it done speaking?).
Each row says what the family's documentation says; nothing else in phonebot looks at a model id.

Mid-call text (the greeting cue, DTMF, nudges) is realtime input on every family: 3.1 refuses
client_content once the conversation has started (closing with 1007), and on 3.8 client_content
with turn_complete interrupts the model unconditionally. History for a fresh session that could
not resume goes in as client_content before any realtime input, as `history` says.

Sources (September-October 2026):
- https://ai.google.dev/gemini-api/docs/models/gemini-3.8-live (migrating from 3.1)
- https://ai.google.dev/gemini-api/docs/models/gemini-3.8-live-extended-thinking
- https://ai.google.dev/gemini-api/docs/live-api/thinking (interaction_status)
- https://ai.google.dev/gemini-api/docs/models/gemini-3.1-flash-live-preview (migrating from 2.5)
- https://ai.google.dev/gemini-api/docs/live-api/tools (3.1: synchronous function calls only)
- https://github.com/livekit/agents/pull/5251 (3.1: client_content only as initial history)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

BLOCKING = "BLOCKING"
NON_BLOCKING = "NON_BLOCKING"
WHEN_IDLE = "WHEN_IDLE"
INTERRUPT = "INTERRUPT"


@dataclass(frozen=True, slots=True)
class Capabilities:
    family: str
    # Function declaration behaviours the model takes. Every declaration says its behaviour, so
    # no model's default (3.8 made NON_BLOCKING the default) changes what the caller hears.
    behaviours: frozenset[str]
    # FunctionResponse.scheduling is honoured (asynchronous function calling).
    scheduled_results: bool
    # How a fresh session is seeded with the conversation so far: an open client_content turn
    # (a complete one would make the model answer it), or initial history declared in the setup
    # (`history_config`) and closed with turn_complete, after which only realtime input goes.
    history: Literal["open_turn", "initial_history"]
    # contextUpdate may replace the system instructions mid-session; otherwise new instructions
    # go in as realtime text.
    instructions_update: bool
    # What says the bot is done: every turnComplete, or only the one whose interaction_status
    # is IDLE (the model may speak, call a tool and speak again within one interaction).
    turn_end: Literal["turn_complete", "interaction_idle"]
    # Optional setup fields the model accepts. phonebot sends none of them; the row says which
    # a future setting could (3.1 never completes a setup with proactivity or affective dialog,
    # 3.8 refuses thinking config and proactive_audio: false, and has no affective dialog).
    setup_options: frozenset[str]

    def declares_non_blocking(self, non_blocking: bool) -> bool:
        """Whether a tool (non-blocking or not, in phonebot's terms) is declared NON_BLOCKING here."""
        if BLOCKING not in self.behaviours:
            return True  # asynchronous only
        return non_blocking and NON_BLOCKING in self.behaviours

    def behaviour(self, non_blocking: bool) -> str:
        return NON_BLOCKING if self.declares_non_blocking(non_blocking) else BLOCKING

    def scheduling(self, non_blocking: bool) -> str | None:
        """How the model is to speak of a result: a background tool's once the bot is quiet; one
        the conversation waits for (declared asynchronous only because the model has no other
        kind) at once, after the caller has finished speaking. A blocking call's result needs none."""
        if not self.scheduled_results or not self.declares_non_blocking(non_blocking):
            return None
        return WHEN_IDLE if non_blocking else INTERRUPT


GEMINI_25 = Capabilities(
    family="gemini-2.5-native-audio",
    behaviours=frozenset({BLOCKING, NON_BLOCKING}),
    scheduled_results=True,
    history="open_turn",
    instructions_update=False,
    turn_end="turn_complete",
    setup_options=frozenset({"thinking_config", "proactivity", "enable_affective_dialog"}),
)
GEMINI_31 = Capabilities(
    family="gemini-3.1-live",
    behaviours=frozenset({BLOCKING}),
    scheduled_results=False,
    history="initial_history",
    instructions_update=False,
    turn_end="turn_complete",
    setup_options=frozenset({"thinking_config"}),
)
GEMINI_38 = Capabilities(
    family="gemini-3.8-live",
    behaviours=frozenset({BLOCKING, NON_BLOCKING}),
    scheduled_results=True,
    history="initial_history",
    instructions_update=True,
    turn_end="turn_complete",
    setup_options=frozenset({"proactivity"}),  # proactive audio is always on; only `true` is accepted
)
GEMINI_38_EXTENDED_THINKING = dataclasses.replace(
    GEMINI_38,
    family="gemini-3.8-live-extended-thinking",
    behaviours=frozenset({NON_BLOCKING}),
    turn_end="interaction_idle",
    setup_options=frozenset({"proactivity", "thinking_config"}),
)
# An id no row knows is most likely a newer release of today's API: take 3.8's rules, but send
# new instructions as text, which every model takes.
FALLBACK = dataclasses.replace(GEMINI_38, family="unknown", instructions_update=False)

_BY_PREFIX = {
    "gemini-2.5-flash-native-audio": GEMINI_25,
    "gemini-live-2.5-flash-native-audio": GEMINI_25,  # Vertex AI's id
    "gemini-3.1-flash-live": GEMINI_31,
    "gemini-3.8-live": GEMINI_38,
    "gemini-3.8-live-extended-thinking": GEMINI_38_EXTENDED_THINKING,
}


def capabilities(model: str) -> Capabilities:
    """The row for a model id (`models/…` and Vertex resource names included); FALLBACK if none."""
    name = model.rsplit("/", 1)[-1]
    prefixes = [prefix for prefix in _BY_PREFIX if name.startswith(prefix)]
    return _BY_PREFIX[max(prefixes, key=len)] if prefixes else FALLBACK
