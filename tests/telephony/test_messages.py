"""Twilio's Media Streams JSON, exactly as Twilio sends it (numbers as strings)."""

from __future__ import annotations

import base64
import json

import pytest

from phonebot.telephony import messages

START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC123",
        "streamSid": "MZ123",
        "callSid": "CA123",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"from": "+14155550123", "direction": "inbound"},
    },
    "streamSid": "MZ123",
}


def test_start() -> None:
    start = messages.parse(json.dumps(START))
    assert start == messages.Start(
        stream_sid="MZ123",
        call_sid="CA123",
        account_sid="AC123",
        custom_parameters={"from": "+14155550123", "direction": "inbound"},
    )


def test_media_payload_is_decoded_once_here() -> None:
    frame = bytes(range(160))
    text = json.dumps(
        {
            "event": "media",
            "sequenceNumber": "3",
            "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": base64.b64encode(frame).decode()},
            "streamSid": "MZ123",
        }
    )
    assert messages.parse(text) == messages.Media(mulaw=frame, track="inbound", chunk=1, timestamp_ms=5)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"event": "connected", "protocol": "Call", "version": "1.0.0"}, messages.Connected("Call")),
        (
            {
                "event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "5",
                "dtmf": {"track": "inbound_track", "digit": "#"},
            },
            messages.Dtmf("#"),
        ),
        (
            {"event": "mark", "sequenceNumber": "4", "streamSid": "MZ1", "mark": {"name": "0:800"}},
            messages.Mark("0:800"),
        ),
        (
            {
                "event": "stop", "sequenceNumber": "5", "streamSid": "MZ1",
                "stop": {"accountSid": "AC1", "callSid": "CA1"},
            },
            messages.Stop(),
        ),
        ({"event": "bogus"}, messages.Unknown("bogus")),
    ],
)
def test_other_events(message: dict, expected: messages.Message) -> None:
    assert messages.parse(json.dumps(message)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '{"event": "media", "media": {"payload": "%%%"}}',
        '{"event": "media", "media": {"payload": "AAA"}}',  # bad padding
        '{"event": "media"}',
        '{"event": "start", "start": {}}',
        '{"event": "dtmf", "dtmf": null}',
        '{"event": "media", "media": {"payload": "AAAA", "chunk": "one"}}',
    ],
)
def test_malformed_is_a_protocol_error(text: str) -> None:
    with pytest.raises(messages.ProtocolError):
        messages.parse(text)


def test_outbound_messages_are_what_twilio_expects() -> None:
    media = json.loads(messages.media("MZ1", b"\xff\x7f"))
    assert media == {"event": "media", "streamSid": "MZ1", "media": {"payload": base64.b64encode(b"\xff\x7f").decode()}}
    assert json.loads(messages.mark("MZ1", "3:160")) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "3:160"}}
    assert json.loads(messages.clear("MZ1")) == {"event": "clear", "streamSid": "MZ1"}
