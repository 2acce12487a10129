"""X-Twilio-Signature checks, for the voice webhook and the media stream handshake."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.request_validator import RequestValidator


def signature_ok(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """Whether Twilio signed `url` with `params` (the POST form; empty for a WebSocket)."""
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))
