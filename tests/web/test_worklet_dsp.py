"""The softphone's audio arithmetic, measured in Chromium on the very modules the page loads:
the worklet's resampler (microphone rate -> 8 kHz with an anti-alias low-pass, 8 kHz -> speaker
rate with an anti-imaging one) and its mu-law (bit for bit phonebot's codec, which is the phone
network's). Sines in, fitted out: gain, phase, and everything else that came out with them."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from importlib import resources

import numpy as np
import pytest
import pytest_asyncio
from playwright.async_api import Page, Route, async_playwright

from phonebot import codec
from tests.web.browser import launch

pytestmark = pytest.mark.asyncio(loop_scope="module")

ORIGIN = "http://127.0.0.1:9"  # never reached: every request is answered from the package's files
STATIC = resources.files("phonebot.web") / "static"
CONTEXT_RATES = (44100, 48000, 96000, 16000)  # what an AudioContext runs at: the device's rate
PASSBAND = (100, 300, 700, 1000, 1700, 2300, 3000, 3300, 3400)
# Tones that would fold into the telephone band (0-3400 Hz) at 8 kHz, up to the highest rate's Nyquist.
FOLDING = (4600, 4700, 5100, 5900, 7300, 9100, 10900, 13300, 15100, 17900, 21100, 23900, 31700, 47100)

# Bytes to base64 in the page (in slices: spreading a whole second of audio overflows the stack).
B64 = """() => {
  window.b64 = (bytes) => {
    let text = "";
    for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return btoa(text);
  };
}"""
RUN = """async ([inRate, outRate, freqs, seconds, chunk]) => {
  const { Resampler } = await import("/static/resampler.js");
  const outputs = [];
  for (const f of freqs) {
    const resampler = new Resampler(inRate, outRate);
    const input = new Float32Array(Math.round(inRate * seconds));
    for (let i = 0; i < input.length; i++) input[i] = 0.5 * Math.sin((2 * Math.PI * f * i) / inRate);
    const parts = [];
    for (let i = 0; i < input.length; i += chunk) parts.push(resampler.process(input.subarray(i, i + chunk)));
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
    outputs.push(b64(new Uint8Array(out.buffer)));
  }
  return { outputs, latencyMs: new Resampler(inRate, outRate).halfWidthS * 1000 };
}"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def page() -> AsyncIterator[Page]:
    async def serve(route: Route) -> None:
        name = route.request.url.removeprefix(f"{ORIGIN}/static/")
        if name.endswith(".js"):
            await route.fulfill(body=(STATIC / name).read_text(), content_type="text/javascript")
        else:
            await route.fulfill(body="<!doctype html><title>dsp</title>", content_type="text/html")

    async with async_playwright() as playwright:
        browser = await launch(playwright)
        page = await browser.new_page()
        await page.route(f"{ORIGIN}/**", serve)
        await page.goto(f"{ORIGIN}/static/index.html")
        await page.evaluate(B64)
        yield page
        await browser.close()


async def resample(
    page: Page, in_rate: int, out_rate: int, freqs: tuple[int, ...], chunk: int = 128
) -> list[np.ndarray]:
    result = await page.evaluate(RUN, [in_rate, out_rate, list(freqs), 1.0, chunk])
    return [np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float64) for data in result["outputs"]]


def fit(y: np.ndarray, rate: int, freq: float, skip_s: float = 0.05) -> tuple[float, float, float]:
    """Least squares fit of a sine at `freq` to y (from `skip_s` on, at its own sample times):
    (gain against the 0.5 input, phase in radians, rms of what is left, against 0.5)."""
    n = np.arange(int(skip_s * rate), len(y))
    basis = np.column_stack([np.sin(2 * np.pi * freq * n / rate), np.cos(2 * np.pi * freq * n / rate)])
    (s, c), *_ = np.linalg.lstsq(basis, y[n], rcond=None)
    rest = y[n] - basis @ [s, c]
    return float(np.hypot(s, c) / 0.5), float(np.arctan2(c, s)), float(np.sqrt(np.mean(rest**2)) / 0.5)


def db(ratio: float) -> float:
    return 20 * np.log10(max(ratio, 1e-15))


@pytest.mark.parametrize("rate", CONTEXT_RATES)
async def test_capture_is_flat_in_the_telephone_band_and_nothing_folds_into_it(page: Page, rate: int) -> None:
    passband = await resample(page, rate, 8000, PASSBAND)
    for freq, y in zip(PASSBAND, passband, strict=True):
        gain, phase, rest = fit(y, 8000, freq)
        assert abs(db(gain)) < 0.01, (freq, db(gain))  # flat to 3400 Hz
        assert abs(phase) < 1e-5, (freq, phase)  # output instants are the input's: no added delay
        assert db(rest) < -90, (freq, db(rest))  # distortion and noise
    folding = [f for f in FOLDING if f < rate / 2]
    for freq, y in zip(folding, await resample(page, rate, 8000, tuple(folding)), strict=True):
        alias = abs(freq - 8000 * round(freq / 8000))
        gain, _, _ = fit(y, 8000, alias)
        assert db(gain) < -80, (freq, alias, db(gain))  # the anti-alias low-pass
        assert np.sqrt(np.mean(y[400:] ** 2)) / 0.5 < 10 ** (-80 / 20), freq


@pytest.mark.parametrize("rate", CONTEXT_RATES)
async def test_playback_is_flat_in_the_telephone_band_with_no_images(page: Page, rate: int) -> None:
    for freq, y in zip(PASSBAND, await resample(page, 8000, rate, PASSBAND, chunk=160), strict=True):
        gain, phase, rest = fit(y, rate, freq)
        assert abs(db(gain)) < 0.01, (freq, db(gain))
        assert abs(phase) < 1e-5, (freq, phase)
        assert db(rest) < -80, (freq, db(rest))  # images at 8000 - f and beyond, and the rest


async def test_latency_is_the_filters_half_length_and_chunking_changes_nothing(page: Page) -> None:
    result = await page.evaluate(RUN, [44100, 8000, [1000], 0.1, 128])
    assert 2.0 < result["latencyMs"] < 2.2  # look-ahead each way; linear phase, no other delay
    whole, chunked, odd = [(await resample(page, 44100, 8000, (1000,), chunk=size))[0] for size in (44100, 128, 37)]
    n = min(len(whole), len(chunked), len(odd))
    assert n > 7900 and np.array_equal(whole[:n], chunked[:n]) and np.array_equal(whole[:n], odd[:n])


async def test_mulaw_is_phonebots_codec_bit_for_bit(page: Page) -> None:
    table = await page.evaluate(
        """async () => {
        const { encode16, encodeFloat, DECODE16 } = await import("/static/mulaw.js");
        const encoded = new Uint8Array(65536), fromFloat = new Uint8Array(65536);
        for (let v = -32768; v < 32768; v++) {
          encoded[v + 32768] = encode16(v);
          fromFloat[v + 32768] = encodeFloat(v / 32768);
        }
        return { encoded: b64(encoded), fromFloat: b64(fromFloat), decoded: Array.from(DECODE16) };
    }"""
    )
    every_sample = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert base64.b64decode(table["encoded"]) == codec.pcm_to_mulaw(every_sample)
    assert base64.b64decode(table["fromFloat"]) == codec.pcm_to_mulaw(every_sample)
    every_byte = bytes(range(256))
    assert np.array(table["decoded"], dtype="<i2").tobytes() == codec.mulaw_to_pcm(every_byte)
