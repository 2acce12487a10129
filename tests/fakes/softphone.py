"""The softphone page's side of a web call, without a browser: a Media Streams peer (like Twilio,
so it is the fake Twilio caller underneath) that also takes the events phonebot sends web calls
alone (`turn`, `tool`, `ended`, `notice`), which a Twilio stream would count as errors.

The page itself is tested in a real Chromium (tests/web/test_softphone_page.py); this stands in
for it where the browser adds nothing (tokens, refusals, the record, the model unreachable).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx

from tests.fakes.twilio_media import FakeTwilioCall

LIVE_EVENTS = ("turn", "tool", "ended", "notice")


class FakeSoftphone(FakeTwilioCall):
    def __init__(self, ws_url: str, call_sid: str, **kwargs: Any) -> None:
        super().__init__(ws_url, signature=None, call_sid=call_sid, account_sid="", **kwargs)
        self.live: list[dict[str, Any]] = []  # phonebot's web-only events, in order
        self.token = ""

    @classmethod
    async def start(cls, http_url: str, api_key: str, **kwargs: Any) -> FakeSoftphone:
        """POST /web/calls as the page does, and a peer for the stream it was given (not yet connected)."""
        async with httpx.AsyncClient(base_url=http_url) as client:
            response = await client.post("/web/calls", headers={"Authorization": f"Bearer {api_key}"})
        assert response.status_code == 201, response.text
        body = response.json()
        ws_url = http_url.replace("http://", "ws://", 1) + f"/web/media/{body['token']}"
        phone = cls(ws_url, body["call_sid"], **kwargs)
        phone.token = body["token"]
        return phone

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [message[kind] for message in self.live if message["event"] == kind]

    async def wait_for_event(self, kind: str, timeout: float = 5, **fields: Any) -> dict[str, Any]:
        """The first `kind` event whose body has these fields (waiting for it)."""

        def match() -> dict[str, Any] | None:
            return next((e for e in self.events(kind) if all(e.get(k) == v for k, v in fields.items())), None)

        await self._changes.wait_until(lambda: match() is not None, timeout, f"a {kind} event like {fields}")
        found = match()
        assert found is not None
        return found

    async def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):
                message = json.loads(raw)
                if isinstance(message, dict) and message.get("event") in LIVE_EVENTS:
                    self.live.append(message)
                    return
        await super()._handle(raw)
