"""Placing outbound calls. `POST /calls` and `phonebot call` both come here: `Outbound.place()`.

1. The order is checked (`CallOrder.parse`): `to` an E.164 number, `instructions` and `metadata`
   within bounds.
2. The call takes a place under PHONEBOT_MAX_CALLS on this replica (none: 429; draining: 503),
   under a name of our own until Twilio names it.
3. A stream token is issued, not bound to any call yet, and Twilio is asked to create the call:
   TwiML that streams to `/twilio/media/{token}`, status callbacks to `/twilio/status`, and
   asynchronous answering-machine detection reporting to `/twilio/amd`.
4. With the CallSid Twilio returns, the model session starts opening while the phone rings (the
   greeting is ready when the callee answers), and the call's row (numbers, instructions,
   metadata) is written and the token bound to the call in one transaction: a stream that reaches
   any replica finds everything it needs in the database.

Nothing is left half-made. Twilio refusing or not answering: the token is revoked, the place let
go, and no record or model session exists. The database failing once Twilio has created the call:
the call is hung up through Twilio, its early session closed and its place let go. What went wrong
is a `NotPlaced`, with the status the API answers (4xx: the order or the account's setup; 502/503:
Twilio's side) and Twilio's own error code and message where Twilio gave them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from phonebot.call.admission import Refusal
from phonebot.call.calls import Calls
from phonebot.call.ports import CallInfo
from phonebot.settings import E164, Settings
from phonebot.store.calls import CallStore
from phonebot.telephony.rest import OutboundCall, TwilioRefused, TwilioRest, TwilioUnreachable
from phonebot.telephony.voice import media_stream_url, stream_twiml

log = structlog.get_logger(__name__)

MAX_INSTRUCTIONS_CHARS = 4000  # a page: who to call about what, and how
MAX_METADATA_BYTES = 8192  # the operator's own references (customer id, campaign), as JSON
# A call rings up to 60 s (Twilio's default timeout), after a wait in Twilio's queue at busy times:
# its place and its early model session are kept this long for its stream to start.
STREAM_WITHIN_S = 120.0
# Its stream token outlives that (a stream that comes later opens a session of its own), but not
# the 15 minutes after which the records give up on a call whose stream never started.
TOKEN_TTL_S = 600.0
RETRY_AFTER_S = {Refusal.FULL: 30, Refusal.DRAINING: 5}
TWILIO_RETRY_AFTER_S = 5
_FIELDS = ("to", "instructions", "metadata")


class NotPlaced(Exception):
    """Why a call was not placed: the HTTP status the API answers, a code (ours, or Twilio's error
    number) and a message; `retry_after` when trying again later should work."""

    def __init__(
        self, status: int, code: str | int, message: str, *, retry_after: int | None = None,
        more_info: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after, self.more_info = retry_after, more_info

    @classmethod
    def refused(cls, refusal: Refusal) -> NotPlaced:
        retry_after = RETRY_AFTER_S.get(refusal)
        if refusal == Refusal.FULL:
            message = "this replica holds PHONEBOT_MAX_CALLS calls; try again shortly"
            return cls(429, "full", message, retry_after=retry_after)
        return cls(503, "draining", "this replica is shutting down; try again", retry_after=retry_after)

    @classmethod
    def from_twilio(cls, error: TwilioRefused) -> NotPlaced:
        """Twilio's error, with the status that says whose it is to fix."""
        if error.status in (401, 403, 404):  # phonebot's credentials or account: its operator's setup, not this order
            message = f"Twilio refused phonebot's TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN: {error.message}"
            return cls(502, error.code, message, more_info=error.more_info)
        if error.status == 429 or error.status == 503:
            return cls(503, error.code, error.message, retry_after=TWILIO_RETRY_AFTER_S, more_info=error.more_info)
        if error.status >= 500:
            return cls(502, error.code, error.message, more_info=error.more_info)
        # The order (21211: not a valid number) or the account's setup (21210: caller ID not verified).
        return cls(400, error.code, error.message, more_info=error.more_info)

    @classmethod
    def unreachable(cls, error: TwilioUnreachable) -> NotPlaced:
        if error.timed_out:
            message = f"{error}; the call was not placed (had Twilio placed it, it would be hung up when answered)"
            return cls(503, "twilio_timeout", message, retry_after=TWILIO_RETRY_AFTER_S)
        return cls(503, "twilio_unreachable", str(error), retry_after=TWILIO_RETRY_AFTER_S)


def bad_order(message: str) -> NotPlaced:
    return NotPlaced(400, "bad_request", message)


@dataclass(frozen=True, slots=True)
class CallOrder:
    """An outbound call as the operator asks for it."""

    to: str
    instructions: str | None = None  # added to the bot's instructions for this call only
    metadata: dict[str, Any] = field(default_factory=dict)  # carried to the call record and webhook

    @classmethod
    def parse(cls, body: Any) -> CallOrder:
        """The order in a request body (JSON already parsed), or NotPlaced(400) saying what is wrong."""
        if not isinstance(body, dict):
            raise bad_order('the body must be a JSON object like {"to": "+14155550123"}')
        if unknown := sorted(set(body) - set(_FIELDS)):
            raise bad_order(f"unknown field(s) {', '.join(unknown)}: the fields are {', '.join(_FIELDS)}")
        to = body.get("to")
        if not isinstance(to, str) or not E164.fullmatch(to):
            raise bad_order("to must be a phone number in E.164 form, like +14155550123")
        return cls(to, _instructions(body.get("instructions")), _metadata(body.get("metadata")))


def _instructions(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_order("instructions must be a string")
    if len(value) > MAX_INSTRUCTIONS_CHARS:
        raise bad_order(f"instructions are {len(value)} characters; at most {MAX_INSTRUCTIONS_CHARS} are taken")
    return value.strip() or None


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_order("metadata must be a JSON object")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise bad_order(f"metadata is {size} bytes of JSON; at most {MAX_METADATA_BYTES} are taken")
    return value


@dataclass(frozen=True, slots=True)
class Placed:
    call_sid: str
    status: str  # Twilio's: queued


class Outbound:
    def __init__(self, settings: Settings, store: CallStore, rest: TwilioRest, calls: Calls | None) -> None:
        """`calls`: the calls this process runs (the service). None for `phonebot call`, a process
        that ends before the call is answered: it holds no place and opens no model session, and
        the replica that takes the stream opens one then."""
        self._settings = settings
        self._store = store
        self._rest = rest
        self._calls = calls

    async def place(self, order: CallOrder) -> Placed:
        """Have Twilio call `order.to`; NotPlaced if it cannot be done (and nothing of it is left)."""
        from_number = self._settings.require_phone_number()
        self._settings.require_public_url()
        if order.to == from_number:
            raise bad_order(f"to is TWILIO_PHONE_NUMBER, the number calls are made from: {order.to}")
        name = f"pending-{secrets.token_hex(8)}"  # until Twilio names the call
        if self._calls is not None:
            info = CallInfo(name, from_number, order.to, "outbound")
            if (refusal := self._calls.admit(info, STREAM_WITHIN_S, early=False)) is not None:
                raise NotPlaced.refused(refusal)
        try:
            token = await self._store.issue_token(None, ttl_s=TOKEN_TTL_S)
            placed = await self._create(order, token, from_number)
            info = CallInfo(placed.call_sid, from_number, order.to, "outbound", {}, order.instructions, order.metadata)
            if self._calls is not None:
                self._calls.admission.rename(name, placed.call_sid)
                name = placed.call_sid
                self._calls.prepare(info, STREAM_WITHIN_S)  # while the phone rings
            await self._record(info, token, placed.status)
        except BaseException as error:
            if self._calls is not None:
                failed = not isinstance(error, NotPlaced) or error.status >= 500
                await self._calls.release(name, refused=Refusal.UNAVAILABLE if failed else None)
            raise
        log.info("outbound.placed", call_sid=placed.call_sid, to=order.to, status=placed.status)
        return placed

    async def _create(self, order: CallOrder, token: str, from_number: str) -> Placed:
        """Ask Twilio for the call. If it is not placed, the token goes: no stream gets in with it."""
        public_url = self._settings.require_public_url()
        stream = CallInfo("", from_number, order.to, "outbound")  # the TwiML's parameters
        request = OutboundCall(
            to=order.to,
            from_=from_number,
            twiml=stream_twiml(media_stream_url(self._settings, token), stream),
            status_callback=f"{public_url}/twilio/status",
            amd_callback=f"{public_url}/twilio/amd",
        )
        try:
            created = await self._rest.create_call(request)
        except BaseException as error:
            await self._revoke(token)
            if isinstance(error, TwilioRefused):
                log.warning("outbound.refused_by_twilio", to=order.to, code=error.code, message=error.message)
                raise NotPlaced.from_twilio(error) from None
            if isinstance(error, TwilioUnreachable):
                log.error("outbound.twilio_unreachable", to=order.to, error=str(error))
                raise NotPlaced.unreachable(error) from None
            raise
        return Placed(created.call_sid, created.status)

    async def _record(self, info: CallInfo, token: str, status: str) -> None:
        """Write the call and bind its token; if that fails, the call Twilio made is hung up."""
        try:
            await self._store.add_outbound(
                token, info.call_sid, info.from_number, info.to_number,
                status=status, instructions=info.instructions, metadata=info.metadata,
            )
        except (SQLAlchemyError, OSError, LookupError) as error:
            log.error("outbound.not_recorded", call_sid=info.call_sid, error=repr(error))
            try:
                await self._rest.hang_up(info.call_sid)
            except (TwilioRefused, TwilioUnreachable) as hang_up_error:
                # Its stream will find no call to join: the callee hears the line close if they answer.
                log.error("outbound.hang_up_failed", call_sid=info.call_sid, error=str(hang_up_error))
            message = "the call could not be recorded (the database failed), so it was hung up; try again"
            raise NotPlaced(503, "database_unavailable", message, retry_after=TWILIO_RETRY_AFTER_S) from error

    async def _revoke(self, token: str) -> None:
        try:
            await self._store.revoke_token(token)
        except (SQLAlchemyError, OSError) as error:  # unbound, it lets no stream in all the same
            log.warning("outbound.token_not_revoked", error=repr(error))
