"""Prometheus metrics: every metric phonebot keeps, in one place, under the names of the outside interface.

Recorded only where something happens once per call or per event (a call admitted, refused or
ended; a barge-in; a tool call; a reconnect; a webhook attempt), never per audio frame. Each
histogram's buckets fit its figure: barge-in in milliseconds, first audio in hundreds of
milliseconds, tools from milliseconds to seconds, calls in minutes.

One module, the process's default registry; under `serve --workers N`, prometheus-client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by the parent before any worker starts): each
worker writes its values to files there, and whichever worker answers `/metrics` reads them all,
so a scrape sees the replica, not one process. Counters and histograms add up over every worker
that ran (a replaced one's counts stay); the active-calls gauge adds up the live ones. Chosen over
one port per worker: a replica stays one scrape target (one port in a pod, one upstream behind
a proxy), and nothing changes for dashboards when the worker count does.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

disable_created_metrics()  # no `*_created` series beside every counter and histogram: noise on a dashboard

CALLS_ACTIVE = Gauge(
    "phonebot_calls_active",
    "Calls this replica holds now, counted from their voice webhook (or API request, or web token) until they end",
    multiprocess_mode="livesum",
)
CALLS = Counter("phonebot_calls_total", "Calls that ended, by direction and end reason", ["direction", "end_reason"])
CALL_DURATION = Histogram(
    "phonebot_call_duration_seconds",
    "Length of calls, from their media stream's start to their end",
    buckets=(10, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200),
)
FIRST_AUDIO = Histogram(
    "phonebot_first_audio_seconds",
    "From a call's media stream start to the first bot audio sent to the caller",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
BARGE_IN = Histogram(
    "phonebot_barge_in_seconds",
    "From the model saying the caller interrupted to the clear sent to the phone",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25),
)
MODEL_RECONNECTS = Counter(
    "phonebot_model_reconnects_total",
    "New model connections taken over mid-call: go_away (the service announced the end), connection_lost",
    ["cause"],
)
TOOL_SECONDS = Histogram(
    "phonebot_tool_seconds",
    "Tool calls by tool and outcome (ok: false for errors and timeouts), from the model's request to the result",
    ["tool", "ok"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
WEBHOOK_DELIVERIES = Counter(
    "phonebot_webhook_deliveries_total",
    "Finished-call webhook attempts, by outcome (delivered, retry, failed)",
    ["outcome"],
)
CALLER_AUDIO_DROPPED = Counter(
    "phonebot_caller_audio_dropped_seconds_total",
    "Caller audio that never reached the model: the oldest, dropped while the model was out of reach",
)
CALLS_REFUSED = Counter(
    "phonebot_calls_refused_total",
    "Calls turned away: full (PHONEBOT_MAX_CALLS reached), draining (shutting down), unavailable (store down)",
    ["reason"],
)

RECONNECT_CAUSES = ("go_away", "connection_lost")
WEBHOOK_OUTCOMES = ("delivered", "retry", "failed")
UNKNOWN_TOOL = "unknown"  # label for a tool name the model made up: one series, however many names


def known_labels(refusals: tuple[str, ...], tools: tuple[str, ...]) -> None:
    """Start the series of known label values at zero, so rates and alerts see them before the first event."""
    for reason in refusals:
        CALLS_REFUSED.labels(reason)
    for cause in RECONNECT_CAUSES:
        MODEL_RECONNECTS.labels(cause)
    for outcome in WEBHOOK_OUTCOMES:
        WEBHOOK_DELIVERIES.labels(outcome)
    for tool in tools:
        for ok in ("true", "false"):
            TOOL_SECONDS.labels(tool, ok)


def exposition(accept: str | None) -> tuple[bytes, str]:
    """Every metric, in the format the scraper's Accept header asks for (Prometheus text, or
    OpenMetrics); returns the body and its content type."""
    encode, content_type = choose_encoder(accept or "")
    return encode(_registry()), content_type


def _registry() -> CollectorRegistry:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # every worker's files, read now
    return registry
