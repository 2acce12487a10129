"""Real audio for tests: speech from espeak-ng, reference resampling from sox, and measurements."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from phonebot import codec

PHRASES = {
    "greeting": "Hello, thank you for calling Riverside Dental. How can I help you today?",
    "caller": "Hi, I would like to book a cleaning next Tuesday afternoon, around three if you can.",
}


def _raw(rate: int) -> list[str]:
    return ["-t", "raw", "-r", str(rate), "-e", "signed", "-b", "16", "-c", "1"]


@functools.cache
def speech(text: str, rate: int) -> bytes:
    """16-bit PCM speech at `rate`: espeak-ng, resampled by sox at very high quality."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(wav), text], check=True)
        out = subprocess.run(
            ["sox", str(wav), *_raw(rate), "-", "rate", "-v", str(rate)], check=True, capture_output=True
        )
    return out.stdout


def sox_resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """The reference: sox's very-high-quality linear-phase resampler (no added delay)."""
    out = subprocess.run(
        ["sox", *_raw(from_rate), "-", *_raw(to_rate), "-", "rate", "-v", str(to_rate)],
        input=pcm,
        check=True,
        capture_output=True,
    )
    return out.stdout


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def tone(freq_hz: float, rate: int, seconds: float, amplitude: float = 10000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


def band_limited(x: np.ndarray, rate: int, low: float = 300.0, high: float = 3400.0) -> np.ndarray:
    """Zero-phase brick-wall band-pass: the telephone band."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, len(x))


def snr_db(reference: bytes, test: bytes, rate: int, delay: int = 0) -> float:
    """SNR of `test` against `reference` in the telephone band, `test` delayed by `delay` samples."""
    ref = samples(reference)
    out = samples(test)[delay:]
    n = min(len(ref), len(out))
    ref, out = band_limited(ref[:n], rate), band_limited(out[:n], rate)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2)))


def mulaw_roundtrip(pcm: bytes) -> bytes:
    return codec.mulaw_to_pcm(codec.pcm_to_mulaw(pcm))


def amplitude_at(pcm: bytes, rate: int, freq_hz: float, skip_s: float = 0.1) -> float:
    """Amplitude of the component at `freq_hz` after `skip_s` (projection on that frequency)."""
    x = samples(pcm)[int(rate * skip_s) :]
    phasor = np.exp(-2j * np.pi * freq_hz * np.arange(len(x)) / rate)
    return float(np.abs(np.dot(x, phasor)) * 2 / len(x))


def peak_above(pcm: bytes, rate: int, floor_hz: float, skip_s: float = 0.1) -> float:
    x = samples(pcm)[int(rate * skip_s) :]
    x = x[: len(x) // rate * rate]
    spectrum = np.abs(np.fft.rfft(x)) * 2 / len(x)
    return float(spectrum[np.fft.rfftfreq(len(x), 1 / rate) > floor_hz].max())


def db(ratio: float) -> float:
    return float(20 * np.log10(max(ratio, 1e-12)))
