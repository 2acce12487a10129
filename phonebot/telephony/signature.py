"""X-Twilio-Signature checks, for the voice webhook and the media stream handshake."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from twilio.request_validator import RequestValidator

from phonebot.settings import Settings


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
