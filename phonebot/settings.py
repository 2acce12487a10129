"""One typed settings object, read from the environment and `.env`. The only reader of either.

Settings a request cannot do without are optional here, so the service starts and answers
health checks without them; `Settings.require()` names the missing variable when a request
needs it, and `Settings.problems()` lists every problem at once, in plain words: what is
missing, what is still the template's placeholder, and what has the wrong shape. `phonebot
doctor`, the `serve` banner and readiness all read that one list, so they never disagree.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import load_dotenv
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from phonebot.business import DEFAULT_BUSINESS_FILE, BusinessFileError, load_business

DEFAULT_MODEL = "gemini-3.8-live"
DEFAULT_PROMPT = Path(__file__).parent / "prompts" / "receptionist.md"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./phonebot.db"
DEFAULT_VOICEMAIL_MESSAGE = (
    "Hello, sorry we missed you. We'll try you again later, or you can call us back on this number. Goodbye."
)
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
}


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@\s]*)@")  # user:password@ in a database URL

E164 = re.compile(r"\+[1-9]\d{6,14}")
# Shapes of the credentials, as their issuers hand them out.
TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
TWILIO_AUTH_TOKEN = re.compile(r"[0-9a-fA-F]{32}")
# Gemini API keys: standard keys (AIza + 35) and the newer authorization keys (AQ.…). Google has
# changed the shape before, so a mismatch is only a doubt: `doctor --online` settles it.
GEMINI_API_KEY = re.compile(r"AIza[0-9A-Za-z_-]{35}|AQ\.[0-9A-Za-z_.-]{16,}")
API_KEY_MIN_LENGTH = 32  # secrets.token_urlsafe(32) gives 43
# Reserved for documentation (RFC 2606) and fictional numbers (NANP 555-0100..0199): placeholders.
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
FICTIONAL_NUMBER = re.compile(r"\+1\d{3}55501\d{2}")
MAKE_API_KEY = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a setting, in plain words that start with the variable's name.

    `not_ready`: the replica should not be sent calls until it is fixed (readiness reports it):
    calls cannot be taken, or their reports cannot be signed. The others break something else
    (transfers, the API) or only look wrong, such as a key of an unfamiliar shape: doctor names
    them all.
    """

    variable: str
    detail: str
    not_ready: bool = False

    @property
    def message(self) -> str:
        return f"{self.variable} {self.detail}"

    def __str__(self) -> str:
        return self.message


class MissingSetting(RuntimeError):
    """A request needs a setting that is not set."""

    def __init__(self, variable: str, purpose: str) -> None:
        super().__init__(f"{variable} is not set; it is required {purpose}")
        self.variable = variable


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # Gemini. The SDK reads its own key, Vertex AI and endpoint variables itself; they are here
    # only so that no key is demanded on Vertex AI and `doctor` can tell what is missing.
    google_api_key: str | None = Field(
        None, validation_alias=AliasChoices("GOOGLE_API_KEY", "GEMINI_API_KEY"), repr=False
    )
    genai_use_vertexai: str | None = Field(None, validation_alias="GOOGLE_GENAI_USE_VERTEXAI")
    genai_use_enterprise: str | None = Field(None, validation_alias="GOOGLE_GENAI_USE_ENTERPRISE")
    gemini_model: str = Field(DEFAULT_MODEL, validation_alias="GEMINI_MODEL")
    gemini_voice: str = Field("Kore", validation_alias="GEMINI_VOICE")
    gemini_language: str | None = Field(None, validation_alias="GEMINI_LANGUAGE")
    gemini_temperature: float | None = Field(None, ge=0.0, le=2.0, validation_alias="GEMINI_TEMPERATURE")
    prompt_file: Path = Field(DEFAULT_PROMPT, validation_alias="PHONEBOT_PROMPT_FILE")

    # Twilio.
    public_url: str | None = Field(None, validation_alias="PHONEBOT_PUBLIC_URL")
    twilio_account_sid: str | None = Field(None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: str | None = Field(None, validation_alias="TWILIO_AUTH_TOKEN", repr=False)
    twilio_api_base_url: str | None = Field(None, validation_alias="TWILIO_API_BASE_URL")
    transfer_number: str | None = Field(None, validation_alias="PHONEBOT_TRANSFER_NUMBER")
    twilio_phone_number: str | None = Field(None, validation_alias="TWILIO_PHONE_NUMBER")

    # The operator API and web calls.
    api_key: str | None = Field(None, validation_alias="PHONEBOT_API_KEY", repr=False)

    # Finished-call webhook.
    transcript_webhook_url: str | None = Field(None, validation_alias="TRANSCRIPT_WEBHOOK_URL")
    transcript_webhook_secret: str | None = Field(None, validation_alias="TRANSCRIPT_WEBHOOK_SECRET", repr=False)
    webhook_give_up_s: float = Field(86400.0, gt=0, validation_alias="PHONEBOT_WEBHOOK_GIVE_UP_S")

    # Booking: the business the bot books for, and where its bookings are kept.
    business_file: Path = Field(DEFAULT_BUSINESS_FILE, validation_alias="PHONEBOT_BUSINESS_FILE")
    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL", repr=False)

    # Calls.
    reconnect_buffer_s: float = Field(5.0, gt=0, le=60, validation_alias="PHONEBOT_RECONNECT_BUFFER_S")
    max_call_s: float = Field(3600.0, gt=0, validation_alias="PHONEBOT_MAX_CALL_S")
    max_calls: int = Field(50, ge=1, validation_alias="PHONEBOT_MAX_CALLS")
    caller_silence_s: float = Field(20.0, gt=0, validation_alias="PHONEBOT_CALLER_SILENCE_S")
    drain_s: float = Field(300.0, ge=0, validation_alias="PHONEBOT_DRAIN_S")
    voicemail: Literal["message", "hangup"] = Field("message", validation_alias="PHONEBOT_VOICEMAIL")
    voicemail_message: str = Field(DEFAULT_VOICEMAIL_MESSAGE, validation_alias="PHONEBOT_VOICEMAIL_MESSAGE")

    # Logs.
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", validation_alias="LOG_LEVEL")
    log_format: Literal["json", "console"] | None = Field(None, validation_alias="LOG_FORMAT")

    @field_validator("public_url")
    @classmethod
    def _https_base(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith("https://"):
            raise ValueError("must be the https:// URL Twilio reaches this service at")
        return value.rstrip("/")

    @field_validator("transfer_number", "twilio_phone_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value and not E164.fullmatch(value):
            raise ValueError("must be an E.164 number like +14155550123")
        return value

    @field_validator("transcript_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("must be the http(s):// URL finished-call reports are POSTed to")
        return value

    @field_validator("transcript_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: str | None) -> str | None:
        # Standard Webhooks: "whsec_" and the base64 of 24 to 64 random bytes.
        if value is None:
            return None
        try:
            key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not 24 <= len(key) <= 64:
            raise ValueError(
                "must be whsec_ followed by the base64 of 24 to 64 random bytes, e.g. `python3 -c "
                '"import base64, secrets; print(\'whsec_\' + base64.b64encode(secrets.token_bytes(32)).decode())"`'
            )
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _async_driver(cls, value: object) -> object:
        # Hosting platforms hand out postgres:// and postgresql:// URLs; phonebot talks to
        # databases through asyncio drivers, so name them rather than make operators edit.
        if value is None or value == "":
            return DEFAULT_DATABASE_URL
        if not isinstance(value, str):
            return value
        scheme, separator, rest = value.partition("://")
        scheme = _ASYNC_DRIVERS.get(scheme, scheme)
        if not separator or scheme not in _ASYNC_DRIVERS.values():
            raise ValueError("must be sqlite+aiosqlite:///path.db or postgresql+asyncpg://user:password@host/db")
        return f"{scheme}://{rest}"

    @field_validator(
        "google_api_key",
        "gemini_language",
        "gemini_temperature",
        "twilio_account_sid",
        "twilio_auth_token",
        "twilio_api_base_url",
        "transfer_number",
        "twilio_phone_number",
        "api_key",
        "transcript_webhook_url",
        "transcript_webhook_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", "log_format", "voicemail", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def load(cls, env_file: str | os.PathLike[str] | None = ".env") -> Settings:
        """Read `.env` (never overriding the real environment), then the environment.

        `.env` is loaded into the process environment so that google-genai sees its own
        variables (GOOGLE_API_KEY, GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE) from it too.
        """
        if env_file is not None and Path(env_file).is_file():
            load_dotenv(env_file, override=False)
        return cls()

    @property
    def vertex_ai(self) -> bool:
        """Whether google-genai talks to Vertex AI, read as the SDK reads its own variables (its
        newer GOOGLE_GENAI_USE_ENTERPRISE wins): then Application Default Credentials, no key."""
        flag = self.genai_use_enterprise if self.genai_use_enterprise is not None else self.genai_use_vertexai
        return (flag or "").strip().lower() in ("true", "1")

    # -- what may be shown --------------------------------------------------------------------

    def __repr_args__(self) -> Any:
        # Secrets are repr=False; the database URL is shown without its password.
        yield from super().__repr_args__()
        yield "database_url", _URL_PASSWORD.sub(r"\1***@", self.database_url)

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, for the logs to redact wherever one turns up."""
        password = _URL_PASSWORD.search(self.database_url)
        found = [self.google_api_key, self.twilio_auth_token, self.api_key, self.transcript_webhook_secret]
        found.append(password.group(2) if password else None)
        return [value for value in found if value]

    # -- what a request needs -------------------------------------------------------------

    @property
    def stream_url(self) -> str:
        """The `wss://` URL of the media stream, exactly as written into TwiML and signed by Twilio."""
        return "wss://" + self.require_public_url().removeprefix("https://") + "/twilio/media"

    def require_public_url(self) -> str:
        if self.public_url is None:
            raise MissingSetting("PHONEBOT_PUBLIC_URL", "to answer calls (Twilio signs this URL)")
        return self.public_url

    def require_phone_number(self) -> str:
        if self.twilio_phone_number is None:
            raise MissingSetting("TWILIO_PHONE_NUMBER", "to place outbound calls (it is their caller ID)")
        return self.twilio_phone_number

    def require_auth_token(self) -> str:
        if self.twilio_auth_token is None:
            raise MissingSetting("TWILIO_AUTH_TOKEN", "to check Twilio's request signatures")
        return self.twilio_auth_token

    def prompt(self) -> str:
        return self.prompt_file.read_text(encoding="utf-8")

    # -- doctor ---------------------------------------------------------------------------

    def problems(self) -> list[Problem]:
        """Every problem with the settings at once: what calls need first, then the rest."""
        return [
            *self._gemini_problems(),
            *_url_problems("PHONEBOT_PUBLIC_URL", self.public_url, for_calls=True),
            *self._twilio_problems(),
            *self._file_problems(),
            *_number_problems("PHONEBOT_TRANSFER_NUMBER", self.transfer_number),
            *_number_problems("TWILIO_PHONE_NUMBER", self.twilio_phone_number),
            *self._api_problems(),
            *self._webhook_problems(),
        ]

    def call_problems(self) -> list[str]:
        """What keeps this replica from being sent calls (readiness): the credentials, the public URL,
        the prompt, and a webhook URL without its secret (reports would wait unsent). Not the
        business file: without it calls go on, and the booking tools say they cannot book."""
        return [problem.message for problem in self.problems() if problem.not_ready]

    def _gemini_problems(self) -> list[Problem]:
        key = self.google_api_key
        if self.vertex_ai:
            return []  # Application Default Credentials: only `doctor --online` can tell
        if key is None:
            why = "(or GEMINI_API_KEY) is not set; it is required for calls (or GOOGLE_GENAI_USE_VERTEXAI=true)"
            return [Problem("GOOGLE_API_KEY", why, not_ready=True)]
        if not GEMINI_API_KEY.fullmatch(key):
            why = "does not look like a Gemini API key (AQ.… or AIza…); `phonebot doctor --online` tries it"
            return [Problem("GOOGLE_API_KEY", why)]  # a doubt: `doctor --online` settles it
        return []

    def _twilio_problems(self) -> list[Problem]:
        sid, token = self.twilio_account_sid, self.twilio_auth_token
        sid_wrong = (
            "is not set; it is required for calls" if sid is None
            else f"{sid} is an API key's SID; phonebot needs the Account SID" if sid.startswith("SK")
            else f"{sid!r} is not an Account SID: AC and 32 hex digits" if not TWILIO_ACCOUNT_SID.fullmatch(sid)
            else None
        )
        token_wrong = (
            "is not set; it is required for calls" if token is None
            else "is not an auth token: 32 hex digits" if not TWILIO_AUTH_TOKEN.fullmatch(token)
            else None
        )
        wrong = {"TWILIO_ACCOUNT_SID": sid_wrong, "TWILIO_AUTH_TOKEN": token_wrong}
        return [Problem(variable, detail, not_ready=True) for variable, detail in wrong.items() if detail]

    def _file_problems(self) -> list[Problem]:
        found = []
        try:
            if not self.prompt().strip():
                found.append(Problem("PHONEBOT_PROMPT_FILE", f"{self.prompt_file} is empty", not_ready=True))
        except OSError as error:
            unreadable = f"{self.prompt_file} cannot be read: {error.strerror}"
            found.append(Problem("PHONEBOT_PROMPT_FILE", unreadable, not_ready=True))
        try:
            load_business(self.business_file)
        except BusinessFileError as error:
            found.append(Problem("PHONEBOT_BUSINESS_FILE", str(error)))  # the desk closes; calls go on
        return found

    def _api_problems(self) -> list[Problem]:
        if self.api_key is None or len(self.api_key) >= API_KEY_MIN_LENGTH:
            return []
        why = (
            f"is {len(self.api_key)} characters: too easy to guess for what it guards; use at least "
            f"{API_KEY_MIN_LENGTH} random ones ({MAKE_API_KEY})"
        )
        return [Problem("PHONEBOT_API_KEY", why)]

    def _webhook_problems(self) -> list[Problem]:
        # The validators above hold the URL and the secret to their forms; what is left: the
        # template's example URL, and a URL without a secret (reports wait unsent; readiness says so).
        if self.transcript_webhook_url is None:
            return []
        found = _url_problems("TRANSCRIPT_WEBHOOK_URL", self.transcript_webhook_url, for_calls=False)
        if self.transcript_webhook_secret is None:
            missing = "is not set; it is required with TRANSCRIPT_WEBHOOK_URL (reports wait unsent)"
            found.append(Problem("TRANSCRIPT_WEBHOOK_SECRET", missing, not_ready=True))
        return found


def _url_problems(variable: str, url: str | None, for_calls: bool) -> list[Problem]:
    """Not the template's example URL; for the URL Twilio calls, also set and not a local address
    (the webhook's receiver may well be on this network: phonebot is the one calling it)."""
    if url is None:
        return [Problem(variable, "is not set; it is required for calls", for_calls)] if for_calls else []
    host = (urlsplit(url).hostname or "").lower()
    for domain in EXAMPLE_DOMAINS:
        if host == domain or host.endswith("." + domain):
            return [Problem(variable, f"{url} is a placeholder ({domain} is reserved for examples)", for_calls)]
    if for_calls and (host == "localhost" or host.endswith(".localhost") or _is_private_address(host)):
        return [Problem(variable, f"{url} is a local address; Twilio cannot reach it", for_calls)]
    return []


def _is_private_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local or address.is_unspecified


def _number_problems(variable: str, number: str | None) -> list[Problem]:
    if number is not None and FICTIONAL_NUMBER.fullmatch(number):
        return [Problem(variable, f"{number} is a placeholder (555-0100 to 555-0199 are fictional numbers)")]
    return []


def _variable_to_field() -> dict[str, str]:
    names = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        for variable in alias.choices if isinstance(alias, AliasChoices) else [alias or name]:
            names[str(variable)] = name
    return names


def invalid_problems(error: ValidationError) -> list[Problem]:
    """Pydantic's errors as one problem per environment variable. Secrets' values are not shown."""
    found = []
    for item in error.errors():
        variable = str(item["loc"][0]) if item["loc"] else "?"
        message = item["msg"]
        detail = message.removeprefix("Value error, ") if message.startswith("Value error, ") else (
            "is invalid: " + message[:1].lower() + message[1:]
        )
        # Secrets' values are never echoed; a database URL may carry a password.
        secret = any(part in variable for part in ("TOKEN", "KEY", "SECRET", "PASSWORD")) or variable == "DATABASE_URL"
        shown = "" if secret else f" (got {item.get('input')!r})"
        found.append(Problem(variable, detail + shown))
    return found


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What `phonebot doctor` found: the settings, unless some value is invalid, and every problem."""

    settings: Settings | None
    problems: list[Problem]


def diagnose(env_file: str | os.PathLike[str] | None = ".env") -> Diagnosis:
    """Every problem with the settings at once: invalid values, then the rest."""
    try:
        settings = Settings.load(env_file)
    except ValidationError as error:
        invalid = invalid_problems(error)
        fields = _variable_to_field()
        # Look past the invalid values (their defaults stand in) to report the rest too.
        names = [fields[problem.variable] for problem in invalid if problem.variable in fields]
        defaults = {name: Settings.model_fields[name].default for name in names}
        named = {problem.variable for problem in invalid}
        rest = [problem for problem in Settings(**defaults).problems() if problem.variable not in named]
        return Diagnosis(None, invalid + rest)
    return Diagnosis(settings, settings.problems())
