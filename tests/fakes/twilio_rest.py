"""A fake of Twilio's REST API for the real `twilio` client (pointed at it by TWILIO_API_BASE_URL).

Only what phonebot uses, answered as Twilio answers (2010-04-01 API, JSON, snake_case fields):
creating a call (POST .../Calls.json: 201 and the Call resource, or Twilio's error: 21201/21213
a number missing, 21211 an invalid To, 21210 a From the account has not verified or bought,
21205 nothing to run); updating a live call (POST .../Calls/{CallSid}.json); fetching the account (GET
/Accounts/{AccountSid}.json, what `doctor --online` asks); listing the account's numbers by
PhoneNumber and updating one (GET .../IncomingPhoneNumbers.json, POST
.../IncomingPhoneNumbers/{Sid}.json, what `setup-number` does). Every request needs the
account's Basic credentials, else 401 with Twilio's error 20003. Requests are recorded as
(method, path, form); a created call's whole form, repeated fields included, is kept in `created`.
For outage tests: `outage` answers every create with that error, `delay_s` holds each create's
answer (after recording it in `received`), and so does `held` until the test sets it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

API = "/2010-04-01/Accounts/{account}"
# What IncomingPhoneNumber.update accepts that phonebot may send, form name -> resource field.
NUMBER_FIELDS = {
    "VoiceUrl": "voice_url",
    "VoiceMethod": "voice_method",
    "StatusCallback": "status_callback",
    "StatusCallbackMethod": "status_callback_method",
    "VoiceApplicationSid": "voice_application_sid",
}


def _error(status: int, code: int, message: str) -> JSONResponse:
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    body = {"code": code, "message": message, "more_info": more_info, "status": status}
    return JSONResponse(body, status_code=status)


def _now() -> str:
    return format_datetime(datetime.now(UTC), usegmt=True)  # Twilio's RFC 2822 dates


E164 = re.compile(r"\+[1-9]\d{6,14}")


def _formatted(number: str) -> str:
    """Twilio's *_formatted: national form for North American numbers, else as given."""
    if re.fullmatch(r"\+1\d{10}", number):
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


@dataclass(frozen=True, slots=True)
class CreatedCall:
    sid: str
    form: dict[str, list[str]]  # every field as sent, repeated ones (StatusCallbackEvent) in order

    def field(self, name: str) -> str:
        [value] = self.form[name]
        return value


class FakeTwilioRest:
    def __init__(self, account_sid: str, auth_token: str, friendly_name: str = "My first Twilio account") -> None:
        self.account_sid = account_sid
        self.friendly_name = friendly_name
        self.status = "active"
        self._auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.request_times: list[float] = []  # time.monotonic() of each request's arrival
        self.numbers: dict[str, dict[str, Any]] = {}  # by PN sid
        self.changed = asyncio.Event()
        self.base_url = ""
        # Calls.json: what the account may call from (bought or verified), numbers Twilio rejects,
        # and the calls created.
        self.caller_ids: set[str] = set()
        self.invalid_numbers: set[str] = set()
        self.created: list[CreatedCall] = []
        self.received: list[CreatedCall] = []  # create requests as they arrive, before their answer
        self.outage: tuple[int, int, str] | None = None  # (status, code, message) for every create
        self.delay_s = 0.0
        self.held: asyncio.Event | None = None  # when given, each create answers only once it is set
        self.calls: dict[str, dict[str, Any]] = {}  # resources by sid

    def add_number(self, phone_number: str, **fields: Any) -> dict[str, Any]:
        """A number of this account, as a new one comes: Twilio's demo voice URL, no callback."""
        sid = "PN" + secrets.token_hex(16)
        record = {
            "sid": sid,
            "account_sid": self.account_sid,
            "friendly_name": phone_number,
            "phone_number": phone_number,
            "api_version": "2010-04-01",
            "voice_url": "https://demo.twilio.com/welcome/voice/",
            "voice_method": "POST",
            "voice_fallback_url": None,
            "voice_fallback_method": "POST",
            "voice_caller_id_lookup": False,
            "voice_application_sid": None,
            "voice_receive_mode": "voice",
            "status_callback": "",
            "status_callback_method": "POST",
            "sms_url": "https://demo.twilio.com/welcome/sms/reply",
            "sms_method": "POST",
            "trunk_sid": None,
            "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
            "status": "in-use",
            "date_created": _now(),
            "date_updated": _now(),
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}.json",
            **fields,
        }
        self.numbers[sid] = record
        return record

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == self._auth and request.path_params["account"] == self.account_sid

    async def _record(self, request: Request) -> dict[str, str]:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.requests.append((request.method, request.url.path, form))
        self.request_times.append(time.monotonic())
        return form

    def _call_json(self, call_sid: str, form: dict[str, str]) -> dict[str, Any]:
        return {
            "sid": call_sid,
            "account_sid": self.account_sid,
            "status": form.get("Status", "in-progress"),
            "to": form.get("To", ""),
            "from": form.get("From", ""),
            "direction": "outbound-api",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call_sid}.json",
        }

    async def _create_call(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        multi = (await request.form()).multi_items()
        form = {name: [str(v) for n, v in multi if n == name] for name, _ in multi}
        self.requests.append((request.method, request.url.path, {name: values[-1] for name, values in form.items()}))
        self.request_times.append(time.monotonic())
        sid = "CA" + secrets.token_hex(16)
        self.received.append(CreatedCall(sid, form))
        self.changed.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.held is not None:
            await self.held.wait()
        to, from_ = (form.get(name, [""])[-1] for name in ("To", "From"))
        if self.outage is not None:
            return _error(*self.outage)
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not E164.fullmatch(to) or to in self.invalid_numbers:
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if from_ not in self.caller_ids:
            message = (
                f"The source phone number provided, {from_}, is not yet verified for your account. You may only make "
                "calls from phone numbers that you've verified or purchased from Twilio."
            )
            return _error(400, 21210, message)
        if not form.get("Twiml") and not form.get("Url") and not form.get("ApplicationSid"):
            return _error(400, 21205, "Url parameter is required.")
        resource = self._call_resource(sid, to, from_)
        self.calls[sid] = resource
        self.created.append(CreatedCall(sid, form))
        return JSONResponse(resource, status_code=201)

    def _call_resource(self, sid: str, to: str, from_: str) -> dict[str, Any]:
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}"
        return {
            "account_sid": self.account_sid, "annotation": None, "answered_by": None, "api_version": "2010-04-01",
            "caller_name": None, "date_created": _now(), "date_updated": _now(), "direction": "outbound-api",
            "duration": None, "end_time": None, "forwarded_from": None, "from": from_,
            "from_formatted": _formatted(from_), "group_sid": None, "parent_call_sid": None,
            "phone_number_sid": "PN" + secrets.token_hex(16), "price": None, "price_unit": "USD", "queue_time": "0",
            "sid": sid, "start_time": None, "status": "queued", "to": to, "to_formatted": _formatted(to),
            "trunk_sid": None, "uri": uri + ".json",
            "subresource_uris": {
                name: f"{uri}/{name.title().replace('_', '')}.json"
                for name in ("notifications", "recordings", "payments", "events", "siprec", "streams")
            },
        }

    async def _update_call(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        form = await self._record(request)
        self.changed.set()
        resource = self.calls.get(request.path_params["call_sid"])
        if resource is not None and "Status" in form:
            resource.update(status=form["Status"], date_updated=_now())
        return JSONResponse(self._call_json(request.path_params["call_sid"], form))

    def updates(self, call_sid: str) -> list[dict[str, str]]:
        """The forms of the updates to one call, in order."""
        return [form for method, path, form in self.requests if path.endswith(f"/Calls/{call_sid}.json")]

    async def _fetch_account(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        await self._record(request)
        uri = f"/2010-04-01/Accounts/{self.account_sid}.json"
        return JSONResponse({
            "sid": self.account_sid, "owner_account_sid": self.account_sid, "friendly_name": self.friendly_name,
            "status": self.status, "type": "Full", "date_created": _now(), "date_updated": _now(), "uri": uri,
        })

    async def _list_numbers(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        await self._record(request)
        # PhoneNumber matches partial numbers, '*' standing for any one digit.
        wanted = request.query_params.get("PhoneNumber", "")
        pattern = re.compile(re.escape(wanted).replace(r"\*", r"\d"))
        found = [n for n in self.numbers.values() if pattern.search(n["phone_number"])]
        size = int(request.query_params.get("PageSize", 50))
        uri = f"{request.url.path}?{request.url.query}"
        return JSONResponse({
            "incoming_phone_numbers": found[:size], "start": 0, "end": max(len(found[:size]) - 1, 0),
            "page": 0, "page_size": size, "first_page_uri": uri, "previous_page_uri": None, "next_page_uri": None,
            "uri": uri,
        })

    async def _update_number(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        form = await self._record(request)
        record = self.numbers.get(request.path_params["sid"])
        if record is None:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        for name, value in form.items():
            if name.endswith("Method") and value.upper() not in ("GET", "POST"):
                return _error(400, 21603, f"{name} must be GET or POST")
            if name in NUMBER_FIELDS:
                record[NUMBER_FIELDS[name]] = value if value or name != "VoiceApplicationSid" else None
        record["date_updated"] = _now()
        self.changed.set()
        return JSONResponse(record)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeTwilioRest]:
        app = Starlette(
            routes=[
                Route(API + ".json", self._fetch_account, methods=["GET"]),
                Route(API + "/Calls.json", self._create_call, methods=["POST"]),
                Route(API + "/Calls/{call_sid}.json", self._update_call, methods=["POST"]),
                Route(API + "/IncomingPhoneNumbers.json", self._list_numbers, methods=["GET"]),
                Route(API + "/IncomingPhoneNumbers/{sid}.json", self._update_number, methods=["POST"]),
            ]
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            yield self
        finally:
            server.should_exit = True
            await task
            sock.close()
