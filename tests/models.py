"""The Live model families the tests run against: one model id each, as the docs name them."""

from __future__ import annotations

import pytest

GEMINI_25 = "gemini-2.5-flash-native-audio-preview-12-2025"
GEMINI_31 = "gemini-3.1-flash-live-preview"
GEMINI_38 = "gemini-3.8-live"
GEMINI_38_THINKING = "gemini-3.8-live-extended-thinking"

MODELS = {"2.5": GEMINI_25, "3.1": GEMINI_31, "3.8": GEMINI_38, "3.8-thinking": GEMINI_38_THINKING}


def every_family(*names: str) -> pytest.MarkDecorator:
    """Run a service test once per family (all by default), as `settings_overrides`."""
    chosen = names or tuple(MODELS)
    return pytest.mark.parametrize(
        "settings_overrides", [{"gemini_model": MODELS[name]} for name in chosen], ids=list(chosen)
    )
