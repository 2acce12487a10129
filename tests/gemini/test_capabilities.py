"""The capability table: which row each model id gets, and what the setup and tool results carry for it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google import genai
from google.genai import _common, _live_converters, types

from phonebot.call.ports import CallInfo
from phonebot.gemini.capabilities import (
    FALLBACK,
    GEMINI_25,
    GEMINI_31,
    GEMINI_38,
    GEMINI_38_EXTENDED_THINKING,
    Capabilities,
    capabilities,
)
from phonebot.gemini.config import live_config
from phonebot.tools.spec import ToolSpec, tool
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("model", "row"),
    [
        ("gemini-3.8-live", GEMINI_38),
        ("models/gemini-3.8-live", GEMINI_38),
        ("gemini-3.8-live-extended-thinking", GEMINI_38_EXTENDED_THINKING),
        (
            "projects/p/locations/us-central1/publishers/google/models/gemini-3.8-live-extended-thinking",
            GEMINI_38_EXTENDED_THINKING,
        ),
        ("gemini-3.1-flash-live-preview", GEMINI_31),
        ("gemini-2.5-flash-native-audio-preview-09-2025", GEMINI_25),
        ("gemini-2.5-flash-native-audio-preview-12-2025", GEMINI_25),
        ("gemini-live-2.5-flash-native-audio", GEMINI_25),
        ("gemini-4.0-live-preview", FALLBACK),
        ("", FALLBACK),
    ],
)
def test_each_model_id_gets_its_row(model: str, row: Capabilities) -> None:
    assert capabilities(model) is row


def test_an_unknown_model_follows_todays_api_but_sends_instructions_as_text() -> None:
    assert FALLBACK.behaviours == GEMINI_38.behaviours and FALLBACK.history == GEMINI_38.history
    assert not FALLBACK.instructions_update


async def background(ctx: Any) -> dict[str, Any]:
    """Check something in the background."""
    return {}


async def lookup(ctx: Any) -> dict[str, Any]:
    """Look something up while the caller waits."""
    return {}


TOOLS = [ToolSpec.of(tool(non_blocking=True)(background)), ToolSpec.of(lookup)]


@pytest.mark.parametrize(
    ("row", "behaviours", "scheduling"),
    [
        (GEMINI_25, ("NON_BLOCKING", "BLOCKING"), ("WHEN_IDLE", None)),
        (GEMINI_31, ("BLOCKING", "BLOCKING"), (None, None)),  # synchronous calls only
        (GEMINI_38, ("NON_BLOCKING", "BLOCKING"), ("WHEN_IDLE", None)),
        # Asynchronous only: what the caller waits for is spoken as soon as it comes.
        (GEMINI_38_EXTENDED_THINKING, ("NON_BLOCKING", "NON_BLOCKING"), ("WHEN_IDLE", "INTERRUPT")),
    ],
)
def test_declarations_and_results_say_how_they_run(
    row: Capabilities, behaviours: tuple[str, str], scheduling: tuple[str | None, str | None]
) -> None:
    setup = _setup(row)
    declared = [d["behavior"] for d in setup["tools"][0]["functionDeclarations"]]
    assert tuple(declared) == behaviours
    assert (row.scheduling(True), row.scheduling(False)) == scheduling


OPTIONAL = {"thinkingConfig", "proactivity", "enableAffectiveDialog"}


@pytest.mark.parametrize("row", [GEMINI_25, GEMINI_31, GEMINI_38, GEMINI_38_EXTENDED_THINKING, FALLBACK])
@pytest.mark.parametrize("seeded", [False, True])
def test_setup_carries_only_what_the_model_takes(row: Capabilities, seeded: bool) -> None:
    setup = _setup(row, seeded=seeded)
    carried = set(setup) | set(setup["generationConfig"])
    assert not carried & OPTIONAL  # phonebot uses none of them; 3.x refuses some
    assert ("historyConfig" in setup) == (seeded and row.history == "initial_history")
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]  # 3.8's only modality


def _setup(row: Capabilities, seeded: bool = False) -> dict[str, Any]:
    """The setup message the SDK would send for this row's config (Gemini API)."""
    config = live_config(make_settings(), row, "Be helpful.", TOOLS, seeded=seeded)
    client = genai.Client(api_key="x")
    params = types.LiveConnectParameters(model="m", config=config).model_dump(exclude_none=True)
    message = _live_converters._LiveConnectParameters_to_mldev(api_client=client._api_client, from_object=params)
    return json.loads(json.dumps(_common.convert_to_dict(message)))["setup"]


def test_instructions_carry_the_call_context() -> None:
    from datetime import UTC, datetime

    from phonebot.gemini.config import call_context

    info = CallInfo("CA1", "+14155550123", "+14155550199")
    context = call_context(info, datetime(2026, 10, 1, 9, 30, tzinfo=UTC), None)
    assert "from +14155550123" in context and "Thursday 01 October 2026, 09:30 UTC" in context
