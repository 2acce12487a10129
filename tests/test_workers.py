"""`phonebot serve --workers N`, as real processes: N workers behind one port. A call whose webhook
and stream reach different workers runs where its webhook was, on the model session opened then;
PHONEBOT_MAX_CALLS and /metrics are the replica's, whichever worker answers; SIGTERM to the parent
drains every worker, and the parent exits 0 once all have; a worker that dies is replaced, one
that cannot start stops the replica."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from phonebot.workers import available_cores
from tests import audio
from tests.call.test_admission import BUSY_TWIML, DRAINING_TWIML
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall
from tests.phone import FORM, Intact, answer, expected_mulaw_bytes
from tests.served import Served, serve

GREETING = audio.tone(440, 24000, 0.3)
HUNG_UP = (("direction", "inbound"), ("end_reason", "caller_hung_up"))


def form(n: int) -> dict[str, str]:
    return {**FORM, "CallSid": f"CA{n:032x}", "From": f"+1415555{n:04d}"}


def count(served: Served, event: str) -> int:
    return sum(1 for e in served.events() if e.get("event") == event)


def ended(served: Served, *numbers: int) -> bool:
    """Whether the calls of these numbers have ended."""
    done = {e.get("call_sid") for e in served.events() if e.get("event") == "call.ended"}
    return all(form(n)["CallSid"] in done for n in numbers)


async def until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def greeted(served: Served, gemini: FakeLiveServer, n: int) -> tuple[FakeTwilioCall, FakeLiveSession]:
    """A call in progress, its greeting heard: the session is the one its webhook opened."""
    call, session = await answer(served, gemini, form(n))
    await session.wait_for_text("Greet")
    await session.send_audio(GREETING)
    await session.send_turn_complete()
    await call.wait_for_audio(expected_mulaw_bytes(GREETING))
    return call, session


async def scrape(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(base_url=served.http_url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("phonebot_")
    }


async def in_both_workers(served: Served, gemini: FakeLiveServer, first: int = 1) -> list[tuple[Any, ...]]:
    """Calls in progress until each of the two workers holds one (a call is held where its webhook
    went; the kernel spreads connections): (n, call, session, worker) each. No audio yet either way."""
    held: list[tuple[Any, ...]] = []
    for n in range(first, first + 30):
        call, session = await answer(served, gemini, form(n))
        await session.wait_for_text("Greet")
        worker = served.worker_of("voice.incoming", form(n)["CallSid"])
        if any(w == worker for *_, w in held):
            await call.stop()
            await until(lambda n=n: ended(served, n))  # its place is free again
            continue
        held.append((n, call, session, worker))
        if len(held) == 2:
            return held
    pytest.fail("30 calls all went to one worker")


async def test_a_stream_that_reaches_another_worker_runs_where_its_webhook_went(
    tmp_path: Path, gemini: FakeLiveServer
) -> None:
    async with serve(tmp_path, workers=2) as served:
        for n in range(1, 40):
            adopted = count(served, "siblings.adopted")
            call, session = await answer(served, gemini, form(n))  # the session its webhook opened
            await session.wait_for_text("Greet")
            await Intact(call, session).both_ways(25)  # every frame, both ways, on that session
            await call.stop()
            call_sid = form(n)["CallSid"]
            await until(lambda n=n: ended(served, n))
            if count(served, "siblings.adopted") > adopted:
                break  # this call's stream reached the worker that did not take its webhook
        else:
            pytest.fail("39 calls' streams all reached the worker of their webhook")
        # It ran in the worker that took its webhook, on the session opened then: no other was opened.
        assert served.worker_of("voice.incoming", call_sid) == served.worker_of("call.started", call_sid)
        assert len(gemini.sessions) == n
        assert count(served, "call.streaming_elsewhere") == 0
        assert count(served, "call.early_session_unclaimed") == 0


async def test_a_call_twilio_says_ended_before_its_stream_is_let_go_by_the_worker_of_its_webhook(
    tmp_path: Path, gemini: FakeLiveServer
) -> None:
    async with serve(tmp_path, workers=2) as served:
        for n in range(1, 30):
            call_sid = form(n)["CallSid"]
            await served.post_voice(form(n))
            early = await gemini.next_session()
            status = {**form(n), "CallStatus": "completed", "CallDuration": "0"}
            assert (await served.post_status(status)).status_code == 204
            await asyncio.wait_for(early.closed.wait(), 2)  # at once, from whichever worker heard it
            await until(lambda sid=call_sid: any(
                e.get("event") == "call.ended_before_stream" and e.get("call_sid") == sid for e in served.events()))
            webhook = served.worker_of("voice.incoming", call_sid)
            assert served.worker_of("call.ended_before_stream", call_sid) == webhook
            told = [e for e in served.events() if e.get("call_sid") == call_sid and "/twilio/status" in e["event"]]
            if [e["worker"] for e in told] != [webhook]:
                break  # the status callback reached the other worker
        else:
            pytest.fail("29 status callbacks all reached the worker of their webhook")


async def test_max_calls_and_metrics_are_the_replicas_whichever_worker_answers(
    tmp_path: Path, gemini: FakeLiveServer
) -> None:
    async with serve(tmp_path, workers=2, PHONEBOT_MAX_CALLS="2") as served:
        held = await in_both_workers(served, gemini)
        # Full: a third caller is turned away by whichever worker takes the webhook, every time.
        for n in range(100, 106):
            response = await served.post_voice(form(n))
            assert response.text == BUSY_TWIML
        refusing = {served.worker_of("call.refused", form(n)["CallSid"]) for n in range(100, 106)}
        # Each worker answers scrapes in turn: every scrape tells the replica's figures.
        answered: set[int] = set()
        for _ in range(40):
            samples = await scrape(served)
            assert samples[("phonebot_calls_active", ())] == 2
            assert samples[("phonebot_calls_refused_total", (("reason", "full"),))] == 6
            answered = {
                e["worker"] for e in served.events() if e.get("logger") == "uvicorn.access" and "/metrics" in e["event"]
            }
            if answered == {0, 1}:
                break
        assert answered == {0, 1}
        async with httpx.AsyncClient(base_url=served.http_url) as client:
            ready = (await client.get("/readyz")).json()
        assert "full: 2 calls held, PHONEBOT_MAX_CALLS is 2" in ready["error"]["reasons"]
        before = (await scrape(served)).get(("phonebot_calls_total", HUNG_UP), 0.0)
        for _, call, _, _ in held:
            await call.stop()
        await until(lambda: ended(served, *(n for n, *_ in held)))
        samples = await scrape(served)
        assert samples[("phonebot_calls_active", ())] == 0
        assert samples[("phonebot_calls_total", HUNG_UP)] == before + 2  # one ended in each worker
        # With room again, a new call is taken by either worker.
        call, _ = await greeted(served, gemini, 200)
        await call.stop()
    assert refusing  # (which worker refused is the kernel's choice; the cap held on each)


async def test_sigterm_to_the_parent_drains_every_worker_then_it_exits_0(
    tmp_path: Path, gemini: FakeLiveServer
) -> None:
    async with serve(tmp_path, workers=2, PHONEBOT_DRAIN_S="60") as served:
        held = await in_both_workers(served, gemini)
        intact = [Intact(call, session, seed=n) for n, call, session, _ in held]
        served.signal(signal.SIGTERM)
        await until(lambda: count(served, "drain.started") == 2)
        # Every worker: not ready, and new callers are turned away politely.
        for n in range(300, 304):
            assert (await served.post_voice(form(n))).text == DRAINING_TWIML
        # Both calls go on, both ways, nothing lost.
        await asyncio.gather(*(each.both_ways(25, realtime=True) for each in intact))
        assert served.running
        await held[0][1].stop()
        await asyncio.sleep(1.0)
        assert served.running  # the other worker still has its call
        await held[1][1].stop()
        assert await served.exit_code(timeout=20) == 0
    exited = [e for e in served.events() if e.get("event") == "serve.worker_exited"]
    assert sorted(e["worker"] for e in exited) == [0, 1] and all(e["exit_code"] == 0 for e in exited)
    drains = [e for e in served.events() if e.get("event") == "drain.finished"]
    assert sorted(e["worker"] for e in drains) == [0, 1]
    assert count(served, "drain.hurry") == 0


async def test_a_second_signal_ends_every_workers_calls_at_once(tmp_path: Path, gemini: FakeLiveServer) -> None:
    async with serve(tmp_path, workers=2, PHONEBOT_DRAIN_S="60") as served:
        held = await in_both_workers(served, gemini)
        served.signal(signal.SIGINT)
        await until(lambda: count(served, "drain.started") == 2)
        served.signal(signal.SIGINT)
        for _, call, _, _ in held:
            await asyncio.wait_for(call.closed.wait(), 5)
        assert await served.exit_code(timeout=15) == 0
    sids = {form(n)["CallSid"] for n, *_ in held}
    ends = [e for e in served.events() if e.get("event") == "call.ended" and e["call_sid"] in sids]
    assert sorted(e["worker"] for e in ends) == [0, 1] and {e["reason"] for e in ends} == {"shutdown"}


async def test_a_worker_that_dies_is_replaced_and_calls_go_on(tmp_path: Path, gemini: FakeLiveServer) -> None:
    async with serve(tmp_path, workers=2) as served:
        held = await in_both_workers(served, gemini)
        (_, doomed, _, dead), (n, survivor, session, _) = held
        os.kill(served.worker_pids()[dead], signal.SIGKILL)
        await until(lambda: count(served, "serve.worker_died") == 1)
        await asyncio.wait_for(doomed.closed.wait(), 5)  # its call went with it
        await Intact(survivor, session, seed=n).both_ways(25)  # the other worker's call did not notice
        await until(lambda: len(served.worker_pids()) == 2 and count(served, "serve.workers") == 2, timeout=30)
        for _ in range(10):  # each worker, in all likelihood; the replaced one counts from 0
            assert (await scrape(served))[("phonebot_calls_active", ())] == 1
        call, _ = await greeted(served, gemini, 500)
        await call.stop()
        await survivor.stop()
        served.signal(signal.SIGTERM)
        assert await served.exit_code(timeout=20) == 0


async def test_a_worker_that_cannot_start_stops_the_replica(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with 1") as failed:
        async with serve(tmp_path, workers=2, DATABASE_URL="sqlite+aiosqlite:////proc/no-such/phonebot.db"):
            pass
    assert "serve.worker_failed" in str(failed.value)
    assert "serve.worker_died" not in str(failed.value)  # no restarts of what cannot start


async def test_without_workers_it_runs_one_per_core(tmp_path: Path, gemini: FakeLiveServer) -> None:
    async with serve(tmp_path, workers=None) as served:
        assert len(served.worker_pids()) == (available_cores() if available_cores() > 1 else 0)
        call, _ = await greeted(served, gemini, 1)
        await call.stop()


def test_workers_must_be_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    from phonebot.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--workers", "0"])
    assert re.search(r"--workers: .*must be at least 1", capsys.readouterr().err)
