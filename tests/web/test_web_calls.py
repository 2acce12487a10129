"""Web calls without a browser: `POST /web/calls`, its tokens, and a web call run through the same
code as a phone call, by a Media Streams peer standing in for the page (tests/fakes/softphone.py).
The page itself, in a real Chromium: test_softphone_page.py."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from phonebot.call.session import APOLOGY
from phonebot.store.calls import token_hash
from phonebot.store.engine import writing
from phonebot.store.tables import stream_tokens
from phonebot.web import softphone
from tests.conftest import PUBLIC_URL, Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.softphone import FakeSoftphone
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver
from tests.phone import answer

API_KEY = "test-operator-key"
TRANSFER_TO = "+14155550100"


@pytest.fixture
def settings_overrides(webhook_receiver: WebhookReceiver) -> dict[str, Any]:
    return {
        "api_key": API_KEY,
        "transfer_number": TRANSFER_TO,
        "transcript_webhook_url": webhook_receiver.url,
        "transcript_webhook_secret": SECRET,
    }


async def post_web_call(service: Service, key: str | None = API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}".strip()} if key is not None else {}
    async with httpx.AsyncClient(base_url=service.http_url) as client:
        return await client.post("/web/calls", headers=headers)


async def ended_record(service: Service, call_sid: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while (record := await service.call_record(call_sid))["ended_at"] is None:
            await asyncio.sleep(0.02)
    return record


async def web_call(service: Service) -> FakeSoftphone:
    return await FakeSoftphone.start(service.http_url, API_KEY)


async def test_only_a_holder_of_the_api_key_starts_a_web_call(service: Service, gemini: FakeLiveServer) -> None:
    for key in (None, "wrong", API_KEY + "x", " "):
        response = await post_web_call(service, key)
        assert response.status_code == 401, key
        assert response.json()["error"]["code"] == "unauthorized"
        assert "token" not in response.text
    assert service.calls.admission.count == 0 and gemini.sessions == []


@pytest.mark.parametrize("settings_overrides", [{}], ids=["no-api-key"])
async def test_without_an_api_key_set_there_are_no_web_calls(service: Service) -> None:
    response = await post_web_call(service, "anything")
    assert response.status_code == 401
    assert "PHONEBOT_API_KEY is not set" in response.json()["error"]["message"]


async def test_a_web_call_gets_a_new_call_id_and_a_short_lived_token_bound_to_it(
    service: Service, gemini: FakeLiveServer
) -> None:
    before = datetime.now(UTC)
    first, second = await post_web_call(service), await post_web_call(service)
    assert first.status_code == second.status_code == 201
    assert first.headers["cache-control"] == "no-store"
    body = first.json()
    assert set(body) == {"call_sid", "token", "media_url", "expires_at"}
    assert re.fullmatch(r"WC[0-9a-f]{32}", body["call_sid"])
    assert body["call_sid"] != second.json()["call_sid"] and body["token"] != second.json()["token"]
    assert body["media_url"] == "wss://" + PUBLIC_URL.removeprefix("https://") + f"/web/media/{body['token']}"
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(0) < expires - before <= timedelta(seconds=softphone.TOKEN_TTL_S + 1)
    call = await service.app.state.store.get(body["call_sid"])
    assert (call.direction, call.from_number, call.to_number, call.stream_started_at) == ("web", "", "", None)
    # Held under the cap from now on, like a phone call from its webhook; no model session yet.
    assert service.calls.admission.count == 2 and body["call_sid"] in service.calls.admission
    assert gemini.sessions == []


@pytest.mark.parametrize("settings_overrides", [{"api_key": API_KEY, "public_url": None}], ids=["no-public-url"])
async def test_without_a_public_url_the_media_url_is_where_the_request_came_in(service: Service) -> None:
    body = (await post_web_call(service)).json()
    assert body["media_url"] == f"ws://127.0.0.1:{service.port}/web/media/{body['token']}"


async def test_forged_replayed_expired_and_foreign_tokens_are_refused_before_any_model_session(
    service: Service, gemini: FakeLiveServer
) -> None:
    used = await web_call(service)
    async with used:
        session = await gemini.next_session()
        await session.wait_for_text("Greet")
    await used.closed.wait()

    async def refused(phone: FakeSoftphone) -> None:
        await phone.connect()
        await asyncio.wait_for(phone.closed.wait(), 5)
        assert phone.close_code == 1008, phone.close_reason

    base = service.http_url.replace("http://", "ws://")
    fresh = await web_call(service)
    # Forged: a token phonebot never issued, for a real call.
    await refused(FakeSoftphone(f"{base}/web/media/{'x' * 43}", fresh.call_sid))
    # Replayed: the token of the call that has been and gone.
    await refused(FakeSoftphone(used.ws_url, used.call_sid))
    # Foreign: a good token, but the stream says it is another call.
    await refused(FakeSoftphone(fresh.ws_url, "WC" + "0" * 32))
    # Expired: a good token, a minute too late.
    late = await web_call(service)
    async with writing(service.app.state.store.engine) as connection:
        await connection.execute(
            update(stream_tokens)
            .where(stream_tokens.c.token_hash == token_hash(late.token))
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    await refused(late)
    await asyncio.sleep(0.2)
    assert len(gemini.sessions) == 1  # the one call that was let in
    # The foreign attempt did not use up the fresh token: its own call still gets in.
    async with fresh:
        await gemini.next_session()
    assert len(gemini.sessions) == 2


async def test_a_web_call_runs_like_a_phone_call_and_its_page_sees_the_transcript(
    service: Service, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver
) -> None:
    phone = await web_call(service)
    await phone.connect()
    session = await gemini.next_session()
    # The model is told it is a browser call, and is given no transfer_call (there is no phone line).
    assert "web softphone" in session.system_instruction_text
    declared = [d["name"] for tool in session.setup["tools"] for d in tool["functionDeclarations"]]
    assert "transfer_call" not in declared and "end_call" in declared
    await session.wait_for_text("Greet")
    await session.send_output_transcription("Hello, how can")
    await session.send_output_transcription(" I help?")
    await session.send_audio(bytes(4800))
    await session.send_turn_complete()
    await phone.wait_for_event("turn", role="bot", text="Hello, how can", final=False)
    await phone.wait_for_event("turn", role="bot", text="Hello, how can I help?", final=False)
    await phone.wait_for_mark("0:800")  # heard whole: the caller answers
    await session.send_input_transcription("Is Tuesday free?")
    await phone.wait_for_event("turn", role="bot", text="Hello, how can I help?", final=True)
    await phone.wait_for_event("turn", role="caller", text="Is Tuesday free?", final=False)
    await session.send_tool_call([{"id": "t1", "name": "end_call", "args": {"reason": "done"}}])
    started = await phone.wait_for_event("tool", name="end_call", done=False)
    finished = await phone.wait_for_event("tool", name="end_call", done=True)
    assert started["seq"] == finished["seq"] and finished["ok"] and finished["result"]["ok"]
    await session.send_output_transcription("Goodbye!")
    await session.send_audio(bytes(4800))
    await session.send_turn_complete()
    await asyncio.wait_for(phone.closed.wait(), 10)
    assert (await phone.wait_for_event("ended"))["reason"] == "bot_ended"
    assert phone.errors == []  # and the Media Streams side was exactly Twilio's

    reports = await webhook_receiver.wait_for(1)
    data = reports[0].json()["data"]
    assert data["call_sid"] == phone.call_sid and data["direction"] == "web" and data["end_reason"] == "bot_ended"
    assert [(t["role"], t["text"]) for t in data["turns"]] == [
        ("bot", "Hello, how can I help?"),
        ("caller", "Is Tuesday free?"),
        ("bot", "Goodbye!"),
    ]
    assert [tool["name"] for tool in data["tool_calls"]] == ["end_call"]
    record = await ended_record(service, phone.call_sid)
    assert record["direction"] == "web" and record["end_reason"] == "bot_ended"


async def test_a_phone_call_gets_none_of_the_web_events_and_keeps_transfer_call(
    service: Service, gemini: FakeLiveServer
) -> None:
    call, session = await answer(service, gemini)
    declared = [d["name"] for tool in session.setup["tools"] for d in tool["functionDeclarations"]]
    assert "transfer_call" in declared
    await session.send_output_transcription("Hello!")
    await session.send_audio(bytes(4800))
    await session.send_turn_complete()
    await call.wait_for_mark("0:800")
    await session.send_input_transcription("Hi.")
    await session.send_tool_call([{"id": "t1", "name": "no_such_tool", "args": {}}])
    async with asyncio.timeout(5):
        while not session.tool_responses:
            await asyncio.sleep(0.01)
    await call.stop()
    record = await ended_record(service, call.call_sid)
    assert [turn["text"] for turn in record["turns"]] == ["Hello!", "Hi."] and len(record["tool_calls"]) == 1
    assert call.errors == []
    assert {message["event"] for message in call.messages} <= {"media", "mark", "clear"}


async def test_when_the_model_cannot_be_reached_the_page_is_told_what_a_caller_would_hear(
    service: Service, gemini: FakeLiveServer, webhook_receiver: WebhookReceiver
) -> None:
    gemini.refuse_connections = True
    phone = await web_call(service)
    await phone.connect()
    notice = await phone.wait_for_event("notice", timeout=15)
    assert notice["text"] == APOLOGY
    assert (await phone.wait_for_event("ended"))["reason"] == "model_unreachable"
    await asyncio.wait_for(phone.closed.wait(), 5)
    data = (await webhook_receiver.wait_for(1))[0].json()["data"]
    assert (data["direction"], data["end_reason"]) == ("web", "model_unreachable")
    assert service.calls.admission.count == 0


@pytest.mark.parametrize("settings_overrides", [{"api_key": API_KEY, "max_calls": 1}], ids=["one-line"])
async def test_web_calls_count_against_the_cap_and_are_turned_away_when_full_or_draining(
    service: Service, gemini: FakeLiveServer
) -> None:
    assert (await post_web_call(service)).status_code == 201
    full = await post_web_call(service)
    assert full.status_code == 429 and full.json()["error"]["code"] == "full" and full.headers["retry-after"] == "30"
    service.calls.admission.drain()
    draining = await post_web_call(service)
    assert draining.status_code == 503 and draining.json()["error"]["code"] == "draining"
    assert gemini.sessions == []


async def test_the_page_and_its_assets_are_served_from_the_package(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.http_url) as client:
        page = await client.get("/phone")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        for asset in re.findall(r'(?:src|href)="(phone/assets/[\w.]+)"', page.text):
            response = await client.get("/" + asset)
            assert response.status_code == 200, asset
        for name, kind in (("phone.js", "javascript"), ("worklet.js", "javascript"), ("phone.css", "css")):
            response = await client.get(f"/phone/assets/{name}")
            assert response.status_code == 200 and kind in response.headers["content-type"]
        assert (await client.get("/phone/assets/nothing.js")).status_code == 404
        assert (await client.get("/phone/")).status_code in (307, 308)
