"""Twilio's voice webhook: a signed POST per inbound call, answered with TwiML.

The TwiML connects the call to our media stream. What the call needs later (numbers,
direction) travels as `<Parameter>`s, because the stream may land on another replica.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from starlette.requests import Request
from starlette.responses import Response
from twilio.twiml.voice_response import Connect, VoiceResponse

from phonebot.call.ports import CallInfo, Direction
from phonebot.errors import error_response
from phonebot.settings import Settings
from phonebot.telephony.signature import signature_ok

log = structlog.get_logger(__name__)

CallHandler = Callable[[CallInfo], None]


def stream_twiml(stream_url: str, info: CallInfo) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in (("from", info.from_number), ("to", info.to_number), ("direction", info.direction)):
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def voice_endpoint(settings: Settings, on_call: CallHandler) -> Callable[[Request], Awaitable[Response]]:
    """`on_call` hears of the call as soon as Twilio does, to get the model ready early."""

    async def endpoint(request: Request) -> Response:
        form = {key: str(value) for key, value in (await request.form()).items()}
        url = settings.require_public_url() + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        if not signature_ok(settings.require_auth_token(), url, form, request.headers.get("x-twilio-signature")):
            log.warning("voice.bad_signature", call_sid=form.get("CallSid"))
            return error_response(403, "bad_signature", "X-Twilio-Signature does not match this request")
        if not form.get("CallSid"):
            return error_response(400, "bad_request", "CallSid is missing")
        direction: Direction = "outbound" if form.get("Direction", "").startswith("outbound") else "inbound"
        info = CallInfo(form["CallSid"], form.get("From", ""), form.get("To", ""), direction)
        log.info("voice.incoming", call_sid=info.call_sid, caller=info.from_number, direction=direction)
        on_call(info)
        return Response(stream_twiml(settings.stream_url, info), media_type="application/xml")

    return endpoint
