"""Twilio's call status callbacks (`POST /twilio/status`, signed): how a call is going, in Twilio's words.

Twilio posts them for outbound calls phonebot makes and, once `phonebot setup-number` has set
it, for the number's inbound calls. Each becomes a `CallStatus` for the call side; what Twilio
calls things stays in here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from starlette.requests import Request
from starlette.responses import Response

from phonebot.errors import error_response
from phonebot.settings import Settings
from phonebot.telephony.signature import twilio_form

log = structlog.get_logger(__name__)

# Twilio's CallStatus values. The last five are final.
STATUSES = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"}
)


@dataclass(frozen=True, slots=True)
class CallStatus:
    call_sid: str
    status: str  # one of STATUSES
    answered_by: str | None  # human | machine | unknown, when answering-machine detection ran


StatusHandler = Callable[[CallStatus], Awaitable[bool]]  # False: not recorded (try again later)


def answered_by(value: str | None) -> str | None:
    """Twilio's AnsweredBy (human, machine_start, machine_end_beep, …, fax, unknown) in three words."""
    if not value:
        return None
    if value == "human":
        return "human"
    return "machine" if value.startswith("machine") or value == "fax" else "unknown"


def status_endpoint(settings: Settings, on_status: StatusHandler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        form = await twilio_form(settings, request, "status")
        if isinstance(form, Response):
            return form
        status = form.get("CallStatus", "")
        if not form.get("CallSid") or status not in STATUSES:
            return error_response(400, "bad_request", "CallSid and a known CallStatus are required")
        update = CallStatus(form["CallSid"], status, answered_by(form.get("AnsweredBy")))
        structlog.contextvars.bind_contextvars(call_sid=update.call_sid)  # uvicorn's access line too
        log.info("status.update", status=status, answered_by=update.answered_by)
        if not await on_status(update):
            return error_response(503, "not_recorded", "the call record cannot be updated now")
        return Response(status_code=204)

    return endpoint
