"""Twilio's REST API, for what a media stream cannot do itself: placing outbound calls, transfers,
hanging up.

The service talks to Twilio through one twilio `Client` on the SDK's own asyncio HTTP client
(aiohttp): a request costs no thread, and its connections are pooled. Every request is bounded
by `TIMEOUT_S` (the SDK's async client sets none). `client()` is the SDK's synchronous client, for
commands run from a terminal. What goes wrong is translated here, at the border, into
`TwilioRefused` (Twilio answered with an error: its status, code and message) or
`TwilioUnreachable` (no answer: refused, reset, timed out), so nothing past this module knows the
SDK's or aiohttp's exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http import AsyncHttpClient, HttpClient
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from phonebot.settings import MissingSetting, Settings

TIMEOUT_S = 10.0  # Twilio answers in well under a second; an API request waits no longer than this
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")  # every change a call record follows

T = TypeVar("T")


class TwilioRefused(Exception):
    """Twilio answered with an error: HTTP `status`, Twilio's `code` (e.g. 21211) and `message`."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    @property
    def more_info(self) -> str:
        return f"https://www.twilio.com/docs/errors/{self.code}"


class TwilioUnreachable(Exception):
    """No answer from Twilio. `timed_out`: it may have done what was asked, or not."""

    def __init__(self, reason: str, *, timed_out: bool) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class CreatedCall:
    call_sid: str
    status: str  # Twilio's CallStatus: queued, normally


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """What Twilio is asked to do for an outbound call."""

    to: str
    from_: str
    twiml: str  # run when the call is answered: the media stream
    status_callback: str  # POST /twilio/status
    amd_callback: str  # POST /twilio/amd: asynchronous answering-machine detection


class TwilioRest:
    def __init__(self, settings: Settings, timeout_s: float | None = None) -> None:
        self._settings = settings
        self._timeout_s = timeout_s  # the synchronous client's, per request; None: the twilio client's own (none)
        self._client: Client | None = None
        self._async_client: Client | None = None

    def client(self) -> Client:
        """The synchronous client (commands run from a terminal)."""
        if self._client is None:
            self._client = self._make_client(TwilioHttpClient(timeout=self._timeout_s))
        return self._client

    def _aio(self) -> Client:
        """The asynchronous client: made on first use, inside the event loop its HTTP client belongs to."""
        if self._async_client is None:
            self._async_client = self._make_client(AsyncTwilioHttpClient())
        return self._async_client

    def _make_client(self, http_client: HttpClient | AsyncHttpClient) -> Client:
        if self._settings.twilio_account_sid is None:
            raise MissingSetting("TWILIO_ACCOUNT_SID", "to use Twilio's REST API")
        client = Client(self._settings.twilio_account_sid, self._settings.require_auth_token(), http_client=http_client)
        if self._settings.twilio_api_base_url:
            client.api.base_url = self._settings.twilio_api_base_url.rstrip("/")
        return client

    async def create_call(self, call: OutboundCall) -> CreatedCall:
        """Place an outbound call, with status callbacks and Twilio's asynchronous answering-machine
        detection (DetectMessageEnd: told after the greeting and beep, while the call goes on)."""
        created = await _bounded(
            self._aio().calls.create_async(
                to=call.to,
                from_=call.from_,
                twiml=call.twiml,
                status_callback=call.status_callback,
                status_callback_event=list(STATUS_EVENTS),
                status_callback_method="POST",
                machine_detection="DetectMessageEnd",
                async_amd="true",
                async_amd_status_callback=call.amd_callback,
                async_amd_status_callback_method="POST",
            )
        )
        return CreatedCall(str(created.sid), str(created.status))

    async def hang_up(self, call_sid: str) -> None:
        """End a call, whether it is still ringing or in progress."""
        await _bounded(self._aio().calls(call_sid).update_async(status="completed"))

    async def redirect(self, call_sid: str, say: str | None, dial: str | None) -> None:
        """Move a live call out of its stream (which then stops): say something, then dial or hang up."""
        response = VoiceResponse()
        if say:
            response.say(say)
        if dial:
            response.dial(dial)
        else:
            response.hangup()
        await _bounded(self._aio().calls(call_sid).update_async(twiml=str(response)))

    async def aclose(self) -> None:
        if self._async_client is not None:
            http_client, self._async_client = self._async_client.http_client, None
            if isinstance(http_client, AsyncTwilioHttpClient):
                await http_client.close()


async def _bounded(request: Awaitable[T]) -> T:
    """The request's result, or its failure as TwilioRefused / TwilioUnreachable."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            return await request
    except TimeoutError:
        raise TwilioUnreachable(f"no answer from Twilio within {TIMEOUT_S:g} s", timed_out=True) from None
    except TwilioRestException as error:
        # The SDK prefixes Twilio's message with what it was doing ("Unable to create record: ").
        _, colon, message = error.msg.partition(": ")
        raise TwilioRefused(error.status, int(error.code or error.status), message if colon else error.msg) from None
    except TwilioServiceException as error:  # the RFC 9457 shape of Twilio's newer APIs
        raise TwilioRefused(error.status, error.code, error.detail or error.title) from None
    except (aiohttp.ClientError, OSError) as error:
        raise TwilioUnreachable(f"Twilio cannot be reached: {error}", timed_out=False) from None
