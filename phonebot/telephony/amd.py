"""`POST /twilio/amd`: Twilio's asynchronous answering-machine detection callback (signed).

phonebot places outbound calls with `MachineDetection=DetectMessageEnd` and `AsyncAmd=true`: the
call is connected (and the bot speaks) the moment it is answered, and this callback comes a few
seconds later. For a machine it comes once the greeting has ended, after the beep: the moment to
leave a message. Twilio's `AnsweredBy` becomes a `MachineAnswer` for the call side.
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
from phonebot.telephony.status import answered_by

log = structlog.get_logger(__name__)

# What DetectMessageEnd answers with: a person, a machine once its greeting is over (after the
# beep, after silence, or otherwise), a fax, or no verdict.
VERDICTS = frozenset({"human", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"})


@dataclass(frozen=True, slots=True)
class MachineAnswer:
    call_sid: str
    answered_by: str  # human | machine | unknown (a fax is a machine)
    detail: str  # Twilio's AnsweredBy, for the logs


AnswerHandler = Callable[[MachineAnswer], Awaitable[bool]]  # False: not recorded (try again later)


def amd_endpoint(settings: Settings, on_answer: AnswerHandler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        form = await twilio_form(settings, request, "amd")
        if isinstance(form, Response):
            return form
        detail = form.get("AnsweredBy", "")
        if not form.get("CallSid") or detail not in VERDICTS:
            return error_response(400, "bad_request", "CallSid and a known AnsweredBy are required")
        answer = MachineAnswer(form["CallSid"], answered_by(detail) or "unknown", detail)
        structlog.contextvars.bind_contextvars(call_sid=answer.call_sid)  # uvicorn's access line too
        log.info("amd.answered_by", answered_by=answer.answered_by, detail=detail,
                 detection_ms=form.get("MachineDetectionDuration"))
        if not await on_answer(answer):
            return error_response(503, "not_recorded", "the call record cannot be updated now")
        return Response(status_code=204)

    return endpoint
