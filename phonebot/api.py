"""The operator API: outbound calls and call records, behind `Authorization: Bearer <PHONEBOT_API_KEY>`.

`POST /calls` places an outbound call (`phonebot.outbound`): `{"to": "+E164", "instructions"?,
"metadata"?}` answers `201 {"call_sid", "status"}`, or the error: 400 for the order or Twilio's
4xx (with Twilio's code), 429 with Retry-After when this replica is full, 503 while it drains or
Twilio cannot be reached, 502 when Twilio fails.
`GET /calls` lists calls newest first (`limit`, `cursor`; filters `number`, `direction`,
`since`, `until`), each as its summary and its webhook's delivery state; `GET /calls/{call_sid}`
is one call whole: the finished-call report (turns, tool calls, DTMF, bookings) and the same.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import and_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from phonebot.errors import error_response
from phonebot.outbound import CallOrder, NotPlaced, Outbound
from phonebot.settings import Settings
from phonebot.store import records
from phonebot.store.records import CALL_COMPLETED, iso
from phonebot.store.tables import calls, webhook_outbox

log = structlog.get_logger(__name__)

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
DIRECTIONS = ("inbound", "outbound", "web")
_WEBHOOK_COLUMNS = (
    webhook_outbox.c.id.label("webhook_id"),
    webhook_outbox.c.status.label("webhook_status"),
    webhook_outbox.c.attempts.label("webhook_attempts"),
    webhook_outbox.c.last_error.label("webhook_last_error"),
    webhook_outbox.c.next_attempt_at.label("webhook_next_attempt_at"),
    webhook_outbox.c.delivered_at.label("webhook_delivered_at"),
)
_REPORTS = and_(webhook_outbox.c.call_sid == calls.c.call_sid, webhook_outbox.c.event_type == CALL_COMPLETED)

Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(ValueError):
    pass


def authorized(settings: Settings, request: Request) -> JSONResponse | None:
    """None if the request carries the API key; else the 401 to answer."""
    if settings.api_key is None:
        return _unauthorized("PHONEBOT_API_KEY is not set on the server: the API is off")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
        return _unauthorized("a valid `Authorization: Bearer <PHONEBOT_API_KEY>` header is required")
    return None


def _unauthorized(message: str) -> JSONResponse:
    response = error_response(401, "unauthorized", message)
    response.headers["www-authenticate"] = "Bearer"
    return response


def routes(settings: Settings, engine: AsyncEngine, outbound: Outbound) -> list[Route]:
    def guarded(endpoint: Endpoint) -> Endpoint:
        async def guard(request: Request) -> Response:
            if (refusal := authorized(settings, request)) is not None:
                return refusal
            try:
                return await endpoint(request)
            except BadRequest as error:
                return error_response(400, "bad_request", str(error))
            except SQLAlchemyError as error:
                log.error("api.database_unavailable", error=repr(error))
                return error_response(503, "database_unavailable", "the database cannot be reached; try again")

        return guard

    async def place_call(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise BadRequest('the body must be JSON like {"to": "+14155550123"}') from None
        try:
            placed = await outbound.place(CallOrder.parse(body))
        except NotPlaced as failure:
            return _not_placed(failure)
        return JSONResponse({"call_sid": placed.call_sid, "status": placed.status}, status_code=201)

    async def list_calls(request: Request) -> Response:
        params = request.query_params
        limit = _limit(params.get("limit"))
        query = select(calls, *_WEBHOOK_COLUMNS).outerjoin(webhook_outbox, _REPORTS)
        if number := params.get("number"):
            query = query.where(records.number_matches(number))
        if direction := params.get("direction"):
            if direction not in DIRECTIONS:
                raise BadRequest(f"direction must be one of {', '.join(DIRECTIONS)}")
            query = query.where(calls.c.direction == direction)
        if since := params.get("since"):
            query = query.where(calls.c.created_at >= _moment("since", since))
        if until := params.get("until"):
            query = query.where(calls.c.created_at < _moment("until", until))
        if cursor := params.get("cursor"):
            query = query.where(records.page_after(*_read_cursor(cursor)))
        query = query.order_by(calls.c.created_at.desc(), calls.c.call_sid.desc()).limit(limit + 1)
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        page = rows[:limit]
        more = len(rows) > limit
        return JSONResponse(
            {
                "calls": [{**records.summary(row._mapping), "webhook": _webhook(row._mapping)} for row in page],
                "next_cursor": _cursor(page[-1].created_at, page[-1].call_sid) if more else None,
            }
        )

    async def get_call(request: Request) -> Response:
        call_sid = request.path_params["call_sid"]
        async with engine.connect() as connection:
            report = await records.load_report(connection, call_sid)
            row = (
                await connection.execute(
                    select(calls.c.instructions, *_WEBHOOK_COLUMNS)
                    .select_from(calls)
                    .outerjoin(webhook_outbox, _REPORTS)
                    .where(calls.c.call_sid == call_sid)
                )
            ).first()
        if report is None or row is None:
            return error_response(404, "not_found", f"no call {call_sid}")
        return JSONResponse({**report, "instructions": row.instructions, "webhook": _webhook(row._mapping)})

    return [
        Route("/calls", guarded(place_call), methods=["POST"]),
        Route("/calls", guarded(list_calls), methods=["GET"]),
        Route("/calls/{call_sid}", guarded(get_call), methods=["GET"]),
    ]


def _not_placed(failure: NotPlaced) -> JSONResponse:
    extra = {"more_info": failure.more_info} if failure.more_info else {}
    response = error_response(failure.status, failure.code, failure.message, **extra)
    if failure.retry_after is not None:
        response.headers["retry-after"] = str(failure.retry_after)
    return response


def _webhook(row: Any) -> dict[str, Any] | None:
    """The finished-call webhook's delivery state (None: not queued: the call goes on, or no URL is set)."""
    if row["webhook_id"] is None:
        return None
    return {
        "id": row["webhook_id"],
        "status": row["webhook_status"],  # pending | delivered | failed
        "attempts": row["webhook_attempts"],
        "last_error": row["webhook_last_error"],
        "next_attempt_at": iso(row["webhook_next_attempt_at"]) if row["webhook_status"] == "pending" else None,
        "delivered_at": iso(row["webhook_delivered_at"]),
    }


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def _moment(name: str, value: str) -> datetime:
    try:
        # A "+hh:mm" offset sent unencoded arrives as " hh:mm".
        moment = datetime.fromisoformat(re.sub(r" (\d\d:\d\d)$", r"+\1", value.replace("Z", "+00:00")))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO-8601 date or time, like 2026-12-01 or 2026-12-01T09:00:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _cursor(created_at: datetime, call_sid: str) -> str:
    raw = json.dumps([created_at.isoformat(), call_sid]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, call_sid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created_at), str(call_sid)
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest("cursor is not one this API gave out") from None
