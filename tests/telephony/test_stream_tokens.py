"""Every media stream is tied to its call: the stream URL carries a token the voice webhook issued for
that CallSid, good once and for minutes. Replayed, foreign, expired, used or second streams are closed
with 1008 before any model session opens; the call's numbers come from the signed webhook, never from
the stream. Over real sockets, against the running app; the good calls beside them lose nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from phonebot.store.tables import calls, stream_tokens
from phonebot.telephony import voice
from tests.call.test_booking_call import ask, next_open_day
from tests.conftest import Service, running
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_media import FakeTwilioCall
from tests.phone import BUSINESS, CALLER, FORM, answer, assert_lossless, dial, stream_url

OTHER = {**FORM, "CallSid": "CA" + "2" * 32, "From": "+14155550177"}
NO_SESSION_WAIT_S = 0.5  # long enough for a wrongly accepted stream to have opened its session


async def refused(call: FakeTwilioCall) -> None:
    """Open the stream as Twilio does (connected, start) and expect it closed with 1008."""
    await call.connect()
    await asyncio.wait_for(call.closed.wait(), 5)
    assert call.close_code == 1008, (call.close_code, call.close_reason)


async def no_new_session(gemini: FakeLiveServer, expected: int) -> None:
    await asyncio.sleep(NO_SESSION_WAIT_S)
    assert len(gemini.sessions) == expected


async def test_a_replayed_handshake_is_refused(service: Service, gemini: FakeLiveServer, wait_until: Any) -> None:
    call = await dial(service)
    first = await gemini.next_session()
    await call.connect()
    await assert_lossless(call, first)
    await call.stop()
    await wait_until(lambda: not service.calls.active)
    # The same URL, signature and start again, as someone who captured the handshake would send them.
    replay = service.caller(public(service, call), signature=call.signature, call_sid=call.call_sid)
    await refused(replay)
    await no_new_session(gemini, 1)


async def test_a_token_opens_only_its_own_call(service: Service, gemini: FakeLiveServer) -> None:
    mine = await dial(service)
    mine_session = await gemini.next_session()
    other = await dial(service, OTHER)
    other_session = await gemini.next_session()
    # My token (my URL, validly signed), with the other call's CallSid in start: aimed at their call.
    forged = service.caller(public(service, mine), call_sid=OTHER["CallSid"])
    await refused(forged)
    await no_new_session(gemini, 2)
    # Both calls still get in, and lose nothing: a refusal burns no one's token.
    await other.connect()
    await mine.connect()
    await assert_lossless(other, other_session, seed=1)
    await assert_lossless(mine, mine_session, seed=2)
    assert set(service.calls.active) == {FORM["CallSid"], OTHER["CallSid"]}
    await other.stop()
    await mine.stop()


async def test_an_expired_token_is_refused(
    service: Service, gemini: FakeLiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(voice, "STREAM_TOKEN_TTL_S", 0.3)
    call = await dial(service)
    await gemini.next_session()
    await asyncio.sleep(0.5)
    await refused(call)
    await no_new_session(gemini, 1)


async def test_a_second_stream_for_a_live_call_is_refused(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    first = await dial(service)
    session = await gemini.next_session()
    again = await dial(service)  # Twilio retried the webhook: a second token for the same call
    await first.connect()
    await wait_until(lambda: FORM["CallSid"] in service.calls.active)
    live = service.calls.active[FORM["CallSid"]]
    await refused(again)
    await no_new_session(gemini, 1)
    # The same token once more, while its stream is live: refused too.
    await refused(service.caller(public(service, first), call_sid=FORM["CallSid"]))
    assert service.calls.active == {FORM["CallSid"]: live}  # the registry of calls is untouched
    await assert_lossless(first, session)
    await first.stop()
    await wait_until(lambda: not service.calls.active)


async def test_the_call_is_who_the_signed_webhook_said(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    forged = {"from": "+19995550000", "to": "+19995550001", "direction": "outbound-api"}
    call, session = await answer(service, gemini, custom_parameters=forged)
    await wait_until(lambda: FORM["CallSid"] in service.calls.active)
    info = service.calls.active[FORM["CallSid"]].info
    assert (info.from_number, info.to_number, info.direction) == (CALLER, BUSINESS, "inbound")
    assert CALLER in str(session.setup) and "+1999555" not in str(session.setup)
    await assert_lossless(call, session)
    # The booking tools know the caller by the webhook's number: theirs is found, the forged one's not.
    desk, day = service.calls.bookings, next_open_day(service)
    service_name = desk.business.services[0]
    made = {}
    for phone in (CALLER, forged["from"]):
        start = datetime.combine(day, time(10), desk.business.timezone) + timedelta(hours=len(made))
        booked = await desk.book(service_name, start, customer_name="A", phone=phone, notes="", call_sid="",
                                 now=datetime.now(UTC))
        made[phone] = booked.reference
    found = await ask(session, "find_booking")
    assert [b["reference"] for b in found["bookings"]] == [made[CALLER]]
    await call.stop()


async def test_the_webhook_records_the_call_once_and_keeps_only_token_hashes(service: Service) -> None:
    first = await service.post_voice(FORM)
    retried = await service.post_voice(FORM)
    assert first.status_code == retried.status_code == 200
    tokens = [url.rsplit("/", 1)[1] for url in (stream_url(first.text), stream_url(retried.text))]
    assert tokens[0] != tokens[1]
    async with service.app.state.store.engine.connect() as connection:
        rows = (await connection.execute(select(calls))).all()
        hashes = (await connection.execute(select(stream_tokens.c.token_hash))).scalars().all()
    assert [(r.call_sid, r.from_number, r.to_number, r.direction, r.stream_started_at) for r in rows] == [
        (FORM["CallSid"], CALLER, BUSINESS, "inbound", None)
    ]
    assert len(hashes) == 2 and not set(tokens) & set(hashes)  # only hashes are kept


async def test_the_stream_may_land_on_another_replica(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    # Replica A takes the webhook; replica B, sharing its database, takes the stream.
    call = await dial(service)
    await gemini.next_session()  # A's early session: B cannot use it
    async with running(service.settings) as other:
        on_b = other.caller(public(service, call), call_sid=FORM["CallSid"])
        await on_b.connect()
        session = await gemini.next_session()
        await session.wait_for_text("Greet")
        assert CALLER in str(session.setup)  # the numbers came from the shared calls table
        await assert_lossless(on_b, session)
        # And the token is spent for every replica: A refuses the same handshake.
        await refused(service.caller(public(service, call), call_sid=FORM["CallSid"]))
        await no_new_session(gemini, 2)
        await on_b.stop()
        await wait_until(lambda: not other.calls.active)


def public(service: Service, call: FakeTwilioCall) -> str:
    """The wss:// URL Twilio was given (and signs) for a fake call's local stream URL."""
    return call.ws_url.replace(f"ws://127.0.0.1:{service.port}", "wss://bot.example.test", 1)
