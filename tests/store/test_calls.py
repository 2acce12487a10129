"""Calls and their stream tokens on both backends: single use across replicas (several engines on
one database racing), one stream per call, expiry, binding an outbound call's token later, and
which replica's calls went elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from phonebot.store import CallStore, StreamRefused, migrate
from phonebot.store.calls import KEEP_EXPIRED, token_hash
from phonebot.store.engine import make_engine, writing
from phonebot.store.records import update_status
from phonebot.store.tables import stream_tokens

SID = "CA" + "1" * 32
OTHER = "CA" + "2" * 32
REPLICAS = 4
RACERS = 20


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[CallStore]]:
    """Several replicas' stores on one migrated database."""
    engines = [make_engine(database_url) for _ in range(REPLICAS)]
    await migrate.upgrade(engines[0])
    yield [CallStore(engine, f"host/{n}/replica") for n, engine in enumerate(engines)]
    for engine in engines:
        await engine.dispose()


async def reason(claim: Awaitable[object]) -> str:
    try:
        await claim
    except StreamRefused as refused:
        return refused.reason
    return "claimed"


async def test_a_call_is_recorded_once_as_first_said(stores: list[CallStore]) -> None:
    store = stores[0]
    assert await store.add(SID, "inbound", "+14155550123", "+14155550199") is True
    assert await store.add(SID, "inbound", "+19995550000", "+14155550199") is False
    call = await store.get(SID)
    assert call is not None and call.from_number == "+14155550123" and call.stream_started_at is None
    assert await store.get(OTHER) is None


async def test_racing_streams_with_one_token_let_one_in(stores: list[CallStore]) -> None:
    await stores[0].add(SID, "inbound", "+14155550123", "+14155550199")
    token = await stores[0].issue_token(SID, ttl_s=60)
    claims = [stores[n % REPLICAS].claim_stream(token, SID) for n in range(RACERS)]
    reasons = await asyncio.gather(*(reason(claim) for claim in claims))
    assert reasons.count("claimed") == 1
    assert set(reasons) == {"claimed", "token_used"}
    call = await stores[1].get(SID)
    assert call is not None and call.stream_started_at is not None


async def test_a_call_has_one_stream_whatever_tokens_it_has(stores: list[CallStore]) -> None:
    await stores[0].add(SID, "inbound", "+14155550123", "+14155550199")
    tokens = [await stores[0].issue_token(SID, ttl_s=60) for _ in range(RACERS)]  # webhook retries
    reasons = await asyncio.gather(
        *(reason(stores[n % REPLICAS].claim_stream(token, SID)) for n, token in enumerate(tokens))
    )
    assert reasons.count("claimed") == 1
    assert set(reasons) == {"claimed", "stream_already_started"}
    # The losers' tokens were not spent: a refused claim changes nothing.
    async with stores[0].engine.connect() as connection:
        used = await connection.scalar(select(func.count()).where(stream_tokens.c.used_at.is_not(None)))
    assert used == 1


async def test_refusals_say_why(stores: list[CallStore]) -> None:
    store = stores[0]
    await store.add(SID, "inbound", "+14155550123", "+14155550199")
    await store.add(OTHER, "inbound", "+14155550177", "+14155550199")
    token = await store.issue_token(SID, ttl_s=60)
    assert await reason(store.claim_stream("made-up", SID)) == "unknown_token"
    assert await reason(store.claim_stream(token, OTHER)) == "other_call"
    expired = await store.issue_token(SID, ttl_s=-1)
    assert await reason(store.claim_stream(expired, SID)) == "token_expired"
    orphan = await store.issue_token("CA" + "3" * 32, ttl_s=60)
    assert await reason(store.claim_stream(orphan, "CA" + "3" * 32)) == "unknown_call"
    assert await reason(store.claim_stream(token, SID)) == "claimed"
    assert await reason(store.claim_stream(token, SID)) == "token_used"


async def test_an_outbound_token_opens_nothing_until_bound_once(stores: list[CallStore]) -> None:
    store = stores[0]
    token = await store.issue_token(None, ttl_s=60)  # before Twilio has named the call
    await store.add(SID, "outbound", "+14155550199", "+14155550123")
    assert await reason(store.claim_stream(token, SID, bind_wait_s=0)) == "token_unbound"
    await stores[1].bind_token(token, SID)
    with pytest.raises(LookupError):
        await store.bind_token(token, OTHER)  # bound once: nobody re-aims it
    with pytest.raises(LookupError):
        await store.bind_token("made-up", OTHER)
    call = await store.claim_stream(token, SID)
    assert (call.direction, call.to_number) == ("outbound", "+14155550123")


async def test_a_stream_before_the_bind_waits_for_it_on_any_replica(stores: list[CallStore]) -> None:
    token = await stores[0].issue_token(None, ttl_s=60)
    waiting = asyncio.create_task(stores[1].claim_stream(token, SID))  # the callee answered first
    await asyncio.sleep(0.3)
    assert not waiting.done()
    metadata = {"customer_id": "cus_1"}
    await stores[2].add_outbound(
        token, SID, "+14155550199", "+14155550123", status="queued", instructions="Be brief.", metadata=metadata
    )
    call = await asyncio.wait_for(waiting, 2)
    assert (call.direction, call.instructions, call.metadata_object) == ("outbound", "Be brief.", metadata)
    with pytest.raises(LookupError):  # bound once
        await stores[0].add_outbound(token, OTHER, "+1", "+2", status="queued", instructions=None, metadata={})
    assert await stores[0].get(OTHER) is None  # and the row went with it

    never = await stores[0].issue_token(None, ttl_s=60)
    started = asyncio.get_running_loop().time()
    assert await reason(stores[3].claim_stream(never, OTHER, bind_wait_s=0.3)) == "token_unbound"
    assert asyncio.get_running_loop().time() - started >= 0.3
    await stores[0].revoke_token(never)
    assert await reason(stores[3].claim_stream(never, OTHER, bind_wait_s=0)) == "unknown_token"


async def test_long_expired_tokens_are_forgotten(stores: list[CallStore]) -> None:
    store = stores[0]
    old = await store.issue_token(SID, ttl_s=60)
    recent = await store.issue_token(SID, ttl_s=-60)
    long_ago = datetime.now(UTC) - KEEP_EXPIRED - timedelta(minutes=1)
    async with store.engine.begin() as connection:
        await connection.execute(
            update(stream_tokens).where(stream_tokens.c.token_hash == token_hash(old)).values(expires_at=long_ago)
        )
    await store.issue_token(SID, ttl_s=60)
    async with store.engine.connect() as connection:
        kept = set((await connection.execute(select(stream_tokens.c.token_hash))).scalars())
    assert token_hash(old) not in kept and token_hash(recent) in kept and len(kept) == 2


async def test_a_replica_hears_which_calls_it_heard_of_went_elsewhere(stores: list[CallStore]) -> None:
    here, there = stores[0], stores[1]
    here_sid, there_sid, waiting, hung_up, ringing = (f"CA{n:032x}" for n in range(1, 6))
    for sid in (here_sid, there_sid, waiting, hung_up, ringing):
        await here.add(sid, "inbound", "+14155550123", "+14155550199")  # every webhook came here
    await here.claim_stream(await here.issue_token(here_sid, ttl_s=60), here_sid)
    await there.claim_stream(await here.issue_token(there_sid, ttl_s=60), there_sid)
    async with writing(there.engine) as connection:  # Twilio's status callbacks reached the other replica
        await update_status(connection, hung_up, "completed", None)
        await update_status(connection, ringing, "ringing", None)
    everything = [here_sid, there_sid, waiting, hung_up, ringing, OTHER]
    assert await here.gone_elsewhere(everything) == {there_sid, hung_up}
    assert await there.gone_elsewhere(everything) == {here_sid, hung_up}
    assert await here.gone_elsewhere([]) == set()
