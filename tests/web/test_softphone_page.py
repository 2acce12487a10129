"""The softphone page in a real headless Chromium, against the real app and the fake Gemini Live
server: Chromium's fake microphone plays espeak-ng speech; what reaches the model is compared
with it; the bot's speech the page plays (read back from the worklet's output) is compared with
what the model sent; the transcript, tool calls and a barge-in show on the page, and a `clear`
silences it at once. One browser for the module; a fresh page (and sessionStorage) per test."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from phonebot import logs
from tests import audio
from tests.conftest import Service, make_settings, running
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver
from tests.web.browser import ARTIFACTS, launch, speech_wav

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "test-operator-key"
CALLER_WORDS = audio.PHRASES["caller"]
MIC_RATE = 48000
ENVELOPE_S = 0.01  # envelope blocks: 10 ms, the fake microphone's own block

TAPPED = """() => {
  const tap = window.phonebotTap;
  if (!tap.chunks.length) return { first: 0, rate: tap.sampleRate, data: "" };
  const first = tap.chunks[0].frame, last = tap.chunks.at(-1);
  const all = new Float32Array(last.frame + last.samples.length - first);
  for (const chunk of tap.chunks) all.set(chunk.samples, chunk.frame - first);
  const bytes = new Uint8Array(all.buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return { first, rate: tap.sampleRate, data: btoa(text) };
}"""


# -- fixtures: one browser for the module; the app, the fake model and the receiver per test -----


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("microphone") / "caller.wav"
    return path, speech_wav(path, CALLER_WORDS, MIC_RATE)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(microphone: tuple[Path, np.ndarray]) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await launch(playwright, microphone[0])
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def gemini(tls: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeLiveServer]:
    server_ctx, ca_file = tls
    async with FakeLiveServer(server_ctx) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        monkeypatch.setenv("GOOGLE_API_KEY", "test-api-key")
        monkeypatch.delenv("GEMINI_API_KEY", raising=False)
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.up()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest_asyncio.fixture(loop_scope="module")
async def service(gemini: FakeLiveServer, webhook_receiver: WebhookReceiver) -> AsyncIterator[Service]:
    settings = make_settings(
        api_key=API_KEY, transcript_webhook_url=webhook_receiver.url, transcript_webhook_secret=SECRET
    )
    logs.configure("info", "console")
    async with running(settings) as service:
        yield service


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, service: Service) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    await page.add_init_script("window.phonebotTap = {}")  # the worklet posts what it plays
    await page.goto(f"{service.http_url}/phone")
    yield page
    await context.close()


@pytest.fixture
def artifacts() -> Path:
    """Where the test leaves what a person may want to look at (PHONEBOT_TEST_ARTIFACTS)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# -- helpers ------------------------------------------------------------------------------------


async def until(page: Page, expression: str, timeout: float = 10) -> Any:
    """The value of `expression` in the page once it is truthy. (Playwright's wait_for_function
    evaluates strings as code, which the page's Content-Security-Policy rightly forbids.)"""
    async with asyncio.timeout(timeout):
        while not (value := await page.evaluate(expression)):
            await asyncio.sleep(0.02)
    return value


async def call_from(page: Page, gemini: FakeLiveServer) -> FakeLiveSession:
    """Enter the key, press Call; the model session that call opened, greeted."""
    await page.fill("#key", API_KEY)
    await page.press("#key", "Enter")
    await page.click("#call")
    session = await gemini.next_session(timeout=15)
    await session.wait_for_text("Greet")
    await until(page, "document.body.dataset.state === 'in-call'")
    return session


async def tapped(page: Page) -> tuple[np.ndarray, int, int]:
    """What the page's worklet has played so far: samples, their first frame, the context's rate."""
    result = await page.evaluate(TAPPED)
    samples = np.frombuffer(base64.b64decode(result["data"]), dtype="<f4").astype(np.float64)
    return samples, int(result["first"]), int(result["rate"])


def envelope(x: np.ndarray, rate: int) -> np.ndarray:
    block = int(rate * ENVELOPE_S)
    x = x[: len(x) - len(x) % block].reshape(-1, block)
    return np.sqrt(np.mean(x**2, axis=1))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def envelope_match(received: np.ndarray, rate: int, wav: np.ndarray) -> tuple[float, list[float]]:
    """How the envelope of what the model received follows the microphone's WAV (which loops):
    correlation at the best lag over everything, and per second at each second's own best lag
    nearby (Chromium may drop a 10 ms block)."""
    got = envelope(received, rate)
    period = envelope(wav, MIC_RATE)
    looped = np.tile(period, len(got) // len(period) + 3)
    lags = range(len(period))
    best = max(lags, key=lambda lag: pearson(got, looped[lag : lag + len(got)]))
    overall = pearson(got, looped[best : best + len(got)])
    per_second = []
    second = int(1 / ENVELOPE_S)
    for start in range(0, len(got) - second + 1, second):
        part = got[start : start + second]
        near = range(max(0, best + start - 5), best + start + 6)
        per_second.append(max(pearson(part, looped[lag : lag + second]) for lag in near))
    return overall, per_second


def best_lag(played: np.ndarray, reference: np.ndarray) -> int:
    """Where in `played` `reference` starts (cross-correlation through the FFT)."""
    n = 1 << (len(played) + len(reference)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(played, n) * np.conj(np.fft.rfft(reference, n)), n)
    return int(np.argmax(corr[: len(played)]))


def band_snr(reference: np.ndarray, played: np.ndarray, rate: int) -> float:
    """SNR (dB) in the telephone band of `played` against `reference`, aligned to a fraction of a
    sample (the resamplers on the way delay it by a fractional number of samples at this rate):
    the reference is delayed by a linear phase in the frequency domain, coarsely then finely."""
    lag = best_lag(played, reference)
    segment = played[lag : lag + len(reference)]
    assert len(segment) == len(reference), "the page has not played it all"
    ref_band, out_band = audio.band_limited(reference, rate), audio.band_limited(segment, rate)
    n = 1 << len(reference).bit_length()
    spectrum, freqs = np.fft.rfft(ref_band, n), np.fft.rfftfreq(n)

    def snr(delay: float) -> float:
        ref = np.fft.irfft(spectrum * np.exp(-2j * np.pi * freqs * delay), n)[: len(reference)]
        gain = float(np.dot(out_band, ref) / np.dot(ref, ref))
        return float(10 * np.log10(np.sum((gain * ref) ** 2) / np.sum((out_band - gain * ref) ** 2)))

    coarse = max(np.linspace(-1, 1, 21), key=snr)
    return max(snr(delay) for delay in np.linspace(coarse - 0.1, coarse + 0.1, 21))


# -- tests -------------------------------------------------------------------------------------


async def test_the_page_asks_for_the_key_once_and_again_when_it_is_refused(page: Page, gemini: FakeLiveServer) -> None:
    assert await page.is_visible("#key-form") and await page.is_disabled("#call")
    await page.fill("#key", "not-the-key")
    await page.press("#key", "Enter")
    assert await page.evaluate("sessionStorage.getItem('phonebot.apiKey')") == "not-the-key"
    await page.click("#call")
    await page.wait_for_selector("#key-form:not([hidden])")
    assert await page.evaluate("sessionStorage.getItem('phonebot.apiKey')") is None
    assert "PHONEBOT_API_KEY" in await page.inner_text("#state") or await page.is_disabled("#call")
    await page.fill("#key", API_KEY)
    await page.press("#key", "Enter")
    await page.reload()  # kept for the tab: not asked again
    assert await page.is_hidden("#key-form") and await page.is_enabled("#call")
    assert gemini.sessions == []


async def test_a_call_from_the_page(
    page: Page, service: Service, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver,
    microphone: tuple[Path, np.ndarray], artifacts: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    figures: dict[str, Any] = {}
    session = await call_from(page, gemini)
    call_sid = next(iter(service.calls.active))
    assert call_sid.startswith("WC")

    # The caller's speech reaches the model: its envelope follows the WAV the microphone plays.
    await session.wait_for_audio(2 * 16000 * 5, timeout=15)
    received = audio.samples(bytes(session.audio))[16000 // 2 :]  # after auto gain has settled
    overall, per_second = envelope_match(received, 16000, microphone[1])
    figures["capture envelope correlation"] = (round(overall, 3), [round(c, 3) for c in per_second])
    assert overall > 0.8 and min(per_second) > 0.7, figures
    await until(page, "Number(document.querySelector('#level').dataset.level) > -35", timeout=3)  # it moves

    # The bot's greeting, as Gemini sends it (faster than it plays), is played by the page.
    greeting = audio.speech(audio.PHRASES["greeting"], 24000)
    await session.send_output_transcription("Hello, thank you for calling Riverside Dental.")
    await session.send_audio(greeting, chunk_bytes=4800)
    await session.send_output_transcription(" How can I help you today?")
    await session.send_turn_complete()
    ledger = service.calls.active[call_sid].playback
    async with asyncio.timeout(10):
        while not ledger.turns or ledger.turns[0].heard_ms < 1000:
            await asyncio.sleep(0.01)
    # All of it went to the page at once; marks come back as it plays, not as it arrives.
    assert ledger.turns[0].sent_ms - ledger.turns[0].heard_ms > 2000
    async with asyncio.timeout(15):  # every mark echoed as played: the page has played it all
        while not (ledger.turns and ledger.turns[0].finished and ledger.turns[0].heard_ms == ledger.turns[0].sent_ms):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the tap's last block of it
    played, _, rate = await tapped(page)
    reference = audio.samples(audio.sox_resample(greeting, 24000, rate))
    snr = band_snr(reference, played, rate)
    figures["playback SNR dB (telephone band, vs the model's audio)"] = round(snr, 1)
    assert snr > 33, figures  # mu-law alone allows ~38 dB

    # What was said, on the page: both sides, and a tool call as it happens.
    await session.send_input_transcription("Hi, I would like to book a cleaning")
    await session.send_input_transcription(" next Tuesday afternoon.")
    await page.wait_for_selector("#transcript li.caller >> text=next Tuesday afternoon.")
    bot = await page.inner_text("#transcript li.bot")
    assert "Riverside Dental. How can I help you today?" in bot
    await session.send_tool_call(
        [{"id": "t1", "name": "check_availability", "args": {"service": "cleaning", "date_from": "tomorrow"}}]
    )
    await page.wait_for_selector("#transcript li.tool:not(.running) >> text=check_availability")

    # A long answer, then the caller talks over it: `clear` silences the page at once.
    long_answer = audio.tone(330, 24000, 8.0, amplitude=8000)
    await session.send_output_transcription("Let me read you every free time we have next week,")
    await session.send_audio(long_answer, chunk_bytes=4800)
    async with asyncio.timeout(10):
        while len(ledger.turns) < 2 or ledger.turns[1].heard_samples < 8000:  # a second of it heard
            await asyncio.sleep(0.02)
    sent_at = time.time() * 1000
    await session.send_interrupted()
    events = await wait_for_tap_event(page, "cleared")
    clear = await wait_for_tap_event(page, "clear")
    figures["clear: model interrupted -> page got clear (ms)"] = round(clear["at"] - sent_at, 1)
    figures["clear: page got clear -> worklet emptied, told the page (ms)"] = round(events["at"] - clear["at"], 1)
    figures["clear: model interrupted -> silent at the speaker (ms)"] = round(events["output"] - sent_at, 1)
    assert events["dropped"] > 44100 and events["output"] - sent_at < 100, figures
    await asyncio.sleep(0.3)
    played, first, rate = await tapped(page)
    after = played[events["frame"] - first + 128 :]
    assert len(after) > rate // 10 and not after.any()  # nothing played after the clear
    await page.wait_for_selector("#transcript li.bot.interrupted >> .badge")
    await page.screenshot(path=artifacts / "softphone-mid-call.png", full_page=True)
    with capsys.disabled():
        print(f"\nsoftphone screenshot mid-call: {artifacts / 'softphone-mid-call.png'}")
        for name, value in figures.items():
            print(f"softphone {name}: {value}")

    # Hang up: the call ends as the caller's, with a record and a webhook like any other call.
    await page.click("#call")
    await until(page, "document.body.dataset.state === 'ended'")
    assert "You hung up" in await page.inner_text("#state")
    data = (await webhook_receiver.wait_for(1))[0].json()["data"]
    assert (data["call_sid"], data["direction"], data["end_reason"]) == (call_sid, "web", "caller_hung_up")
    roles = [(turn["role"], turn["interrupted"]) for turn in data["turns"]]
    assert roles == [("bot", False), ("caller", False), ("bot", True)], data["turns"]
    assert [tool["name"] for tool in data["tool_calls"]] == ["check_availability"]


async def wait_for_tap_event(page: Page, kind: str) -> dict[str, Any]:
    return dict(await until(page, f"window.phonebotTap.events.find((e) => e.type === '{kind}')"))
