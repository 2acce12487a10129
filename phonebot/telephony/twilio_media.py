"""`WS /twilio/media/{token}`: Twilio's media stream of a call.

What is Twilio's alone: the handshake must carry Twilio's signature of that exact URL (with its
token), and a call is moved out of its stream (apology, transfer) through Twilio's REST API.
The rest (which call the stream carries, the audio itself) is any Media Streams peer's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from starlette.websockets import WebSocket

from phonebot.settings import MissingSetting, Settings
from phonebot.store.calls import CallStore
from phonebot.telephony.claim import StreamHandler, serve_stream
from phonebot.telephony.rest import TwilioRest
from phonebot.telephony.signature import signature_ok
from phonebot.telephony.voice import media_stream_url

log = structlog.get_logger(__name__)


def media_endpoint(
    settings: Settings, store: CallStore, on_stream: StreamHandler, rest: TwilioRest
) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(websocket: WebSocket) -> None:
        token = websocket.path_params["token"]
        try:
            auth_token, url = settings.require_auth_token(), media_stream_url(settings, token)
        except MissingSetting as error:
            log.error("stream.refused", reason=str(error))
            await websocket.close(code=1011, reason=error.variable + " is not set")
            return
        await websocket.accept()
        if not signature_ok(auth_token, url, {}, websocket.headers.get("x-twilio-signature")):
            log.warning("stream.bad_signature", client=websocket.client.host if websocket.client else None)
            await websocket.close(code=1008, reason="invalid X-Twilio-Signature")
            return
        await serve_stream(websocket, token, store, on_stream, rest.redirect)

    return endpoint
