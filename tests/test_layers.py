"""The house rules that keep a frame's path a straight line, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "phonebot"
# What only a Twilio call has: its signatures, its REST API, its webhooks and its media route.
TWILIO_ONLY = (
    "phonebot.telephony.signature",
    "phonebot.telephony.rest",
    "phonebot.telephony.voice",
    "phonebot.telephony.status",
    "phonebot.telephony.twilio_media",
    "phonebot.telephony.amd",
    "phonebot.outbound",
)


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("telephony", ("phonebot.gemini", "google")),  # the Twilio side knows nothing of Gemini
        ("gemini", ("phonebot.telephony", "twilio", "starlette")),  # and the other way round
        ("tools", ("phonebot.telephony", "phonebot.gemini", "phonebot.call", "twilio", "google")),  # tools: neither
        # the call: only the ports
        ("call", ("phonebot.telephony", "phonebot.gemini", "twilio", "google", "starlette")),
        # the softphone: a Media Streams peer like Twilio, with none of Twilio's own parts
        ("web", ("phonebot.gemini", "google", "twilio", *TWILIO_ONLY)),
    ],
)
def test_sides_do_not_know_each_other(folder: str, forbidden: tuple[str, ...]) -> None:
    for path in modules(folder):
        wrong = {name for name in imports_of(path) if name.startswith(forbidden)}
        assert not wrong, f"{path.name} imports {wrong}"


def test_codec_is_pure() -> None:
    assert imports_of(PACKAGE / "codec.py") <= {"__future__", "sys", "warnings", "numpy", "audioop"}


def test_bench_does_not_depend_on_the_tests() -> None:
    for path in sorted((PACKAGE.parent / "bench").rglob("*.py")):
        wrong = {name for name in imports_of(path) if name == "tests" or name.startswith("tests.")}
        assert not wrong, f"{path.relative_to(PACKAGE.parent)} imports {wrong}"


def test_media_stream_framing_is_not_twilios() -> None:
    # The browser softphone speaks the same Media Streams protocol: stream.py and claim.py
    # carry no Twilio signature, REST API or SDK, so the web endpoint reuses them as they are.
    for name in ("stream.py", "claim.py"):
        twilio_only = ("twilio", "phonebot.telephony.rest", "phonebot.telephony.signature", "phonebot.telephony.voice")
        wrong = {module for module in imports_of(PACKAGE / "telephony" / name) if module.startswith(twilio_only)}
        assert not wrong, f"{name} imports {wrong}"
