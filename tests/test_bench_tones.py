"""The load bench finds where audio landed by its content (bench/tones.py), exactly, through real
resamplers, odd message sizes, a start the bot dropped and a stretch it lost."""

from __future__ import annotations

from itertools import accumulate

import numpy as np

from bench import tones
from phonebot import codec

UP_DELAY = 31  # phonebot's 8 -> 16 kHz upsampler, in 16 kHz samples
DOWN_DELAY = 11  # its 24 -> 8 kHz downsampler, in 8 kHz samples


def test_caller_audio_dropped_at_start_and_lost_mid_stream() -> None:
    frames = 200
    mulaw = codec.pcm_to_mulaw(tones.CALLER.pcm16(8000, 0, frames))
    up = np.frombuffer(codec.Upsampler8to16().process(codec.mulaw_to_pcm(mulaw)), "<i2").astype(float)
    start = 5 * 320 + UP_DELAY + 70  # the bot dropped frames 0-4 and 70 samples of frame 5
    gap = (100 * 320 + UP_DELAY + 100, 103 * 320 + UP_DELAY + 150)  # then threw away ~3 frames
    x = np.concatenate([up[start : gap[0]], up[gap[1] :]])
    # In soxr-sized blocks, each arriving 50 ms after the caller said the last of its audio.
    ends = [*range(1516, len(x), 1516), len(x)]
    upsampled = [e - 1 + start + (gap[1] - gap[0] if e - 1 + start >= gap[0] else 0) for e in ends]
    rx = tones.Received(x, 16000, ends, [(u - UP_DELAY) / 16000 + 0.05 for u in upsampled])
    sent_at = [k * 0.02 for k in range(frames)]

    arrived = tones.arrivals(tones.CALLER, rx, tones.track(tones.CALLER, rx, sent_at), frames)

    missing = [k for k, t in enumerate(arrived) if t is None]
    assert missing == [0, 1, 2, 3, 4, 100, 101, 102]
    for k in (5, 50, 99, 103, 150, 198):  # the block holding the frame's audio up to 2.5 ms before its end
        sample = (k + 1) * 320 - 1 - 40 + UP_DELAY - start - (gap[1] - gap[0] if k > 100 else 0)
        assert arrived[k] == rx.times[sample // 1516], k
        assert 0.05 - tones.TOLERANCE_S <= arrived[k] - sent_at[k] - 0.02 < 0.05 + 1516 / 16000  # a block's wait


def test_model_audio_through_a_downsampler_with_a_discarded_tail() -> None:
    chunks = 60
    pcm = codec.Downsampler24to8().process(tones.MODEL_VOICES[3].pcm16(24000, 0, chunks))
    y = np.frombuffer(codec.mulaw_to_pcm(codec.pcm_to_mulaw(pcm)), "<i2").astype(float)
    cut = 30 * 320 + DOWN_DELAY + 123  # a barge-in: the rest of chunk 30 and chunks 31-44 never sent
    resume = 45 * 320 + DOWN_DELAY
    x = np.concatenate([y[:cut], np.zeros(400), y[resume:]])  # and some silence before the next turn
    sizes = [320, 1100, 160, 1100, 999]
    ends = [e for e in accumulate(sizes * 40) if e < len(x)] + [len(x)]
    # Each message arrives 10 ms after the last chunk it holds audio of was sent.
    chunk_of = [(e - 1 + (resume - cut - 400 if e > cut + 400 else 0)) // 320 for e in ends]
    rx = tones.Received(x, 8000, ends, [c * 0.04 + 0.01 for c in chunk_of])
    voice = tones.MODEL_VOICES[3]
    sent_at = [i * 0.04 for i in range(chunks)]

    arrived = tones.arrivals(voice, rx, tones.track(voice, rx, sent_at), chunks)

    assert [i for i, t in enumerate(arrived) if t is None] == list(range(30, 45))
    other = tones.MODEL_VOICES[4]  # another session's voice: none of it is that session's
    assert tones.arrivals(other, rx, tones.track(other, rx, sent_at), chunks) == [None] * chunks


def test_locate_needs_the_audio_to_be_there() -> None:
    one = np.frombuffer(tones.CALLER.pcm16(16000, 40, 3), "<i2").astype(float)
    assert tones.locate(tones.CALLER, one, 16000, 50) == 40 * 320
    assert tones.locate(tones.CALLER, one, 16000, 38) is None  # not sent yet when it arrived
    assert tones.locate(tones.CALLER, np.zeros(960), 16000, 50) is None
