"""Twilio's REST API, for what a media stream cannot do itself (transfers; outbound calls later)."""

from __future__ import annotations

import asyncio

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from phonebot.settings import MissingSetting, Settings


class TwilioRest:
    def __init__(self, settings: Settings, timeout_s: float | None = None) -> None:
        self._settings = settings
        self._timeout_s = timeout_s  # per request; None: the twilio client's own (none)
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            if self._settings.twilio_account_sid is None:
                raise MissingSetting("TWILIO_ACCOUNT_SID", "to use Twilio's REST API")
            http = TwilioHttpClient(timeout=self._timeout_s)
            client = Client(self._settings.twilio_account_sid, self._settings.require_auth_token(), http_client=http)
            if self._settings.twilio_api_base_url:
                client.api.base_url = self._settings.twilio_api_base_url
            self._client = client
        return self._client

    async def redirect(self, call_sid: str, say: str | None, dial: str | None) -> None:
        """Move a live call out of its stream (which then stops): say something, then dial or hang up."""
        response = VoiceResponse()
        if say:
            response.say(say)
        if dial:
            response.dial(dial)
        else:
            response.hangup()
        twiml = str(response)
        # The twilio client is synchronous; a transfer is rare enough for a worker thread.
        await asyncio.to_thread(lambda: self.client().calls(call_sid).update(twiml=twiml))
