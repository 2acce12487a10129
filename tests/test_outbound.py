"""POST /calls: outbound calls placed through the real twilio client (on its asyncio HTTP client)
against the fake Twilio REST API, carried to their media stream, with the model session opened
while the phone rings; every way placing one can fail, answered in the API's error shape with
Twilio's code and message, and nothing of it left behind."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from phonebot.gemini import live
from phonebot.store.tables import calls, stream_tokens
from phonebot.telephony import rest
from tests import audio
from tests.conftest import PUBLIC_URL, Service, make_settings, running
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver
from tests.phone import (
    API_KEY,
    BUSINESS,
    CALLEE,
    FORM,
    answered_with_greeting,
    expected_mulaw_bytes,
    outbound_settings,
    pick_up,
    place,
    placed,
    post_amd,
    stream_url,
)

INSTRUCTIONS = "You are calling Ada Lovelace to remind her of her haircut tomorrow at 10:00. Offer to move it."
METADATA = {"customer_id": "cus_8812", "campaign": "reminders", "attempt": 2, "tags": ["vip"]}


@pytest.fixture
def settings_overrides(twilio_rest: FakeTwilioRest, webhook_receiver: WebhookReceiver) -> dict[str, Any]:
    return outbound_settings(
        twilio_rest, transcript_webhook_url=webhook_receiver.url, transcript_webhook_secret=SECRET
    )


async def leftovers(service: Service) -> dict[str, int]:
    """What the database holds of calls and stream tokens."""
    async with service.app.state.store.engine.connect() as connection:
        return {
            "calls": await connection.scalar(select(func.count()).select_from(calls)),
            "tokens": await connection.scalar(select(func.count()).select_from(stream_tokens)),
        }


async def test_twilio_is_asked_for_a_streamed_call_with_status_callbacks_and_answering_machine_detection(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest
) -> None:
    created = await placed(service, twilio_rest, instructions=INSTRUCTIONS, metadata=METADATA)
    assert (created.field("To"), created.field("From")) == (CALLEE, BUSINESS)
    twiml = created.field("Twiml")
    url = stream_url(twiml)
    assert url.startswith("wss://bot.example.test/twilio/media/") and len(url.rsplit("/", 1)[1]) >= 40
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url=')
    assert created.field("StatusCallback") == f"{PUBLIC_URL}/twilio/status"
    assert created.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert created.field("StatusCallbackMethod") == "POST"
    assert created.field("MachineDetection") == "DetectMessageEnd"
    assert created.field("AsyncAmd") == "true"
    assert created.field("AsyncAmdStatusCallback") == f"{PUBLIC_URL}/twilio/amd"
    assert created.field("AsyncAmdStatusCallbackMethod") == "POST"
    # The model session opens while the phone rings, with this call's instructions, and the greeting is asked for.
    session = await gemini.next_session()
    instructions = session.system_instruction_text
    assert INSTRUCTIONS in instructions and f"an outbound phone call to {CALLEE}" in instructions
    await session.wait_for_text("Greet")
    assert created.sid in service.calls.admission  # it counts against PHONEBOT_MAX_CALLS from now
    record = await service.call_record(created.sid)
    numbers = (record["direction"], record["from"], record["to"], record["status"])
    assert numbers == ("outbound", BUSINESS, CALLEE, "queued")
    assert (record["metadata"], record["instructions"], record["ended_at"]) == (METADATA, INSTRUCTIONS, None)


async def test_a_call_not_answered_lets_its_session_and_place_go_and_is_reported(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, webhook_receiver: WebhookReceiver
) -> None:
    created = await placed(service, twilio_rest, metadata=METADATA)
    session = await gemini.next_session()
    form = {**FORM, "CallSid": created.sid, "From": BUSINESS, "To": CALLEE, "Direction": "outbound-api"}
    assert (await service.post_status({**form, "CallStatus": "ringing"})).status_code == 204
    assert (await service.post_status({**form, "CallStatus": "no-answer"})).status_code == 204
    await asyncio.wait_for(session.closed.wait(), 2)
    assert created.sid not in service.calls.admission
    [delivered] = await webhook_receiver.wait_for(1)
    data = delivered.json()["data"]
    reported = (data["direction"], data["from"], data["to"], data["end_reason"])
    assert reported == ("outbound", BUSINESS, CALLEE, "no_answer")
    assert data["metadata"] == METADATA


async def test_a_person_answering_hears_the_bot_at_once_and_the_report_says_outbound_with_its_metadata(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, webhook_receiver: WebhookReceiver
) -> None:
    call, session, created, greeting = await answered_with_greeting(
        service, gemini, twilio_rest, instructions=INSTRUCTIONS, metadata=METADATA
    )
    picked_up = time.monotonic()  # the stream has just started
    # No detection has answered yet, and none is waited for: the greeting plays the moment the stream starts.
    await call.wait_for_audio(expected_mulaw_bytes(greeting), timeout=2)
    assert call.media_times[0][0] - picked_up < 0.5, "the greeting waited"
    assert len(gemini.sessions) == 1  # the stream took the session opened while the phone rang
    assert (await post_amd(service, created.sid, "human")).status_code == 204
    # The conversation goes on untouched: the caller is heard, the bot answers, its instructions unchanged.
    await call.send_audio(bytes(range(256)) * 5)
    await session.wait_for_audio(1280 * 2 * 2)  # 10 frames of 8 kHz, as 16 kHz PCM
    reply = audio.tone(660, 24000, 0.3)
    await session.send_audio(reply)
    await session.send_turn_complete()
    await call.wait_for_audio(expected_mulaw_bytes(greeting) + expected_mulaw_bytes(reply))
    await asyncio.sleep(0.6)  # past a look at the database for the verdict
    assert not session.system_instructions and not [text for text in session.texts if "beep" in text]
    assert not call.closed.is_set() and not call.clears
    await call.stop()
    [delivered] = await webhook_receiver.wait_for(1)
    data = delivered.json()["data"]
    reported = (data["call_sid"], data["direction"], data["from"], data["to"])
    assert reported == (created.sid, "outbound", BUSINESS, CALLEE)
    assert (data["answered_by"], data["end_reason"], data["metadata"]) == ("human", "caller_hung_up", METADATA)
    assert (data["turns"][0]["role"], data["turns"][0]["text"]) == ("bot", "Hello, this is Bella's salon calling.")


async def test_a_long_ring_keeps_the_session_and_its_greeting_ready(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The greeting waits unread while the phone rings: its messages must not stop the session from
    # reading the keepalive's pongs (at websockets' default queue of 16 it died after ping interval
    # + timeout, 30 s in production; here shortened to 1 + 2 s).
    monkeypatch.setattr(live, "KEEPALIVE", {**live.KEEPALIVE, "ping_interval": 1.0, "ping_timeout": 2.0})
    created = await placed(service, twilio_rest)
    session = await gemini.next_session()
    await session.wait_for_text("Greet")
    greeting = audio.tone(440, 24000, 3.0)
    await session.send_audio(greeting, chunk_bytes=1920)  # 75 messages
    await session.send_turn_complete()
    await asyncio.sleep(4.5)  # ringing
    assert not session.closed.is_set()
    call = pick_up(service, created)
    await call.connect()
    await call.wait_for_audio(expected_mulaw_bytes(greeting))
    assert len(gemini.sessions) == 1 and not session.closed.is_set()
    await call.stop()


async def test_a_stream_that_comes_before_twilios_answer_waits_for_the_call_to_be_recorded(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest
) -> None:
    twilio_rest.delay_s = 0.8  # Twilio's answer is slow to come back; the callee answers first
    request = asyncio.create_task(place(service, to=CALLEE, instructions=INSTRUCTIONS))
    while not twilio_rest.received:
        await asyncio.sleep(0.01)
    early = twilio_rest.received[0]
    call = pick_up(service, early)
    await call.connect()  # before phonebot has heard of a call named early.sid
    response = await request
    assert response.status_code == 201 and response.json()["call_sid"] == early.sid
    session = await gemini.next_session()
    assert INSTRUCTIONS in session.system_instruction_text
    await session.wait_for_text("Greet")
    greeting = audio.tone(440, 24000, 0.2)
    await session.send_audio(greeting)
    await session.send_turn_complete()
    await call.wait_for_audio(expected_mulaw_bytes(greeting))
    assert not call.closed.is_set() and len(gemini.sessions) == 1
    await call.stop()


async def test_the_api_key_is_required(service: Service, twilio_rest: FakeTwilioRest) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        async with httpx.AsyncClient(base_url=service.http_url, headers=headers) as client:
            response = await client.post("/calls", json={"to": CALLEE})
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert not twilio_rest.received


TOO_LONG = "x" * 4001


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"to": "4155550123"}, "E.164"),
        ({"to": "+1 415 555 0123"}, "E.164"),
        ({"to": "+0123456789"}, "E.164"),
        ({}, "E.164"),
        ({"to": 14155550123}, "E.164"),
        ({"to": BUSINESS}, "TWILIO_PHONE_NUMBER"),
        ({"to": CALLEE, "instructions": 7}, "instructions must be a string"),
        ({"to": CALLEE, "instructions": TOO_LONG}, "at most 4000"),
        ({"to": CALLEE, "metadata": ["a"]}, "metadata must be a JSON object"),
        ({"to": CALLEE, "metadata": {"blob": "y" * 9000}}, "at most 8192"),
        ({"to": CALLEE, "instruction": "typo"}, "unknown field(s) instruction"),
        ([CALLEE], "JSON object"),
        ("not json", "must be JSON"),
        ("[" * 100_000, "must be JSON"),
    ],
)
async def test_a_bad_order_is_a_400_saying_what_is_wrong_and_reaches_nobody(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, body: Any, complaint: str
) -> None:
    async with service.api() as api:
        if isinstance(body, str):
            response = await api.post("/calls", content=body, headers={"content-type": "application/json"})
        else:
            response = await api.post("/calls", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and complaint in error["message"], error
    assert not twilio_rest.received and not gemini.sessions
    assert await leftovers(service) == {"calls": 0, "tokens": 0}
    assert service.calls.admission.count == 0


UNVERIFIED = "+14155550142"


@pytest.mark.parametrize(
    ("case", "status", "code", "message"),
    [
        ("invalid_to", 400, 21211, "Invalid 'To' Phone Number: +15005550001"),
        ("unverified_from", 400, 21210, "The source phone number provided, +14155550142, is not yet verified"),
        ("bad_credentials", 502, 20003, "Twilio refused phonebot's TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN"),
        ("twilio_500", 502, 20500, "An internal server error has occurred"),
        ("twilio_503", 503, 20503, "Service unavailable"),
    ],
)
async def test_twilios_errors_are_answered_with_its_code_and_message_and_leave_nothing(
    gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, case: str, status: int, code: int, message: str
) -> None:
    overrides = outbound_settings(twilio_rest)
    to = CALLEE
    if case == "invalid_to":
        to = "+15005550001"
        twilio_rest.invalid_numbers.add(to)
    elif case == "unverified_from":
        overrides["twilio_phone_number"] = UNVERIFIED
    elif case == "bad_credentials":
        overrides["twilio_auth_token"] = "f" * 32  # signs nothing here; Twilio refuses it
    elif case == "twilio_500":
        twilio_rest.outage = (500, 20500, "An internal server error has occurred")
    else:
        twilio_rest.outage = (503, 20503, "Service unavailable")
    async with running(make_settings(**overrides)) as service:
        response = await place(service, to=to, metadata=METADATA)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["message"].startswith(message), error
        assert error["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
        assert ("retry-after" in response.headers) == (status == 503)
        await assert_nothing_left(service, gemini)


async def assert_nothing_left(service: Service, gemini: FakeLiveServer) -> None:
    """No record of a call that never existed, no token that could open a stream, no model session, no place held."""
    assert await leftovers(service) == {"calls": 0, "tokens": 0}
    async with service.api() as api:
        assert (await api.get("/calls")).json()["calls"] == []
    assert service.calls.admission.count == 0
    await asyncio.sleep(0.1)
    assert not gemini.sessions


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("case", ["timeout", "connection_refused"])
async def test_twilio_out_of_reach_is_a_503_and_leaves_nothing(
    gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    overrides = outbound_settings(twilio_rest)
    if case == "timeout":
        monkeypatch.setattr(rest, "TIMEOUT_S", 0.3)
        twilio_rest.delay_s = 2.0
    else:
        overrides["twilio_api_base_url"] = f"http://127.0.0.1:{closed_port()}"
    async with running(make_settings(**overrides)) as service:
        started = time.monotonic()
        response = await place(service, to=CALLEE)
        assert time.monotonic() - started < 1.5
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == f"twilio_{'timeout' if case == 'timeout' else 'unreachable'}"
        assert response.headers["retry-after"] == "5"
        await assert_nothing_left(service, gemini)


async def rename_table(database: str, table: str, to: str) -> None:
    """In a thread: on the event loop the service runs on, waiting for its lock would stop the
    service's own transaction from ending (a deadlock, until SQLite's 5 s busy timeout)."""

    def rename() -> None:
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
            connection.execute(f"ALTER TABLE {table} RENAME TO {to}")

    await asyncio.to_thread(rename)


async def test_a_call_twilio_made_but_the_database_could_not_record_is_hung_up(
    service: Service, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest
) -> None:
    twilio_rest.held = asyncio.Event()  # Twilio answers once the database has failed
    request = asyncio.create_task(place(service, to=CALLEE))
    while not twilio_rest.received:
        await asyncio.sleep(0.01)
    database = service.settings.database_url.removeprefix("sqlite+aiosqlite:///")
    await rename_table(database, "calls", "calls_away")  # the database fails while Twilio creates the call
    twilio_rest.held.set()
    response = await request
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    [created] = twilio_rest.created
    assert twilio_rest.updates(created.sid) == [{"Status": "completed"}]  # hung up through Twilio
    session = await gemini.next_session()  # it had started opening while the phone rang: closed again
    await asyncio.wait_for(session.closed.wait(), 2)
    assert service.calls.admission.count == 0
    await rename_table(database, "calls_away", "calls")
    assert await leftovers(service) == {"calls": 0, "tokens": 1}  # the token was never bound: it opens nothing


async def test_at_capacity_the_api_answers_429_and_while_draining_503(
    gemini: FakeLiveServer, twilio_rest: FakeTwilioRest
) -> None:
    async with running(make_settings(**outbound_settings(twilio_rest, max_calls=1))) as service:
        first = await place(service, to=CALLEE)
        assert first.status_code == 201
        busy = await service.post_voice(FORM)  # the outbound call holds the one place: an inbound call is turned away
        assert "<Stream" not in busy.text and "<Say>" in busy.text
        full = await place(service, to="+14155550177")
        assert full.status_code == 429 and full.headers["retry-after"] == "30"
        assert full.json()["error"]["code"] == "full"
        assert len(twilio_rest.received) == 1
        service.calls.admission.drain()
        draining = await place(service, to="+14155550177")
        assert draining.status_code == 503 and draining.json()["error"]["code"] == "draining"
        assert len(twilio_rest.received) == 1
