"""The operator API's call records: the bearer token, the error format, cursor paging and filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from phonebot.store.engine import writing
from phonebot.store.tables import calls
from tests.conftest import Service
from tests.phone import FORM

API_KEY = "test-operator-key"
DAY = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"api_key": API_KEY}


async def add_calls(service: Service) -> list[str]:
    """Seven calls through the voice webhook, an hour apart from DAY on; returns their SIDs, oldest first."""
    sids = []
    for n in range(7):
        sid = f"CA{n:032d}"
        direction = "outbound-api" if n % 3 == 0 else "inbound"
        form = {**FORM, "CallSid": sid, "From": f"+1415555{n:04d}", "Direction": direction}
        assert (await service.post_voice(form)).status_code == 200
        async with writing(service.app.state.store.engine) as connection:
            await connection.execute(
                update(calls).where(calls.c.call_sid == sid).values(created_at=DAY + timedelta(hours=n))
            )
        sids.append(sid)
    return sids


async def listed(api: httpx.AsyncClient, **params: Any) -> list[str]:
    """Every page of `GET /calls` with `params`, followed by its cursors; the SIDs in order."""
    sids: list[str] = []
    cursor = None
    while True:
        response = await api.get("/calls", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        sids += [call["call_sid"] for call in page["calls"]]
        if (cursor := page["next_cursor"]) is None:
            return sids


async def test_without_the_right_bearer_token_it_is_401(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.http_url) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
            for path in ("/calls", "/calls/CA123"):
                response = await client.get(path, headers=headers)
                assert response.status_code == 401
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("settings_overrides", [{}], ids=["no-api-key"])
async def test_without_an_api_key_set_the_api_is_off(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.http_url) as client:
        response = await client.get("/calls", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 401
    assert "PHONEBOT_API_KEY is not set" in response.json()["error"]["message"]


async def test_an_unknown_call_is_404_in_the_error_format(service: Service) -> None:
    async with service.api() as api:
        response = await api.get("/calls/CA" + "9" * 32)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no call CA" + "9" * 32}}


async def test_pages_follow_the_cursor_newest_first(service: Service) -> None:
    sids = await add_calls(service)
    async with service.api() as api:
        assert await listed(api, limit=3) == sids[::-1]  # three pages of 3, 3, 1
        assert await listed(api, limit=200) == sids[::-1]
        first = (await api.get("/calls", params={"limit": 1})).json()["calls"][0]
    assert first["call_sid"] == sids[-1] and first["from"] == "+14155550006" and first["webhook"] is None
    assert first["started_at"] == (DAY + timedelta(hours=6)).isoformat(timespec="milliseconds")


async def test_filters_by_number_direction_and_time(service: Service) -> None:
    sids = await add_calls(service)
    async with service.api() as api:
        assert await listed(api, number="+14155550002") == [sids[2]]
        assert await listed(api, number="(415) 555-0002") == [sids[2]]  # as people write it: by its last digits
        assert await listed(api, direction="outbound") == [sids[6], sids[3], sids[0]]
        assert await listed(api, since="2026-11-30T14:00:00Z", until="2026-11-30T17:00:00+00:00") == sids[2:5][::-1]
        assert await listed(api, since="2026-12-01") == []
        assert await listed(api, direction="inbound", since="2026-11-30T13:00:00Z", limit=1) == [
            sids[5], sids[4], sids[2], sids[1]
        ]


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "201"}, {"limit": "ten"}, {"direction": "sideways"}, {"since": "yesterday"},
     {"until": "2026-13-01"}, {"cursor": "not-a-cursor"}],
)
async def test_bad_parameters_are_400_saying_why(service: Service, params: dict[str, str]) -> None:
    async with service.api() as api:
        response = await api.get("/calls", params=params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_request" and next(iter(params)) in error["message"]
