"""X-Twilio-Signature checks, for the voice webhook and the media stream handshake."""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from starlette.requests import Request
from starlette.responses import Response
from twilio.request_validator import RequestValidator

from phonebot.errors import error_response
from phonebot.settings import Settings

log = structlog.get_logger(__name__)


def signature_ok(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """Whether Twilio signed `url` with `params` (the POST form; empty for a WebSocket)."""
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


async def signed_form(settings: Settings, request: Request) -> dict[str, str] | None:
    """The form of a POST Twilio signed for this URL under PHONEBOT_PUBLIC_URL; None if it did not."""
    form = {key: str(value) for key, value in (await request.form()).items()}
    url = settings.require_public_url() + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signed = signature_ok(settings.require_auth_token(), url, form, request.headers.get("x-twilio-signature"))
    return form if signed else None


async def twilio_form(settings: Settings, request: Request, event: str) -> dict[str, str] | Response:
    """The form of a request Twilio signed, or the 403 to answer (logged as `{event}.bad_signature`)."""
    form = await signed_form(settings, request)
    if form is None:
        log.warning(f"{event}.bad_signature")
        return error_response(403, "bad_signature", "X-Twilio-Signature does not match this request")
    return form
