"""What recording a metric costs, beside what a 20 ms frame costs anyway.

    python -m bench.metrics_cost

Each line is one recording call as the code makes it (phonebot/metrics.py's objects, the real
labels), in nanoseconds per call, the median of several timeit runs; and how often a call makes
it. Only the first-audio check runs per model audio chunk; everything else runs per event.
For scale: the codec's per-frame work (`python -m bench.codec`).
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Callable

from phonebot import codec, metrics


class _Session:
    """Just the attribute the model->caller pump tests per chunk of bot audio."""

    _first_audio = False


# As it stands inline in CallSession._model_to_caller (a statement, so no function call is timed).
FIRST_AUDIO_CHECK = """
if self._first_audio:
    self._first_audio = False
"""


def _barge_in() -> None:
    began = time.perf_counter()
    metrics.BARGE_IN.observe(time.perf_counter() - began)


CASES: list[tuple[str, str, str | Callable[[], object]]] = [
    ("first-audio check (already sent)", "per model audio chunk", FIRST_AUDIO_CHECK),
    ("FIRST_AUDIO.observe", "once per call", lambda: metrics.FIRST_AUDIO.observe(0.42)),
    ("BARGE_IN: 2 perf_counter + observe", "per barge-in", _barge_in),
    (
        "TOOL_SECONDS.labels().observe",
        "per tool call",
        lambda: metrics.TOOL_SECONDS.labels("lookup", "true").observe(0.01),
    ),
    ("MODEL_RECONNECTS.labels().inc", "per reconnect", lambda: metrics.MODEL_RECONNECTS.labels("go_away").inc()),
    ("CALLER_AUDIO_DROPPED.inc", "per outage", lambda: metrics.CALLER_AUDIO_DROPPED.inc(0.2)),
    ("CALLS_ACTIVE.inc + dec", "per call", lambda: (metrics.CALLS_ACTIVE.inc(), metrics.CALLS_ACTIVE.dec())),
    ("CALLS.labels().inc", "per call", lambda: metrics.CALLS.labels("inbound", "caller_hung_up").inc()),
    ("CALL_DURATION.observe", "per call", lambda: metrics.CALL_DURATION.observe(95.0)),
]


def ns_per_call(code: str | Callable[[], object], number: int = 200_000, repeat: int = 7) -> float:
    runs = timeit.repeat(code, number=number, repeat=repeat, globals={"self": _Session()})
    return statistics.median(runs) / number * 1e9


def frame_us() -> float:
    """The codec's work for one 20 ms frame each way (for scale)."""
    up, down = codec.Upsampler8to16(), codec.Downsampler24to8()
    caller, bot = bytes(320), bytes(960)

    def one_frame() -> None:
        up.process(codec.mulaw_to_pcm(codec.pcm_to_mulaw(caller)))
        codec.pcm_to_mulaw(down.process(bot))

    return ns_per_call(one_frame, number=20_000, repeat=5) / 1000


def main() -> None:
    print(f"{'recording call':40} {'how often':24} {'ns/call':>8}")
    for name, how_often, function in CASES:
        print(f"{name:40} {how_often:24} {ns_per_call(function):8.0f}")
    print(f"\nfor scale: the codec, one 20 ms frame each way: {frame_us():.1f} us")


if __name__ == "__main__":
    main()
