"""Twilio's voice webhook: a signed POST per inbound call, answered with TwiML.

The call is recorded as the signed request describes it, and the TwiML connects it to a media
stream URL with a token of its own (`phonebot.store.calls`): the stream, on whichever replica it
lands, gets in once, for this call only, and takes the numbers from the record, not from itself.
A replica that is full (PHONEBOT_MAX_CALLS) or shutting down answers a short `<Say>` and hangs up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from twilio.twiml.voice_response import Connect, VoiceResponse

from phonebot.call.admission import Refusal
from phonebot.call.ports import CallInfo, Direction
from phonebot.errors import error_response
from phonebot.settings import Settings
from phonebot.store.calls import CallStore
from phonebot.telephony.signature import twilio_form

log = structlog.get_logger(__name__)

UNAVAILABLE = "Sorry, we can't take your call right now. Please try again later."
TURNED_AWAY = {
    Refusal.FULL: "Sorry, all our lines are busy right now. Please call again in a few minutes.",
    Refusal.DRAINING: "Sorry, we can't take your call on this line just now. Please call again in a moment.",
}


class Admitter(Protocol):
    """The calls this replica holds (`Calls`): the webhook asks it to take each new call."""

    def admit(self, info: CallInfo) -> Refusal | None: ...

    async def release(self, call_sid: str, refused: Refusal | None = None) -> None: ...
STREAM_TOKEN_TTL_S = 300.0  # Twilio opens the stream about a second after this answers


def media_stream_url(settings: Settings, token: str) -> str:
    """The `wss://` URL of one call's stream, as Twilio is told it and signs it."""
    return f"{settings.stream_url}/{token}"


def say_and_hang_up(text: str) -> str:
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)


def stream_twiml(stream_url: str, info: CallInfo) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in (("from", info.from_number), ("to", info.to_number), ("direction", info.direction)):
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def voice_endpoint(
    settings: Settings, store: CallStore, calls: Admitter
) -> Callable[[Request], Awaitable[Response]]:
    """`calls` hears of the call as soon as Twilio does: to count it, and to get the model ready early."""

    async def endpoint(request: Request) -> Response:
        form = await twilio_form(settings, request, "voice")
        if isinstance(form, Response):
            return form
        if not form.get("CallSid"):
            return error_response(400, "bad_request", "CallSid is missing")
        direction: Direction = "outbound" if form.get("Direction", "").startswith("outbound") else "inbound"
        info = CallInfo(form["CallSid"], form.get("From", ""), form.get("To", ""), direction)
        # Bound for the rest of this request's task: uvicorn's access line for it carries the call too.
        structlog.contextvars.bind_contextvars(call_sid=info.call_sid)
        log.info("voice.incoming", caller=info.from_number, direction=direction)
        if (refusal := calls.admit(info)) is not None:
            return Response(say_and_hang_up(TURNED_AWAY[refusal]), media_type="application/xml")
        try:
            await store.add(info.call_sid, info.direction, info.from_number, info.to_number)
            token = await store.issue_token(info.call_sid, ttl_s=STREAM_TOKEN_TTL_S)
        except (SQLAlchemyError, OSError) as error:  # the caller hears why, not Twilio's "application error"
            log.error("voice.store_failed", call_sid=info.call_sid, error=repr(error))
            await calls.release(info.call_sid, refused=Refusal.UNAVAILABLE)
            return Response(say_and_hang_up(UNAVAILABLE), media_type="application/xml")
        return Response(stream_twiml(media_stream_url(settings, token), info), media_type="application/xml")

    return endpoint
