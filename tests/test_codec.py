"""The audio bar: alias and image rejection, flat passband, small fixed delay, streaming == one-shot, speech SNR."""

from __future__ import annotations

import random

import numpy as np
import pytest

from phonebot import codec
from tests import audio

DOWN_RATE, UP_RATE = 24000, 16000


def down(pcm: bytes) -> bytes:
    return codec.Downsampler24to8().process(pcm)


def up(pcm: bytes) -> bytes:
    return codec.Upsampler8to16().process(pcm)


@pytest.mark.parametrize("freq", [5000, 6000, 7000, 10000])
def test_downsampler_rejects_aliases_by_60_db(freq: int) -> None:
    source = audio.tone(freq, DOWN_RATE, 1.2)
    out = down(source)
    # The whole 0-4 kHz output band: wherever the tone would alias to, it is 60 dB down.
    alias = audio.peak_above(out, 8000, 0.0)
    assert audio.db(alias / 10000) <= -60, f"{freq} Hz aliases at {audio.db(alias / 10000):.1f} dB"


@pytest.mark.parametrize("freq", [300, 500, 1000, 2000, 3000, 3400])
def test_upsampler_rejects_images_by_60_db(freq: int) -> None:
    out = up(audio.tone(freq, 8000, 1.2))
    wanted = audio.amplitude_at(out, UP_RATE, freq)
    image = audio.peak_above(out, UP_RATE, 4000.0)
    assert audio.db(image / wanted) <= -60


@pytest.mark.parametrize("freq", range(300, 3401, 100))
def test_passband_gain_within_a_tenth_of_a_db(freq: int) -> None:
    for convert, rate_in, rate_out in ((down, DOWN_RATE, 8000), (up, 8000, UP_RATE)):
        out = convert(audio.tone(freq, rate_in, 1.2))
        gain = audio.db(audio.amplitude_at(out, rate_out, freq) / 10000)
        assert abs(gain) <= 0.1, f"{convert.__name__} {freq} Hz: {gain:+.3f} dB"


def _impulse_peak(convert, rate_in: int, rate_out: int) -> float:
    impulse = np.zeros(rate_in // 10, dtype="<i2")
    impulse[0] = 30000
    out = audio.samples(convert(impulse.tobytes()))
    return int(np.argmax(np.abs(out))) / rate_out


def test_fixed_delay_is_at_most_3_ms() -> None:
    assert _impulse_peak(down, DOWN_RATE, 8000) == pytest.approx(codec.Downsampler24to8.DELAY_S)
    assert _impulse_peak(up, 8000, UP_RATE) == pytest.approx(codec.Upsampler8to16.DELAY_S)
    assert codec.Downsampler24to8.DELAY_S <= 0.003
    assert codec.Upsampler8to16.DELAY_S <= 0.003


def _chunks(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    pieces, at = [], 0
    while at < len(data):
        size = rng.randint(1, largest)
        pieces.append(data[at : at + size])
        at += size
    return pieces


@pytest.mark.parametrize("seed", range(5))
def test_streaming_equals_one_shot_with_any_chunking(seed: int) -> None:
    rng = random.Random(seed)
    noise = np.random.default_rng(seed).normal(0, 6000, 24000).clip(-32768, 32767).astype("<i2").tobytes()
    for make in (codec.Downsampler24to8, codec.Upsampler8to16):
        one_shot = make().process(noise)
        streamer = make()
        streamed = b"".join(streamer.process(piece) for piece in _chunks(noise, rng, 777))
        assert streamed == one_shot, make.__name__


def test_every_chunk_yields_its_output_at_once() -> None:
    rng = random.Random(7)
    pcm = audio.speech(audio.PHRASES["greeting"], DOWN_RATE)[: 2 * 4800]
    downsampler, upsampler = codec.Downsampler24to8(), codec.Upsampler8to16()
    fed = out_down = out_up = 0
    for piece in _chunks(pcm, rng, 301):
        fed += len(piece)
        out_down += len(downsampler.process(piece))
        out_up += len(upsampler.process(piece))
        whole_samples = fed // 2
        assert out_down == 2 * -(-whole_samples // 3)  # one output per started group of three
        assert out_up == 2 * 2 * whole_samples


def test_caller_speech_snr_is_what_mulaw_allows() -> None:
    reference_8k = audio.speech(audio.PHRASES["caller"], 8000)
    reference_16k = audio.sox_resample(reference_8k, 8000, UP_RATE)
    mulaw = codec.pcm_to_mulaw(reference_8k)  # what Twilio sends
    ours = codec.Upsampler8to16().process(codec.mulaw_to_pcm(mulaw))
    delay = round(codec.Upsampler8to16.DELAY_S * UP_RATE)
    snr = audio.snr_db(reference_16k, ours, UP_RATE, delay)
    mulaw_alone = audio.snr_db(reference_8k, audio.mulaw_roundtrip(reference_8k), 8000)
    print(f"caller path SNR {snr:.1f} dB (mu-law alone {mulaw_alone:.1f} dB)")
    assert snr >= 35.0
    assert snr >= mulaw_alone - 0.5


def test_bot_speech_snr_is_what_mulaw_allows() -> None:
    bot_24k = audio.speech(audio.PHRASES["greeting"], DOWN_RATE)
    reference_8k = audio.sox_resample(bot_24k, DOWN_RATE, 8000)
    mulaw = codec.pcm_to_mulaw(codec.Downsampler24to8().process(bot_24k))  # what Twilio plays
    delay = round(codec.Downsampler24to8.DELAY_S * 8000)
    snr = audio.snr_db(reference_8k, codec.mulaw_to_pcm(mulaw), 8000, delay)
    mulaw_alone = audio.snr_db(reference_8k, audio.mulaw_roundtrip(reference_8k), 8000)
    print(f"bot path SNR {snr:.1f} dB (mu-law alone {mulaw_alone:.1f} dB)")
    assert snr >= 35.0
    assert snr >= mulaw_alone - 0.5


def test_mulaw_roundtrip_is_g711() -> None:
    assert codec.pcm_to_mulaw(b"\x00\x00") == b"\xff"  # G.711 mu-law encodes silence as 0xFF
    assert len(codec.mulaw_to_pcm(bytes(160))) == 320


@pytest.mark.parametrize("make", [codec.Downsampler24to8, codec.Upsampler8to16])
def test_memory_stays_bounded_whatever_one_chunk_holds(make: type[codec.Downsampler24to8]) -> None:
    """An 8 MiB chunk (a peer's mistake or attack) costs its input and output, not a float64 matrix
    of it; and the bytes are the same as those of ordinary 20 ms chunks."""
    import tracemalloc

    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32767, 4 * 1024 * 1024, dtype="<i2").tobytes()
    resampler = make()
    tracemalloc.start()
    try:
        out = resampler.process(pcm)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    working = peak - 2 * len(out)  # the output, and its blocks before they are joined
    assert working < 2 * 1024 * 1024, f"{working / 2**20:.1f} MiB beyond the output"
    streamer = make()
    frame = 960 if make is codec.Downsampler24to8 else 320
    assert b"".join(streamer.process(pcm[i : i + frame]) for i in range(0, len(pcm), frame)) == out
