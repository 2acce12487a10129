"""GET /metrics: the names of the outside interface, and exactly how much each moves during one call
with a greeting, a barge-in, tool calls, a reconnect after an outage and a goAway switch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import audio
from tests.call.test_reconnect import CallerStream, checkpoint, model_of, start
from tests.call.test_tool_runtime import call_tool, lookup, wait_for_response
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.phone import FORM
from tests.timing import Instant

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

INTERFACE = {  # interfaces.md, as Prometheus sees them: name and type
    "phonebot_calls_active": "gauge",
    "phonebot_calls": "counter",
    "phonebot_call_duration_seconds": "histogram",
    "phonebot_first_audio_seconds": "histogram",
    "phonebot_barge_in_seconds": "histogram",
    "phonebot_model_reconnects": "counter",
    "phonebot_tool_seconds": "histogram",
    "phonebot_webhook_deliveries": "counter",
    "phonebot_caller_audio_dropped_seconds": "counter",
    "phonebot_calls_refused": "counter",
}


async def scrape(service: Service) -> tuple[Samples, dict[str, str]]:
    async with httpx.AsyncClient(base_url=service.http_url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(response.text):
        if family.name.startswith("phonebot_"):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def moved(before: Samples, after: Samples) -> Samples:
    """What changed, but histogram buckets and sums (timing-dependent: checked on their own)."""
    keys = (before.keys() | after.keys()) - {k for k in after if k[0].endswith(("_bucket", "_sum"))}
    return {key: after.get(key, 0) - before.get(key, 0) for key in keys if after.get(key, 0) != before.get(key, 0)}


def total(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def extra_tools() -> list[Any]:
    return [lookup]


@pytest.mark.parametrize("settings_overrides", [{"reconnect_buffer_s": 0.2}], ids=["buffer-0.2s"])
async def test_metrics_move_exactly_as_a_call_goes(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    before, types = await scrape(service)
    assert types == INTERFACE
    # Known label values are there from the start, at zero: rates and alerts see them at once.
    for reason in ("full", "draining", "unavailable"):
        assert ("phonebot_calls_refused_total", (("reason", reason),)) in before
    for tool in ("lookup", "unknown"):
        assert ("phonebot_tool_seconds_count", (("ok", "true"), ("tool", tool))) in before

    stream = CallerStream()
    call, first = await start(service, gemini, stream, wait_until)
    during, _ = await scrape(service)
    assert moved(before, during) == {("phonebot_calls_active", ()): 1}

    await first.send_audio(audio.tone(440, 24000, 0.3))  # the greeting: first audio
    await first.send_turn_complete()
    await call.wait_for_audio(800)
    sender = asyncio.create_task(first.send_audio(audio.tone(440, 24000, 2.0), chunk_bytes=1920, realtime=True))
    await asyncio.sleep(0.4)
    sender.cancel()
    interrupted = Instant.now()
    await first.send_interrupted()  # barge-in
    cleared = await call.wait_for_clear_instant()
    # The service measures the barge-in on this thread, within this stretch: any wait for a CPU it
    # saw is in this one.
    barge_in_cpu_wait = cleared.waited - interrupted.waited

    await call_tool(first, "t1", "lookup", {"name": "Ada"})
    await call_tool(first, "t2", "made_up_tool", {})
    await wait_for_response(first, "t1")
    await wait_for_response(first, "t2")

    # An outage: the model is away while the caller talks for 1 s (0.2 s of it is kept), then back.
    await checkpoint(service, first, "h1", wait_until)
    gemini.refuse_connections = True
    await first.close(1011, "Internal error encountered.")
    await stream.send(call, 50, realtime=True)
    gemini.refuse_connections = False
    second = await gemini.next_session(timeout=10)
    await stream.send(call, 5)
    model = model_of(service)
    await wait_until(lambda: model.reconnects == 1)
    assert model.dropped_audio_bytes > 0
    # And a goAway: a switch to a new connection, announced.
    await checkpoint(service, second, "h2", wait_until)
    await second.send_go_away("5s")
    await gemini.next_session()
    await wait_until(lambda: model.switches == 1)

    started = service.calls.active[FORM["CallSid"]].record.started
    await call.stop()
    await wait_until(lambda: not service.calls.active and service.calls.admission.count == 0)
    duration = time.monotonic() - started
    after, _ = await scrape(service)

    assert moved(before, after) == {
        ("phonebot_calls_total", (("direction", "inbound"), ("end_reason", "caller_hung_up"))): 1,
        ("phonebot_call_duration_seconds_count", ()): 1,
        ("phonebot_first_audio_seconds_count", ()): 1,
        ("phonebot_barge_in_seconds_count", ()): 1,
        ("phonebot_tool_seconds_count", (("ok", "true"), ("tool", "lookup"))): 1,
        ("phonebot_tool_seconds_count", (("ok", "false"), ("tool", "unknown"))): 1,
        ("phonebot_model_reconnects_total", (("cause", "connection_lost"),)): 1,
        ("phonebot_model_reconnects_total", (("cause", "go_away"),)): 1,
        ("phonebot_caller_audio_dropped_seconds_total", ()): pytest.approx(model.dropped_audio_bytes / 32000),
    }
    assert 0.5 <= model.dropped_audio_bytes / 32000 <= 1.0  # 1 s said, 0.2 s kept (give or take the reconnect)

    def sum_moved(name: str, **labels: str) -> float:
        return total(after, name + "_sum", **labels) - total(before, name + "_sum", **labels)

    assert sum_moved("phonebot_call_duration_seconds") == pytest.approx(duration, abs=0.5)
    assert 0 < sum_moved("phonebot_first_audio_seconds") < 5.0  # the greeting is cued after the stream starts
    barge_in = sum_moved("phonebot_barge_in_seconds")
    assert 0 < barge_in < 0.05 + barge_in_cpu_wait, (barge_in, barge_in_cpu_wait)  # the clear goes out at once
    assert 0 <= sum_moved("phonebot_tool_seconds", tool="lookup", ok="true") < 1.0
