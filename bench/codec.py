"""Codec benchmark: microseconds per 20 ms frame each way, and the resamplers' quality.

    python -m bench.codec

Prints a table; the quality figures are measured on tones, as the tests do.
"""

from __future__ import annotations

import platform
import timeit

import numpy as np

from phonebot import codec


def _tone(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def _amplitude(pcm: bytes, rate: int, freq: float) -> float:
    x = np.frombuffer(pcm, "<i2").astype(float)[rate // 10 :]
    return float(np.abs(np.dot(x, np.exp(-2j * np.pi * freq * np.arange(len(x)) / rate))) * 2 / len(x))


def _peak(pcm: bytes, rate: int, above_hz: float) -> float:
    x = np.frombuffer(pcm, "<i2").astype(float)[rate // 10 :]
    x = x[: len(x) // rate * rate]
    spectrum = np.abs(np.fft.rfft(x)) * 2 / len(x)
    return float(spectrum[np.fft.rfftfreq(len(x), 1 / rate) > above_hz].max())


def _db(ratio: float) -> float:
    return 20 * np.log10(max(ratio, 1e-9))


def per_frame_us() -> dict[str, float]:
    bot = _tone(1000, 24000, 0.02)  # one 20 ms chunk from the model
    caller = codec.pcm_to_mulaw(_tone(1000, 8000, 0.02))  # one 20 ms Twilio frame
    down, up = codec.Downsampler24to8(), codec.Upsampler8to16()
    runs = 20000
    best = lambda fn: min(timeit.repeat(fn, number=runs, repeat=5)) / runs * 1e6  # noqa: E731
    return {
        "caller: mu-law 8k -> PCM 16k": best(lambda: up.process(codec.mulaw_to_pcm(caller))),
        "bot: PCM 24k -> mu-law 8k": best(lambda: codec.pcm_to_mulaw(down.process(bot))),
    }


def quality() -> list[tuple[str, str]]:
    alias = max(
        _peak(codec.Downsampler24to8().process(_tone(f, 24000, 1.2)), 8000, 0) for f in (5000, 6000, 7000, 10000)
    )
    images = []
    for f in (300, 1000, 2000, 3400):
        out = codec.Upsampler8to16().process(_tone(f, 8000, 1.2))
        images.append(_peak(out, 16000, 4000) / _amplitude(out, 16000, f))
    gains = []
    for f in range(300, 3401, 100):
        gains.append(_db(_amplitude(codec.Downsampler24to8().process(_tone(f, 24000, 1.2)), 8000, f) / 10000))
        gains.append(_db(_amplitude(codec.Upsampler8to16().process(_tone(f, 8000, 1.2)), 16000, f) / 10000))
    return [
        ("24k->8k alias rejection (5, 6, 7, 10 kHz)", f"{-_db(alias / 10000):.1f} dB"),
        ("8k->16k image rejection (300-3400 Hz tones)", f"{-_db(max(images)):.1f} dB"),
        ("passband gain 300-3400 Hz, both", f"{min(gains):+.3f} .. {max(gains):+.3f} dB"),
        ("delay 24k->8k", f"{codec.Downsampler24to8.DELAY_S * 1000:.3f} ms"),
        ("delay 8k->16k", f"{codec.Upsampler8to16.DELAY_S * 1000:.3f} ms"),
    ]


def main() -> None:
    python, machine = platform.python_version(), platform.machine()
    print(f"phonebot codec benchmark - Python {python}, numpy {np.__version__}, {machine}")
    print()
    print(f"| {'direction (one 20 ms frame)':<34} | {'us/frame':>8} |")
    print(f"|{'-' * 36}|{'-' * 10}|")
    for name, us in per_frame_us().items():
        print(f"| {name:<34} | {us:>8.1f} |")
    print()
    print(f"| {'resampler quality':<44} | {'measured':>18} |")
    print(f"|{'-' * 46}|{'-' * 20}|")
    for name, value in quality():
        print(f"| {name:<44} | {value:>18} |")


if __name__ == "__main__":
    main()
