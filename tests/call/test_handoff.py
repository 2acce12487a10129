"""Calls heard of on one replica that another replica took over, in-process: two apps on one
database file. (tests/test_replicas.py has the stream reaching the other replica, as processes.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from phonebot.call.admission import Admission
from phonebot.call.handoff import POLL_S
from tests.conftest import make_settings, running
from tests.fakes.gemini_live import FakeLiveServer
from tests.phone import FORM, answer, dial


async def test_waiting_calls_are_those_whose_stream_has_not_started_here() -> None:
    admission = Admission(max_calls=5)
    for call_sid in ("CA1", "CA2"):
        admission.admit(call_sid, "inbound", stream_within_s=60)
    admission.streaming("CA2", "inbound")
    admission.streaming("CA3", "inbound")  # its webhook went elsewhere
    assert admission.waiting() == ["CA1"]
    for call_sid in ("CA1", "CA2", "CA3"):
        admission.release(call_sid)


async def test_a_call_ended_before_its_stream_on_another_replica_is_let_go_here(
    tmp_path: Path, gemini: FakeLiveServer
) -> None:
    shared = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    async with (
        running(make_settings(database_url=shared, max_calls=1)) as a,
        running(make_settings(database_url=shared)) as b,
    ):
        await dial(a)
        early = await gemini.next_session()
        assert a.calls.admission.full
        # The caller hung up while it rang; Twilio's status callback reached B.
        assert (await b.post_status({**FORM, "CallStatus": "completed", "CallDuration": "0"})).status_code == 204
        heard = time.monotonic()
        await asyncio.wait_for(early.closed.wait(), POLL_S + 2.0)
        assert time.monotonic() - heard < POLL_S + 1.0  # a poll, not the 30 s a stream may take
        assert a.calls.admission.count == 0


async def test_a_call_whose_stream_started_here_is_never_let_go(gemini: FakeLiveServer, wait_until: Any) -> None:
    async with running(make_settings()) as service:
        call, session = await answer(service, gemini)
        await wait_until(lambda: FORM["CallSid"] in service.calls.active)
        # Had the lookup been made just before this replica claimed the stream, it would say "elsewhere".
        await service.calls.elsewhere(FORM["CallSid"])
        assert FORM["CallSid"] in service.calls.active and service.calls.admission.count == 1
        await asyncio.sleep(0.1)
        assert not session.closed.is_set() and not call.closed.is_set()
        await call.stop()


async def test_letting_a_call_go_stops_when_cancelled_by_a_shutdown(gemini: FakeLiveServer) -> None:
    """The hand-off's poll, letting a call go while the replica shuts down, is cancelled by the
    shutdown: it must stop then (closing the early session swallowed the cancellation, and the
    shutdown waited for the hand-off for ever)."""
    async with running(make_settings()) as service:
        await dial(service)
        await gemini.next_session()
        early = service.calls._early[FORM["CallSid"]]
        await asyncio.wait_for(asyncio.shield(early.task), 5)  # the early session is open
        closing = asyncio.Event()

        async def slow_close() -> None:  # a session slow to close, as a far-away model's may be
            closing.set()
            await asyncio.Event().wait()

        early.task.result().close = slow_close
        letting_go = asyncio.create_task(service.calls.elsewhere(FORM["CallSid"]))
        await asyncio.wait_for(closing.wait(), 5)
        letting_go.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(letting_go, 5)
        assert letting_go.cancelled()
        assert service.calls.admission.count == 0
