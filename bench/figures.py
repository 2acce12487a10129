"""From what the callers and the fake model recorded to the bench's figures.

Audio is matched by content (`bench.tones`), per model session, so a bot that drops, discards or
re-times audio shifts nothing after it:
- caller -> model: each counted caller frame arrived when the model had received its audio (up
  to 2.5 ms before the frame's end); added latency is that minus when the frame was sent.
  Frames that never arrived before the first one that did were **dropped at start** (the bot's
  model session was not ready); later ones that never arrived are **lost**.
- model -> caller: likewise each 40 ms chunk the model sent. Of a turn the caller barged in on,
  the chunks after the last one that arrived were **discarded on barge-in** (the bot rightly
  drops what it had queued); every other chunk that never arrived is **lost**.
- barge-in: `interrupted` sent -> the first `clear` the caller received after it, before the
  next turn began.
Loss is counted in 20 ms frames: whole caller frames up, and the bot's missing audio per turn,
in 20 ms, down.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable

from bench import tones
from bench.callers import Caller
from bench.fake_model import SessionRecord

FRAMES_PER_CHUNK = round(tones.MODEL_VOICES[0].unit_s / tones.CALLER.unit_s)
FRAME_SAMPLES = 160  # 20 ms at the caller's 8 kHz


def summary(seconds: Iterable[float]) -> dict[str, float | int | None]:
    """p50/p99/max in ms (nearest rank) and the sample count; None figures when there are no samples."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"p50": None, "p99": None, "max": None, "count": 0}

    def rank(q: float) -> float:
        return round(ms[max(0, math.ceil(q * len(ms)) - 1)], 3)

    return {"p50": rank(0.50), "p99": rank(0.99), "max": round(ms[-1], 3), "count": len(ms)}


def _earliest(a: list[float | None], b: list[float | None]) -> list[float | None]:
    return [y if x is None or (y is not None and y < x) else x for x, y in zip(a, b, strict=True)]


def caller_to_model(
    caller: Caller, sessions: list[SessionRecord], window: tuple[float, float]
) -> tuple[list[float], int, int]:
    """Added latency of each counted frame sent in the window; frames dropped at start; frames lost."""
    sent_at = caller.counted_sent_at
    arrived: list[float | None] = [None] * len(sent_at)
    for session in sessions:
        rx = tones.Received.pcm16(session.audio(), session.in_rate, session.audio_in_total, session.audio_in_at)
        segments = tones.track(tones.CALLER, rx, caller.sent_at)
        arrived = _earliest(arrived, tones.arrivals(tones.CALLER, rx, segments, len(sent_at)))
    first = next((k for k, t in enumerate(arrived) if t is not None), len(sent_at))
    dropped = first if first < len(sent_at) else 0
    lost = sum(1 for t in arrived[first:] if t is None) + (len(sent_at) if first == len(sent_at) else 0)
    latencies = [t - s for s, t in zip(sent_at, arrived, strict=True) if t is not None and window[0] <= s <= window[1]]
    return latencies, dropped, lost


def model_to_caller(
    caller: Caller, sessions: list[SessionRecord], window: tuple[float, float]
) -> tuple[list[float], int, int]:
    """Added latency of each chunk sent in the window; 20 ms frames discarded on barge-in; frames lost."""
    rx = tones.Received.mulaw(caller.audio(), caller.audio_total, caller.audio_at)
    latencies, discarded, lost = [], 0, 0
    for session in sessions:
        segments = tones.track(session.voice, rx, session.audio_out_at)
        arrived = tones.arrivals(session.voice, rx, segments, len(session.audio_out_at))
        latencies += [t - s for s, t in zip(session.audio_out_at, arrived, strict=True)
                      if t is not None and window[0] <= s <= window[1]]
        n = session.voice.samples(rx.rate)
        for j, turn in enumerate(session.turns):
            start = turn.first_chunk * n
            end = (session.turns[j + 1].first_chunk if j + 1 < len(session.turns) else len(arrived)) * n
            parts = tones.covered(segments, start, end, rx.rate)
            missing = end - start - sum(hi - lo for lo, hi in parts)
            if turn.interrupted_at is not None:  # what the bot dropped after the last it played
                tail = end - (parts[-1][1] if parts else start)
                discarded += tail // FRAME_SAMPLES
                missing -= tail
            lost += missing // FRAME_SAMPLES
    return latencies, discarded, lost


def barge_ins(caller: Caller, sessions: list[SessionRecord], window: tuple[float, float]) -> tuple[list[float], int]:
    """`interrupted` sent -> the turn's first `clear` received, for barge-ins in the window; clears that never came."""
    starts = sorted(turn.started_at for session in sessions for turn in session.turns)
    latencies, missing = [], 0
    for turn in (turn for session in sessions for turn in session.turns):
        if turn.interrupted_at is None:
            continue
        following = starts[bisect_left(starts, turn.interrupted_at) :]
        k = bisect_left(caller.clear_at, turn.interrupted_at)
        if k < len(caller.clear_at) and (not following or caller.clear_at[k] < following[0]):
            if window[0] <= turn.interrupted_at <= window[1]:
                latencies.append(caller.clear_at[k] - turn.interrupted_at)
        else:
            missing += 1
    return latencies, missing


def step_figures(
    callers: list[Caller], sessions: list[SessionRecord], window: tuple[float, float], model_delay_s: float
) -> dict:
    by_caller: dict[int, list[SessionRecord]] = {}
    for session in sessions:
        by_caller.setdefault(session.caller, []).append(session)
    up, down, barge, first, opened, webhook = [], [], [], [], [], []
    frames = {"caller_sent": 0, "caller_dropped_at_start": 0, "caller_lost": 0, "model_sent": 0,
              "model_discarded_on_barge_in": 0, "model_lost": 0, "barge_ins": 0, "clears_missing": 0,
              "late_caller_frames": 0, "marks_echoed": 0}
    unmatched = 0
    for caller in callers:
        mine = by_caller.get(caller.index, [])
        frames["caller_sent"] += len(caller.counted_sent_at)
        frames["late_caller_frames"] += caller.late_frames
        frames["marks_echoed"] += caller.marks_echoed
        if caller.webhook_s is not None:
            webhook.append(caller.webhook_s)
        if not mine or caller.started_at is None or caller.began_at is None:
            unmatched += 1
            frames["caller_lost"] += len(caller.counted_sent_at)
            continue
        frames["model_sent"] += sum(len(s.audio_out_at) for s in mine) * FRAMES_PER_CHUNK
        latencies, dropped, lost = caller_to_model(caller, mine, window)
        up += latencies
        frames["caller_dropped_at_start"] += dropped
        frames["caller_lost"] += lost
        latencies, discarded, lost = model_to_caller(caller, mine, window)
        down += latencies
        frames["model_discarded_on_barge_in"] += discarded
        frames["model_lost"] += lost
        latencies, missing = barge_ins(caller, mine, window)
        barge += latencies
        frames["barge_ins"] += sum(len(s.interrupted_at) for s in mine)
        frames["clears_missing"] += missing
        opened.append(mine[0].setup_at - caller.began_at)
        if caller.audio_at:
            first.append(caller.audio_at[0] - caller.began_at - model_delay_s)
    indices = {caller.index for caller in callers}
    return {
        "caller_to_model_ms": summary(up),
        "model_to_caller_ms": summary(down),
        "barge_in_ms": summary(barge),
        "first_audio_ms": summary(first),
        "session_open_ms": summary(opened),
        "webhook_ms": summary(webhook),
        "frames": frames,
        "calls_without_session": unmatched,
        "sessions_unmatched": sum(1 for s in sessions if s.caller not in indices),
        "caller_errors": sum(len(c.errors) for c in callers),
    }
