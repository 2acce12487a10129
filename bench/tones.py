"""What the load bench's callers and fake model say, and where it landed at the other end.

Both ends speak tones: a caller one per 20 ms frame, the fake model one per 40 ms chunk, each a
whole number of cycles long (so units join without a click and can be drawn at any sample rate),
in a fixed pseudo-random order that repeats every PERIOD units. `track()` follows what a bot
passed on through the sender's sequence by content: a stretch that continues where the last one
left off is matched with one dot product per 20 ms window; where it does not (the bot dropped
audio before its session was ready, a stalled resampler threw its history away, a turn's tail
was discarded), the next stretch is found again by cross-correlation. So each unit's arrival is
known exactly whatever the bot's resamplers did, and audio that never arrived is told apart
from audio that arrived late.
"""

from __future__ import annotations

import binascii
import random
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from phonebot import codec

PERIOD = 256
MATCH = 0.8  # normalised correlation of a 20 ms window with what was sent: the same audio
SILENT = 0.05  # a window with under this share of a tone's power is silence, not a mismatch
TOLERANCE_S = 0.0025  # a unit has arrived when its audio up to this long before its end has:
# a resampler's own filter delay (phonebot's is under 2 ms, measured by bench.codec) is not
# counted as latency, as it was not when units were matched by byte count.
GIVE_UP = 50  # windows in a row that match nothing: stop looking
EDGE = 0.2  # a sample this far (of the amplitude) from what was sent is not part of a stretch


@dataclass(frozen=True, slots=True)
class Voice:
    """One end's tones: a unit of `unit_s`, `cycles[u % PERIOD]` whole cycles in unit u."""

    unit_s: float
    cycles: tuple[int, ...]
    amplitude: float

    def samples(self, rate: int) -> int:
        return round(self.unit_s * rate)

    def pcm(self, rate: int, start: int, count: int) -> np.ndarray:
        """Sender samples start .. start + count - 1 (from the start of unit 0) at `rate`."""
        n = self.samples(rate)
        s = np.arange(start, start + count)
        units, within = np.divmod(s, n)
        cycles = np.asarray(self.cycles)[units % PERIOD]
        return self.amplitude * np.sin(2 * np.pi * cycles * within / n)

    def pcm16(self, rate: int, first_unit: int, units: int) -> bytes:
        n = self.samples(rate)
        return np.round(self.pcm(rate, first_unit * n, units * n)).astype("<i2").tobytes()


def _orders(cycles: range, count: int, seed: int) -> list[tuple[int, ...]]:
    """`count` orders of PERIOD tones in which no two tones in a row (round the period) come twice
    in any of them: any stretch of two whole units is found in one place only."""
    rng, seen, orders = random.Random(seed), set[tuple[int, int]](), list[tuple[int, ...]]()
    while len(orders) < count:
        order = [rng.choice(cycles)]
        while len(order) < PERIOD:
            options = [c for c in cycles if (order[-1], c) not in seen]
            order.append(rng.choice(options))
            seen.add((order[-2], order[-1]))
        if (order[-1], order[0]) in seen:  # the pair round the period
            seen -= set(pairwise(order))
            continue
        seen.add((order[-1], order[0]))
        orders.append(tuple(order))
    return orders


CALLER = Voice(0.02, _orders(range(4, 64), 1, 20)[0], 3000.0)  # 200-3150 Hz
# The model's (200-2975 Hz): a few orders, so that two sessions of one call say different things.
MODEL_VOICES = tuple(Voice(0.04, order, 6000.0) for order in _orders(range(8, 120), 8, 40))
SPAN_UNITS = 3  # a stretch is looked for, and kept, only with this many units of audio in it


def caller_payloads() -> list[str]:
    """Base64 mu-law of caller frame k % PERIOD, as a Media Streams `media` payload."""
    mulaw = codec.pcm_to_mulaw(CALLER.pcm16(8000, 0, PERIOD))
    return [binascii.b2a_base64(mulaw[k * 160 : (k + 1) * 160], newline=False).decode() for k in range(PERIOD)]


@dataclass(frozen=True, slots=True)
class Received:
    """What one end received of the other's tones: samples at `rate`, and per message the
    samples received by its end and when it arrived."""

    pcm: np.ndarray
    rate: int
    ends: list[int]
    times: list[float]

    @classmethod
    def pcm16(cls, data: bytes, rate: int, byte_totals: list[int], times: list[float]) -> Received:
        x = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(float)
        return cls(x, rate, [t // 2 for t in byte_totals], times)

    @classmethod
    def mulaw(cls, data: bytes, byte_totals: list[int], times: list[float]) -> Received:
        return cls.pcm16(codec.mulaw_to_pcm(bytes(data)), 8000, [2 * t for t in byte_totals], times)

    def time_of(self, sample: int) -> float:
        """When the message holding received sample `sample` arrived."""
        return self.times[min(bisect_right(self.ends, sample), len(self.times) - 1)]


@dataclass(slots=True)
class Segment:
    """Received samples [rx_start, rx_end) hold sender samples from tx_start on, in order."""

    rx_start: int
    rx_end: int
    tx_start: int


def _window_scores(x: np.ndarray, ref: np.ndarray, w: int) -> np.ndarray:
    n = len(x) // w * w
    a, b = x[:n].reshape(-1, w), ref[:n].reshape(-1, w)
    return np.einsum("ij,ij->i", a, b) / np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b) + 1e-9)


def locate(voice: Voice, x: np.ndarray, rate: int, last_unit: int) -> int | None:
    """Where samples `x` start in the sender's audio (a sender sample index at `rate`; negative
    if a filter put a few samples ahead of unit 0), searching units up to `last_unit` (those
    sent by the time `x` arrived), at most a PERIOD back, so the answer is unique."""
    n = voice.samples(rate)
    if len(x) < n // 2 or not np.any(x):
        return None
    first = max(0, last_unit + 1 - PERIOD) * n
    pad = len(x) if first == 0 else 0  # room for a negative start
    reference = np.concatenate([np.zeros(pad), voice.pcm(rate, first, (last_unit + 2) * n - first + len(x))])
    size = 1 << (len(reference) + len(x)).bit_length()
    spectrum = np.fft.rfft(reference, size) * np.conj(np.fft.rfft(x, size))
    corr = np.fft.irfft(spectrum, size)[: len(reference) - len(x) + 1]
    energy = np.concatenate([[0.0], np.cumsum(reference**2)])
    window = np.sqrt(np.maximum(energy[len(x) :] - energy[: -len(x)], 1e-9))[: len(corr)]
    score = (corr / (window * np.sqrt(np.dot(x, x))))[: pad + (last_unit + 1) * n - first]  # starts already sent
    best = int(np.argmax(score))
    return best - pad + first if score[best] >= MATCH else None


def track(voice: Voice, rx: Received, sent_at: list[float]) -> list[Segment]:
    """The stretches of `rx` that are the sender's audio, and where each starts in it. `sent_at`:
    when each sender unit was sent (a stretch cannot hold audio sent after it arrived)."""
    x, w = rx.pcm, rx.rate // 50
    windows = len(x) // w
    power = np.einsum("ij,ij->i", x[: windows * w].reshape(-1, w), x[: windows * w].reshape(-1, w)) / w
    silent = np.append(power < SILENT * voice.amplitude**2 / 2, True)
    span = SPAN_UNITS * voice.samples(rx.rate) // w  # windows
    segments: list[Segment] = []
    pos, misses = 0, 0
    while pos < windows and misses < GIVE_UP:
        if silent[pos : pos + span].any():
            pos += 1
            continue
        end = min(len(x), (pos + span) * w)
        last = bisect_left(sent_at, rx.time_of(end - 1)) - 1
        found = None if last < 0 else locate(voice, x[pos * w : end], rx.rate, last)
        segment = None if found is None else _follow(voice, x, rx.rate, pos, found, silent, span)
        if segment is None:  # nothing there, or a tone like it for a moment: not a stretch
            pos, misses = pos + 1, misses + 1
            continue
        misses = 0
        if segments and segments[-1].rx_end >= segment.rx_start - w:  # one window straddled a jump
            _split(voice, x, rx.rate, segments[-1], segment)
        segments.append(segment)
        pos = -(-segment.rx_end // w)
    return segments


def _follow(voice: Voice, x: np.ndarray, rate: int, pos: int, found: int, silent: np.ndarray,
            span: int) -> Segment | None:
    """The stretch from window `pos` on that continues sender sample `found`, as long as every 20 ms
    window matches; None unless `span` windows do (or the audio ends)."""
    w = rate // 50
    windows = len(x) // w
    ref = voice.pcm(rate, found, len(x) - pos * w)
    bad = ~(_window_scores(x[pos * w : windows * w], ref, w) >= MATCH) | silent[pos:windows]
    good = int(np.argmax(bad)) if bad.any() else windows - pos
    if good < min(span, windows - pos):
        return None
    end = (pos + good) * w
    tail = x[end:]  # the last, shorter window, if the stretch reaches it
    if good == windows - pos and len(tail) >= w // 4:
        end = len(x) if _window_scores(tail, ref[end - pos * w :], len(tail))[0] >= MATCH else end
    # A window matches as a whole with a little silence or other audio at an edge: trim that off.
    wrong = np.flatnonzero(np.abs(x[pos * w : end] - ref[: end - pos * w]) > EDGE * voice.amplitude)
    head = wrong[wrong < w]
    rear = wrong[wrong >= end - pos * w - w]
    start = pos * w + (int(head[-1]) + 1 if len(head) else 0)
    end = pos * w + int(rear[0]) if len(rear) else end
    return Segment(start, end, found + start - pos * w) if end > start else None


def _split(voice: Voice, x: np.ndarray, rate: int, before: Segment, after: Segment) -> None:
    """Move the boundary between two stretches to the sample that fits both best (a window
    that straddles a jump in the audio matches neither as a whole)."""
    lo, hi = before.rx_end, after.rx_start + rate // 50
    if hi <= lo:
        return
    span = x[lo:hi]
    err_before = (span - voice.pcm(rate, before.tx_start + lo - before.rx_start, hi - lo)) ** 2
    err_after = (span - voice.pcm(rate, after.tx_start + lo - after.rx_start, hi - lo)) ** 2
    cost = np.concatenate([[0.0], np.cumsum(err_before)]) + np.concatenate([np.cumsum(err_after[::-1])[::-1], [0.0]])
    cut = lo + int(np.argmin(cost))
    after.tx_start -= after.rx_start - cut
    after.rx_start, before.rx_end = cut, cut


def arrivals(voice: Voice, rx: Received, segments: list[Segment], units: int) -> list[float | None]:
    """When each of the sender's first `units` units arrived (its audio up to TOLERANCE_S before
    its end), in whichever stretch was first; None for units that never did."""
    n, tolerance = voice.samples(rx.rate), round(TOLERANCE_S * rx.rate)
    found: list[float | None] = [None] * units
    for segment in segments:
        first = max(0, (segment.tx_start + tolerance) // n - 1)
        last = min(units, (segment.tx_start + segment.rx_end - segment.rx_start + tolerance) // n + 1)
        for u in range(first, last):
            r = (u + 1) * n - 1 - tolerance - segment.tx_start + segment.rx_start
            if segment.rx_start <= r < segment.rx_end:
                t = rx.time_of(r)
                if found[u] is None or t < found[u]:  # type: ignore[operator]
                    found[u] = t
    return found


def covered(segments: list[Segment], start: int, end: int, rate: int) -> list[tuple[int, int]]:
    """The parts of sender samples [start, end) that arrived, merged, in order. A part shorter than
    TOLERANCE_S is a filter's delay reaching across a jump, not audio that arrived."""
    parts = sorted((max(start, s.tx_start), min(end, s.tx_start + s.rx_end - s.rx_start)) for s in segments)
    merged: list[tuple[int, int]] = []
    for lo, hi in parts:
        if hi - lo < TOLERANCE_S * rate:
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged
