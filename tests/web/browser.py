"""Headless Chromium for the softphone's tests: Debian's `chromium` package driven by Playwright.

Never `playwright install` (browsers cannot be downloaded where CI runs, and need not be): the
tests launch the system's Chromium by path. A missing browser fails the tests, never skips them.
Traps: the fake microphone takes a 16-bit WAV only (anything else is silence, with no error), plays
it in a loop, in 10 ms blocks; 127.0.0.1 is a secure context, so getUserMedia works over http.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Browser, Playwright

from tests import audio

CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
ARTIFACTS = Path(os.environ.get("PHONEBOT_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


def chromium() -> str:
    for path in (os.environ.get("PHONEBOT_CHROMIUM"), shutil.which("chromium"), *CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail("Chromium is missing: `apt-get install chromium` (scripts/test.sh and .ci/run install it)")


async def launch(playwright: Playwright, microphone: Path | None = None) -> Browser:
    """Headless Chromium; with `microphone`, a fake one playing that WAV (in a loop) to every page."""
    args = ["--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream"]
    if microphone is not None:
        args += ["--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={microphone}"]
    return await playwright.chromium.launch(executable_path=chromium(), args=args)


def speech_wav(path: Path, text: str, rate: int = 48000, lead_s: float = 0.5) -> np.ndarray:
    """espeak-ng speech as a 16-bit WAV Chromium's fake microphone takes: `lead_s` of silence
    first (so the loop has a gap), padded to whole 10 ms blocks. Returns its samples."""
    pcm = audio.samples(audio.speech(text, rate))
    padded = np.concatenate([np.zeros(int(lead_s * rate)), pcm])
    block = rate // 100
    padded = np.concatenate([padded, np.zeros(-len(padded) % block)])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(padded.astype("<i2").tobytes())
    return padded


def version() -> str:
    return subprocess.run([chromium(), "--version"], capture_output=True, text=True, check=False).stdout.strip()
