"""How a bench call reaches the bot's media stream: Twilio's voice webhook, from Twilio's side.

Twilio answers an inbound call by POSTing the voice webhook (form-encoded, signed with
`X-Twilio-Signature`) and streams the call to the `<Stream url>` of the TwiML it gets back,
with that TwiML's `<Parameter>`s in the stream's `start` message and the wss URL signed again
in the WebSocket handshake. `Line.stream_for()` does the same; the stream URL's host is the
public one, so the callers connect to the bot's own host and port with the URL's path (a
per-call token, for phonebot). A bot without a webhook (`voice_path=None`) is streamed to
`media_path` straight away.

The webhook's round trip is timed apart: it is the call's setup, not its audio latency.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-auth-token"
PUBLIC_URL = "https://bench.invalid"  # the service's PHONEBOT_PUBLIC_URL


@dataclass(frozen=True, slots=True)
class Stream:
    """Where one call streams, and what Twilio would say about it."""

    path: str
    signature: str
    parameters: dict[str, str] = field(default_factory=dict)
    webhook_s: float | None = None  # the voice webhook's round trip, if there was one


@dataclass(frozen=True, slots=True)
class Line:
    """A bot's phone line: its host and port, and how calls find its media stream."""

    host: str
    port: int
    voice_path: str | None = "/twilio/voice"
    media_path: str = "/twilio/media"
    public_url: str = PUBLIC_URL
    auth_token: str = AUTH_TOKEN

    def sign(self, url: str, params: dict[str, str] | None = None) -> str:
        return RequestValidator(self.auth_token).compute_signature(url, params or {})

    async def stream_for(self, call_sid: str, from_number: str, to_number: str, timeout: float = 10.0) -> Stream:
        if self.voice_path is None:
            return Stream(self.media_path, self.sign(self.public_url.replace("https://", "wss://") + self.media_path))
        form = {
            "AccountSid": ACCOUNT_SID, "ApiVersion": "2010-04-01", "CallSid": call_sid, "CallStatus": "ringing",
            "Direction": "inbound", "From": from_number, "Caller": from_number, "To": to_number, "Called": to_number,
        }
        began = time.monotonic()
        async with asyncio.timeout(timeout):
            status, body = await self._post(self.voice_path, form)
        webhook_s = time.monotonic() - began
        if status != 200:
            raise ConnectionError(f"voice webhook answered {status}: {body[:200]!r}")
        url, parameters = stream_of(body)
        split = urlsplit(url)
        path = split.path + (f"?{split.query}" if split.query else "")
        return Stream(path, self.sign(url), parameters, webhook_s)

    async def _post(self, path: str, form: dict[str, str]) -> tuple[int, bytes]:
        body = urlencode(form).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: TwilioProxy/1.1\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
            f"X-Twilio-Signature: {self.sign(self.public_url + path, form)}\r\nConnection: close\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(head.encode() + body)
            status = int((await reader.readline()).split()[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            answer = await (reader.readexactly(length) if length is not None else reader.read())
        finally:
            writer.close()
        return status, answer


def stream_of(twiml: bytes) -> tuple[str, dict[str, str]]:
    """The `<Connect><Stream>` URL of a TwiML answer, and its `<Parameter>`s."""
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise ConnectionError(f"the voice webhook's TwiML connects no stream: {twiml[:200]!r}")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), parameters
