"""The Twilio account outside calls: whether the credentials work (`phonebot doctor --online`), and
pointing a number's webhooks at this service (`phonebot setup-number`). Twilio's errors become
plain sentences here. The twilio client is synchronous: these run from the command line."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from twilio.base.exceptions import TwilioException, TwilioRestException

from phonebot.telephony.rest import TwilioRest

REQUEST_TIMEOUT_S = 10.0
# What a REST request can raise: Twilio's answer, or the network's (requests' errors are OSErrors).
FAILED = (TwilioException, OSError)


class AccountError(Exception):
    """Twilio said no, or could not be reached; the message says which, in plain words."""


@dataclass(frozen=True, slots=True)
class Change:
    setting: str  # as the Twilio console names it
    before: str
    after: str


def check_credentials(rest: TwilioRest) -> tuple[bool, str]:
    """(holds, what was found): the credentials authenticate, and the account is active."""
    client = rest.client()
    try:
        account = client.api.v2010.accounts(client.username).fetch()
    except FAILED as error:
        return False, describe(error, client.api.base_url)
    if account.status != "active":
        return False, f"the account {account.friendly_name!r} is {account.status}, not active"
    return True, f"account {account.friendly_name!r} ({account.sid}) is active"


def point_number(rest: TwilioRest, number: str, voice_url: str, status_url: str) -> tuple[str, list[Change]]:
    """Set the number's "A call comes in" webhook and "Call status changes" callback to ours (POST).

    Returns the number's SID and what changed (nothing when it already pointed here).
    """
    client = rest.client()
    wanted = {
        "voice_url": voice_url,
        "voice_method": "POST",
        "status_callback": status_url,
        "status_callback_method": "POST",
    }
    try:
        # PhoneNumber filters by pattern on Twilio's side; only the exact number will do.
        found = [n for n in client.incoming_phone_numbers.list(phone_number=number) if n.phone_number == number]
        if not found:
            raise AccountError(f"{number} is not a phone number of account {client.username}")
        record = found[0]
        if record.trunk_sid:
            raise AccountError(f"{number} belongs to SIP trunk {record.trunk_sid}: its calls go to the trunk")
        if record.voice_application_sid:
            wanted["voice_application_sid"] = ""  # a TwiML App on the number overrides its voice URL
        before = {field: getattr(record, field) or "" for field in wanted}
        update = {field: value for field, value in wanted.items() if before[field] != value}
        if update:
            client.incoming_phone_numbers(record.sid).update(**update)
    except FAILED as error:
        raise AccountError(describe(error, client.api.base_url)) from None
    return record.sid, [Change(_LABELS[field], before[field], value) for field, value in update.items()]


_LABELS = {
    "voice_url": "A call comes in (URL)",
    "voice_method": "A call comes in (HTTP method)",
    "status_callback": "Call status changes (URL)",
    "status_callback_method": "Call status changes (HTTP method)",
    "voice_application_sid": "TwiML App",
}


def describe(error: BaseException, base_url: str = "Twilio's REST API") -> str:
    """A Twilio REST failure in one line."""
    if isinstance(error, TwilioRestException):
        said = re.sub(r"^Unable to \w+ records?: ", "", str(error.msg))  # the client's own preamble
        return _answered(error.status, error.code, said)
    if isinstance(error, TwilioException) and len(error.args) == 2 and hasattr(error.args[1], "status_code"):
        # Reading a list page fails with the bare response instead ("Unable to fetch page", response).
        response = error.args[1]
        try:
            body = json.loads(response.text)
        except ValueError:
            body = {}
        return _answered(response.status_code, body.get("code"), body.get("message", response.text))
    if isinstance(error, TimeoutError) or "timed out" in str(error).lower():
        return f"Twilio did not answer within {REQUEST_TIMEOUT_S:.0f} s"
    if isinstance(error, OSError):
        # requests nests the cause several levels deep; the errno's words are what a person needs.
        cause = re.findall(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
        return f"cannot reach {base_url}: {cause[-1] if cause else type(error).__name__}"
    return f"Twilio's client failed: {error}"


def _answered(status: int, code: object, said: str) -> str:
    if status == 401:
        return (
            f"Twilio refused the credentials (HTTP 401, error {code}: {said}): "
            "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
        )
    return f"Twilio answered HTTP {status}, error {code}: {said}"
