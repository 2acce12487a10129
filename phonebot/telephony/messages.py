"""Twilio Media Streams wire format: parse what Twilio sends, build what we send back.

Twilio sends every number (sequenceNumber, chunk, timestamp) as a string; audio is
base64 mu-law. Inside phonebot audio is bytes, so decoding happens here, once.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ProtocolError(ValueError):
    """A message that is not valid Media Streams JSON."""


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000


@dataclass(frozen=True, slots=True)
class Media:
    mulaw: bytes
    track: str
    chunk: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Unknown:
    event: str


Message = Connected | Start | Media | Dtmf | Mark | Stop | Unknown


def parse(text: str | bytes) -> Message:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ProtocolError(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    event = data.get("event")
    parser = _PARSERS.get(event) if isinstance(event, str) else None
    if parser is None:
        return Unknown(str(event))
    try:
        return parser(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ProtocolError(f"bad {event!r} message: {error!r}") from None


def _media(data: dict[str, Any]) -> Media:
    media = data["media"]
    try:
        mulaw = binascii.a2b_base64(media["payload"], strict_mode=True)
    except binascii.Error as error:
        raise ValueError(f"payload is not base64: {error}") from None
    return Media(
        mulaw=mulaw,
        track=media.get("track", "inbound"),
        chunk=int(media.get("chunk", 0)),
        timestamp_ms=int(media.get("timestamp", 0)),
    )


def _start(data: dict[str, Any]) -> Start:
    start = data["start"]
    fmt = start.get("mediaFormat") or {}
    params = start.get("customParameters") or {}
    return Start(
        stream_sid=str(start.get("streamSid") or data["streamSid"]),
        call_sid=str(start["callSid"]),
        account_sid=str(start.get("accountSid", "")),
        custom_parameters={str(k): str(v) for k, v in params.items()},
        encoding=str(fmt.get("encoding", "audio/x-mulaw")),
        sample_rate=int(fmt.get("sampleRate", 8000)),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], Message]] = {
    "connected": lambda d: Connected(str(d.get("protocol", ""))),
    "start": _start,
    "media": _media,
    "dtmf": lambda d: Dtmf(str(d["dtmf"]["digit"])),
    "mark": lambda d: Mark(str(d["mark"]["name"])),
    "stop": lambda d: Stop(),
}


# -- what we send -------------------------------------------------------------------------


def media(stream_sid: str, mulaw: bytes | bytearray) -> str:
    payload = binascii.b2a_base64(mulaw, newline=False).decode("ascii")
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}'


def mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})
