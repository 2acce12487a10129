"""Twilio Media Streams wire format: parse what Twilio sends, build what we send back.

Twilio sends every number (sequenceNumber, chunk, timestamp) as a string; audio is
base64 mu-law. Inside phonebot audio is bytes, so decoding happens here, once.

Whatever arrives is data that may be wrong: `parse` returns a message or raises
`ProtocolError` (whose text never echoes the input), never anything else. Sizes are bounded
before any work is done on them: a WebSocket message by the server (`MAX_MESSAGE_BYTES`, which
the app gives uvicorn), a media payload here, before it is decoded.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pybase64

# Twilio sends one 20 ms frame (160 bytes) per message; a few frames' worth is the most we take.
MAX_MEDIA_BYTES = 5 * 160
_MAX_PAYLOAD_CHARS = -(-MAX_MEDIA_BYTES // 3) * 4  # its base64 length, checked before decoding
# The largest message is `start` (customParameters are capped at 500 characters by Twilio):
# 64 KiB is far beyond any real message, and far below uvicorn's 16 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_MARK_NAME = 64  # ours are "turn:samples"; Twilio echoes them back unchanged
DTMF_DIGITS = frozenset("0123456789*#ABCD")
_MAX_SHOWN = 80  # characters of an error or event name that may reach a log line


class ProtocolError(ValueError):
    """A message that is not valid Media Streams JSON. Its text is short and never echoes the input."""


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
        data = orjson.loads(text)  # a quarter of json.loads' time on these messages
    except ValueError:  # orjson's error, also for JSON nested over 1024 deep (no RecursionError)
        raise ProtocolError("not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    event = data.get("event")
    parser = _PARSERS.get(event) if isinstance(event, str) else None
    if parser is None:
        return Unknown(_clip(str(event)))
    try:
        return parser(data)
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise ProtocolError(f"bad {event!r} message: {_clip(repr(error))}") from None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _media(data: dict[str, Any]) -> Media:
    media = data["media"]
    payload = media["payload"]
    if not isinstance(payload, str):
        raise TypeError("payload is not a string")
    if len(payload) > _MAX_PAYLOAD_CHARS:  # refused before a byte of it is decoded
        raise ProtocolError(f"media payload of {len(payload)} base64 characters; at most {MAX_MEDIA_BYTES} bytes")
    try:
        mulaw = pybase64.b64decode(payload, validate=True)
    except ValueError:  # binascii.Error; the stdlib's strict decoder has the last word on odd input
        try:
            mulaw = binascii.a2b_base64(payload, strict_mode=True)
        except binascii.Error as error:
            raise ValueError(f"payload is not base64: {error}") from None
    return Media(
        mulaw=mulaw,
        track=str(media.get("track", "inbound")),
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


def _dtmf(data: dict[str, Any]) -> Dtmf:
    digit = data["dtmf"]["digit"]
    if not isinstance(digit, str) or digit not in DTMF_DIGITS:
        raise ProtocolError("dtmf digit is not one of 0-9 * # A-D")
    return Dtmf(digit)


def _mark(data: dict[str, Any]) -> Mark:
    name = data["mark"]["name"]
    if not isinstance(name, str) or len(name) > MAX_MARK_NAME:
        raise ProtocolError(f"mark name is not a string of at most {MAX_MARK_NAME} characters")
    return Mark(name)


_PARSERS: dict[str, Callable[[dict[str, Any]], Message]] = {
    "connected": lambda d: Connected(_clip(str(d.get("protocol", "")))),
    "start": _start,
    "media": _media,
    "dtmf": _dtmf,
    "mark": _mark,
    "stop": lambda d: Stop(),
}


# -- what we send -------------------------------------------------------------------------


def media(stream_sid: str, mulaw: bytes | bytearray) -> str:
    payload = pybase64.b64encode_as_string(mulaw)
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}'


def mark(stream_sid: str, name: str) -> str:
    # orjson, as for the media: json.dumps was 2% of the busy samples of `bench.frames --profile`.
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def clear(stream_sid: str) -> str:
    return orjson.dumps({"event": "clear", "streamSid": stream_sid}).decode()
