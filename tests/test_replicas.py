"""Two `phonebot serve` replicas on one PostgreSQL, as a deployment runs them behind one public URL,
end to end over real sockets: a call whose voice webhook reaches one replica and whose stream reaches
the other; two callers on two replicas racing for the last place, through the booking tools; the
webhook outbox worked by both, each report delivered once; and SIGTERM to one replica while it holds
a call, which goes on to its end while the other takes the new calls.

One cluster and two processes for the whole module (starting them is most of the time a test would
take); the tests run in order and the last one stops replica A. Each Live session tells which
replica opened it by its API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from phonebot import codec
from phonebot.business import DEFAULT_BUSINESS_FILE, load_business
from phonebot.store import migrate
from phonebot.store.engine import lock_key, make_engine
from phonebot.store.tables import bookings, calls, webhook_outbox
from phonebot.webhook import IDLE_POLL_S
from tests import audio
from tests.call.test_admission import DRAINING_TWIML
from tests.call.test_booking_call import ask
from tests.call.test_reconnect import PCM16K_PER_FRAME, CallerStream
from tests.conftest import make_settings
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession
from tests.fakes.twilio_media import FakeTwilioCall
from tests.fakes.webhook_receiver import SECRET, Received, WebhookReceiver, verify
from tests.phone import FORM, Intact, dial, expected_mulaw_bytes, greet
from tests.served import Served, serve
from tests.store.postgres import Cluster
from tests.test_drain import FLOW_GAP_S
from tests.timing import CpuWaits

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "replicas-test-operator-key-0123456789abcdef"
GEMINI_KEYS = {"a": "AIza" + "A" * 35, "b": "AIza" + "B" * 35}  # which replica opened a Live session
HANDOFF_S = 5.0  # the stream started on B -> A has closed its early session (it would linger 30 s)
DRAINING = ["draining: shutting down, taking no new calls"]


@dataclass
class Deployment:
    a: Served
    b: Served
    gemini: FakeLiveServer
    receiver: WebhookReceiver
    engine: AsyncEngine  # the shared database, as the test reads it
    dsn: str  # the same, for asyncpg

    def opened_by(self, session: FakeLiveSession) -> Served:
        return {GEMINI_KEYS["a"]: self.a, GEMINI_KEYS["b"]: self.b}[session.api_key]

    async def next_session(self, replica: Served) -> FakeLiveSession:
        session = await self.gemini.next_session()
        assert self.opened_by(session) is replica
        return session

    async def report(self, call_sid: str, timeout: float = 15.0) -> Received:
        """The finished-call webhook of `call_sid`, once accepted."""
        async with asyncio.timeout(timeout):
            while not (found := [r for r in self.receiver.accepted if r.json()["data"]["call_sid"] == call_sid]):
                await asyncio.sleep(0.02)
        return found[0]

    async def outbox(self) -> dict[str, Any]:
        """Every webhook event, by call."""
        async with self.engine.connect() as connection:
            return {row.call_sid: row for row in await connection.execute(select(webhook_outbox))}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(
    tls: tuple[Any, str], postgres: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    admin = await asyncpg.connect(postgres.admin_dsn)
    try:
        await admin.execute("CREATE DATABASE replicas")
    finally:
        await admin.close()
    url = postgres.url("replicas")
    engine = make_engine(url)
    await migrate.upgrade(engine)  # `phonebot db upgrade`, once, before the replicas start
    server_ssl, ca_file = tls
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        gemini = await stack.enter_async_context(FakeLiveServer(server_ssl))
        receiver = WebhookReceiver()
        stack.push_async_callback(receiver.close)
        await receiver.up()
        replicas = []
        for name in ("a", "b"):
            env = {
                "DATABASE_URL": url,
                "TRANSCRIPT_WEBHOOK_URL": receiver.url,
                "TRANSCRIPT_WEBHOOK_SECRET": SECRET,
                "PHONEBOT_API_KEY": API_KEY,
                "PHONEBOT_DRAIN_S": "60",
                "GOOGLE_GEMINI_BASE_URL": gemini.base_url,
                "SSL_CERT_FILE": ca_file,
                "GOOGLE_API_KEY": GEMINI_KEYS[name],
            }
            served = await stack.enter_async_context(serve(tmp_path_factory.mktemp(f"replica-{name}"), **env))
            served.settings = make_settings(api_key=API_KEY)  # as the operator's API client sees it
            replicas.append(served)
        dsn = f"postgresql://postgres@127.0.0.1:{postgres.port}/replicas"
        yield Deployment(replicas[0], replicas[1], gemini, receiver, engine, dsn)


def inbound(n: int) -> dict[str, str]:
    """The voice webhook of the module's n-th call, from a number of its own."""
    return {**FORM, "CallSid": f"CA{n:032x}", "From": f"+1415555{n:04d}"}


async def answer(d: Deployment, replica: Served, form: dict[str, str]) -> tuple[FakeTwilioCall, FakeLiveSession]:
    """A call whose webhook and stream both reach `replica`: the stream claims its early session."""
    call = await dial(replica, form)
    session = await d.next_session(replica)
    await call.connect()
    return call, session


async def readiness(replica: Served) -> httpx.Response:
    async with httpx.AsyncClient(base_url=replica.http_url) as client:
        return await client.get("/readyz")


async def calls_active(replica: Served) -> float:
    async with httpx.AsyncClient(base_url=replica.http_url) as client:
        text = (await client.get("/metrics")).text
    found = re.search(r"^phonebot_calls_active (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


def turns(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(turn["role"], turn["text"]) for turn in data["turns"]]


def delivered_by(replica: Served) -> set[str]:
    """The calls whose report this replica delivered (its log)."""
    return {event["call_sid"] for event in replica.events() if event.get("event") == "webhook.delivered"}


async def test_a_call_answered_by_one_replica_is_streamed_by_the_other(deployment: Deployment) -> None:
    d, form = deployment, inbound(1)
    call = await dial(d.a, form, stream_to=d.b)
    early = await d.next_session(d.a)  # A opens the model session at the webhook, and asks for the greeting...
    await early.wait_for_text("Greet")
    assert await calls_active(d.a) == 1

    await call.connect()
    connected = time.monotonic()
    session = await d.next_session(d.b)  # ...but the stream reached B, which opens its own
    await session.wait_for_text("Greet")
    # A hears that the call runs elsewhere and lets go of its session and its place at once, not when
    # the session's 30 s are up: a model greeting nobody, and a place under PHONEBOT_MAX_CALLS.
    await asyncio.wait_for(early.closed.wait(), 10)
    let_go = time.monotonic() - connected
    assert let_go < HANDOFF_S, f"A closed its early session {let_go:.1f} s after the stream started on B"
    assert early.close_code == 1000  # closed by A, cleanly
    assert not early.audio  # it never carried the call
    assert (await calls_active(d.a), await calls_active(d.b)) == (0, 1)

    # The caller hears B's greeting, every byte; B's model hears the caller, every byte.
    hello, request = "Hello, thank you for calling Riverside Dental.", "I'd like to book a check-up."
    greeting = audio.speech(hello, 24000)
    spoken = codec.pcm_to_mulaw(audio.speech(request, 8000))
    spoken += b"\xff" * (-len(spoken) % 160)  # whole 20 ms frames, as Twilio sends: mu-law silence to the end
    await session.send_output_transcription(hello)
    await asyncio.gather(session.send_audio(greeting), call.send_audio(spoken, realtime=False))
    await session.send_turn_complete()
    at_phone = codec.pcm_to_mulaw(codec.Downsampler24to8().process(greeting))
    at_model = codec.Upsampler8to16().process(codec.mulaw_to_pcm(spoken))
    await call.wait_for_mark(f"0:{len(at_phone)}", timeout=10)  # the greeting has played to its end
    await session.wait_for_audio(len(at_model))
    await session.send_input_transcription(request)
    await asyncio.sleep(0.1)  # nothing more comes
    assert bytes(call.received_audio) == at_phone
    assert bytes(session.audio) == at_model
    assert not call.errors
    await call.stop()

    # One record, written by B, reported once, readable on either replica.
    data = (await d.report(form["CallSid"])).json()["data"]
    assert (data["from"], data["to"], data["direction"]) == (form["From"], form["To"], "inbound")  # A's webhook
    assert data["end_reason"] == "caller_hung_up"
    assert turns(data) == [("bot", hello), ("caller", request)]
    record = await d.a.call_record(form["CallSid"])
    assert (record["end_reason"], turns(record)) == ("caller_hung_up", turns(data))
    async with d.engine.connect() as connection:
        runner = await connection.scalar(select(calls.c.instance).where(calls.c.call_sid == form["CallSid"]))
    assert f"/{d.b.process.pid}/" in runner
    assert (await calls_active(d.a), await calls_active(d.b)) == (0, 0)


def next_open_day() -> date:
    business = load_business(DEFAULT_BUSINESS_FILE)
    day = business.local_date(datetime.now(UTC)) + timedelta(days=2)
    while business.is_closed(day):
        day += timedelta(days=1)
    return day


@contextlib.asynccontextmanager
async def holding_the_diary(d: Deployment, day: date) -> AsyncIterator[asyncpg.Connection]:
    """Hold the business day's booking lock (the one every booking of that day takes) until the block ends."""
    business = load_business(DEFAULT_BUSINESS_FILE)
    connection = await asyncpg.connect(d.dsn)
    try:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_key(f"{business.key}/{day.isoformat()}"))
            yield connection
    finally:
        await connection.close()


async def until_waiting(connection: asyncpg.Connection, waiters: int, timeout: float = 2.5) -> None:
    """Until `waiters` transactions wait for an advisory lock in this database (well within the
    service's lock_timeout of 3 s, past which a waiting booking gives up)."""
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    async with asyncio.timeout(timeout):
        while await connection.fetchval(query) < waiters:
            await asyncio.sleep(0.01)


async def test_two_callers_on_two_replicas_race_for_the_last_place(deployment: Deployment) -> None:
    d, ada, grace = deployment, inbound(2), inbound(3)
    on_a, model_a = await answer(d, d.a, ada)
    on_b, model_b = await answer(d, d.b, grace)
    day = next_open_day()
    free = await ask(model_a, "check_availability", service="check-up", date_from=day.isoformat())
    slot = {"service": "check-up", "date": day.isoformat(), "time": free["days"][0]["times"][0]}
    first = await ask(model_a, "book_appointment", **slot, customer_name="Ada Lovelace")
    assert first["booked"] is True  # one of the practice's two chairs

    # The last chair: both callers take it at once, each through the bot on their own replica. The
    # test holds the day's lock until both bookings wait on it, so that they truly run together.
    async with holding_the_diary(d, day) as diary:
        racing = [
            asyncio.create_task(ask(model_a, "book_appointment", **slot, customer_name="Ada Lovelace")),
            asyncio.create_task(ask(model_b, "book_appointment", **slot, customer_name="Grace Hopper")),
        ]
        await until_waiting(diary, 2)
    answers = await asyncio.gather(*racing)
    won = [n for n, answer in enumerate(answers) if answer.get("booked") is True]
    lost = [n for n, answer in enumerate(answers) if answer.get("error", {}).get("code") == "taken"]
    assert len(won) == 1 and len(lost) == 1, answers
    winner = (ada, grace)[won[0]]

    start = datetime.fromisoformat(f"{slot['date']}T{slot['time']}").replace(
        tzinfo=load_business(DEFAULT_BUSINESS_FILE).timezone
    )
    query = (
        select(bookings.c.call_sid, bookings.c.reference)
        .where(bookings.c.starts_at == start, bookings.c.status == "booked")
        .order_by(bookings.c.id)
    )
    async with d.engine.connect() as connection:
        held = (await connection.execute(query)).all()
    assert [row.call_sid for row in held] == [ada["CallSid"], winner["CallSid"]]  # two chairs, two bookings
    assert held[1].reference == answers[won[0]]["reference"]
    await asyncio.gather(on_a.stop(), on_b.stop())
    for form in (ada, grace):
        await d.report(form["CallSid"])


async def test_both_replicas_work_the_outbox_and_deliver_each_report_once(deployment: Deployment) -> None:
    d = deployment
    forms = [inbound(n) for n in range(4, 12)]
    # Eight calls end together on A. The first four deliveries take 4 s each to be answered, longer
    # than B's poll: B takes up what A cannot (A works four at a time), and nothing is sent twice.
    d.receiver.delays = [4.0] * 4
    assert IDLE_POLL_S < 4.0
    held = []
    for form in forms:
        call, session = await answer(d, d.a, form)
        await session.send_output_transcription(f"Hello, caller {form['From'][-4:]}.")
        held.append(call)
    await asyncio.sleep(0.2)
    await asyncio.gather(*(call.stop() for call in held))
    reports = {form["CallSid"]: await d.report(form["CallSid"], timeout=30) for form in forms}
    await asyncio.sleep(IDLE_POLL_S + 1.0)  # longer than a poll: a second delivery would have come by now

    ids = Counter(request.id for request in d.receiver.received)
    assert all(count == 1 for count in ids.values()), ids
    outbox = await d.outbox()
    for form in forms:
        event, report = outbox[form["CallSid"]], reports[form["CallSid"]]
        assert (event.status, event.attempts, event.id) == ("delivered", 1, report.id)
        verify(SECRET, report.headers, report.body)
        assert turns(report.json()["data"]) == [("bot", f"Hello, caller {form['From'][-4:]}.")]
    by_a, by_b = delivered_by(d.a), delivered_by(d.b)
    ours = {form["CallSid"] for form in forms}
    assert ours <= by_a | by_b and not by_a & by_b
    assert ours & by_a and ours & by_b, (ours & by_a, ours & by_b)  # both worked these eight


async def test_sigterm_drains_one_replica_while_the_other_takes_the_calls(deployment: Deployment) -> None:
    d, held_form = deployment, inbound(12)
    call, session = await answer(d, d.a, held_form)
    greeting = audio.tone(440, 24000, 0.3)
    await greet(session, greeting)
    await call.wait_for_audio(expected_mulaw_bytes(greeting))
    # Gaps are measured less the time the machine kept the test or either replica from a CPU (tests/timing.py).
    async with CpuWaits(d.a.process.pid, d.b.process.pid) as waits:
        stream = CallerStream(frames=150)
        talking = asyncio.create_task(stream.send(call, 150, realtime=True))  # 3 s of the caller
        await asyncio.sleep(0.5)
        signalled = time.monotonic()
        d.a.signal(signal.SIGTERM)

        # At once: A is unready and turns new calls away politely; B is ready.
        unready, ready = await readiness(d.a), await readiness(d.b)
        assert (unready.status_code, unready.json()["error"]["reasons"]) == (503, DRAINING)
        assert ready.status_code == 200, ready.text
        assert (await d.a.post_voice(inbound(13))).text == DRAINING_TWIML

        # The held call goes on: the bot answers while the caller is still talking...
        await session.send_input_transcription("Can I come in on Tuesday?")
        reply = audio.tone(660, 24000, 2.0)
        await session.send_output_transcription("Of course, take your time.")
        replying = asyncio.create_task(session.send_audio(reply, chunk_bytes=1920, realtime=True))
        # ...while B takes a new call, whose audio goes both ways, whole.
        new_call, new_session = await answer(d, d.b, inbound(14))
        taken = Intact(new_call, new_session)
        await taken.both_ways()
        await replying
        await session.send_turn_complete()
        await talking
        talked = time.monotonic()
        # Every frame of the held call, either way, arrives; none late.
        await session.wait_for_audio(stream.sent * PCM16K_PER_FRAME)
        assert bytes(session.audio) == stream.expected(0)
        assert sum(t > signalled for t in session.audio_times) >= 100  # 2.5 s of the caller's 3 s came after
        heard = expected_mulaw_bytes(greeting) + expected_mulaw_bytes(reply)
        await call.wait_for_audio(heard)
        await asyncio.sleep(0.05)
    assert len(call.received_audio) == heard
    replied = [t for t, _ in call.media_times if t > signalled]
    assert replied[-1] - replied[0] > 1.5  # the reply came as it was spoken, over its 2 s ...
    flows = ((session.audio_times, signalled, talked), (replied, replied[0], replied[-1]))  # ... with no pause
    for times, since, until in flows:
        gap, wall = waits.longest_gap(times, since, until)
        assert gap < FLOW_GAP_S, f"a pause of {wall:.3f} s, {wall - gap:.3f} s of it waiting for a CPU"
    assert d.a.running and not call.closed.is_set()

    await call.wait_for_mark(f"1:{expected_mulaw_bytes(reply)}", timeout=10)  # the reply has played to its end
    await call.stop()  # the caller hangs up: A's last call has ended, and A goes
    assert await d.a.exit_code(timeout=20) == 0
    # Its record is whole, in the database both share, and reported once.
    data = (await d.report(held_form["CallSid"])).json()["data"]
    assert data["end_reason"] == "caller_hung_up"
    assert turns(data) == [
        ("bot", "Hello, thank you for calling."),
        ("caller", "Can I come in on Tuesday?"),
        ("bot", "Of course, take your time."),
    ]
    record = await d.b.call_record(held_form["CallSid"])
    assert (record["end_reason"], turns(record)) == ("caller_hung_up", turns(data))

    # B goes on: its call carries audio both ways, whole, and it is still ready.
    await taken.both_ways()
    assert (await readiness(d.b)).status_code == 200
    await new_call.stop()
    await d.report(inbound(14)["CallSid"])
    await asyncio.sleep(IDLE_POLL_S + 1.0)
    # Over the whole module: every report delivered, each exactly once, and none for the call turned away.
    ids = Counter(request.id for request in d.receiver.received)
    assert all(count == 1 for count in ids.values()), ids
    outbox = await d.outbox()
    assert {event.id for event in outbox.values()} == set(ids)
    assert {(event.status, event.attempts) for event in outbox.values()} == {("delivered", 1)}
    assert inbound(13)["CallSid"] not in outbox
