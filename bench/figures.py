"""From what the callers and the fake model recorded to the bench's figures.

The path is deterministic and in order, so audio is matched by byte offset, not by content:
- caller frame k (160 bytes of 8 kHz mu-law) is the k-th 640-byte block of 16 kHz PCM the model
  receives; its added latency is "frame sent" -> "the model has received byte 640 * (k + 1)";
- byte offset b of the model's 24 kHz PCM is mu-law offset b / 6 at the caller; a 40 ms chunk
  ending at b has arrived when the caller has received b / 6 bytes.
Barge-ins are matched in order too: the k-th `interrupted` of a session with the k-th `clear`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable

from bench.callers import FRAME_BYTES, Caller
from bench.fake_model import SessionRecord

MODEL_BLOCK = 640  # 16 kHz PCM bytes per 20 ms caller frame
DOWN = 6  # 24 kHz PCM bytes per 8 kHz mu-law byte


def summary(seconds: Iterable[float]) -> dict[str, float | int | None]:
    """p50/p99/max in ms (nearest rank) and the sample count; None figures when there are no samples."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"p50": None, "p99": None, "max": None, "count": 0}

    def rank(q: float) -> float:
        return round(ms[max(0, math.ceil(q * len(ms)) - 1)], 3)

    return {"p50": rank(0.50), "p99": rank(0.99), "max": round(ms[-1], 3), "count": len(ms)}


def _arrivals(need: list[int], totals: list[int], times: list[float]) -> list[float | None]:
    """For each byte count in `need` (ascending), when the running total first reached it."""
    return [times[i] if (i := bisect_left(totals, n)) < len(totals) else None for n in need]


def caller_to_model(caller: Caller, session: SessionRecord, window: tuple[float, float]) -> tuple[list[float], int]:
    """Added latency of each frame sent in the window, and frames that never reached the model."""
    need = [MODEL_BLOCK * (k + 1) for k in range(len(caller.sent_at))]
    arrived = _arrivals(need, session.audio_in_total, session.audio_in_at)
    latencies = [got - sent for sent, got in zip(caller.sent_at, arrived, strict=True)
                 if got is not None and window[0] <= sent <= window[1]]
    lost = len(caller.sent_at) - session.bytes_in // MODEL_BLOCK
    return latencies, max(0, lost)


def model_to_caller(caller: Caller, session: SessionRecord, window: tuple[float, float]) -> tuple[list[float], int]:
    """Added latency of each bot chunk sent in the window, and 20 ms frames that never reached the caller."""
    need = [total // DOWN for total in session.audio_out_total]
    arrived = _arrivals(need, caller.audio_total, caller.audio_at)
    latencies = [got - sent for sent, got in zip(session.audio_out_at, arrived, strict=True)
                 if got is not None and window[0] <= sent <= window[1]]
    received = caller.audio_total[-1] if caller.audio_total else 0
    lost_bytes = max(0, session.bytes_out // DOWN - received)
    return latencies, math.ceil(lost_bytes / FRAME_BYTES)


def barge_ins(caller: Caller, session: SessionRecord, window: tuple[float, float]) -> tuple[list[float], int]:
    """`interrupted` sent -> `clear` received, for barge-ins in the window; and clears that never came."""
    latencies = [clear - sent for sent, clear in zip(session.interrupted_at, caller.clear_at, strict=False)
                 if window[0] <= sent <= window[1]]
    return latencies, max(0, len(session.interrupted_at) - len(caller.clear_at))


def step_figures(
    callers: list[Caller], sessions: list[SessionRecord], window: tuple[float, float], model_delay_s: float
) -> dict:
    by_caller = {s.caller: s for s in sessions}
    up, down, barge, first, opened = [], [], [], [], []
    frames = {"caller_sent": 0, "caller_lost": 0, "model_sent": 0, "model_lost": 0,
              "barge_ins": 0, "clears_missing": 0, "late_caller_frames": 0, "marks_echoed": 0}
    unmatched = 0
    for caller in callers:
        session = by_caller.get(caller.index)
        frames["caller_sent"] += len(caller.sent_at)
        frames["late_caller_frames"] += caller.late_frames
        frames["marks_echoed"] += caller.marks_echoed
        if session is None or caller.started_at is None:
            unmatched += 1
            frames["caller_lost"] += len(caller.sent_at)
            continue
        frames["model_sent"] += session.bytes_out // DOWN // FRAME_BYTES
        latencies, lost = caller_to_model(caller, session, window)
        up += latencies
        frames["caller_lost"] += lost
        latencies, lost = model_to_caller(caller, session, window)
        down += latencies
        frames["model_lost"] += lost
        latencies, missing = barge_ins(caller, session, window)
        barge += latencies
        frames["barge_ins"] += len(session.interrupted_at)
        frames["clears_missing"] += missing
        opened.append(session.setup_at - caller.started_at)
        if caller.audio_at:
            first.append(caller.audio_at[0] - caller.started_at - model_delay_s)
    return {
        "caller_to_model_ms": summary(up),
        "model_to_caller_ms": summary(down),
        "barge_in_ms": summary(barge),
        "first_audio_ms": summary(first),
        "session_open_ms": summary(opened),
        "frames": frames,
        "calls_without_session": unmatched,
        "caller_errors": sum(len(c.errors) for c in callers),
    }
