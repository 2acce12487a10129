"""Whatever the model's side sends, through the real google-genai SDK to the running app, costs at
most that message, never the call. The good call measures that nothing it carries is lost."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from phonebot import codec
from tests.call.test_tool_runtime import wait_for_response
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer, FakeLiveSession, audio_message
from tests.phone import FORM, Intact, answer

# Each is one server message a careless or broken service might send.
MALFORMED: list[Any] = [
    [],
    "x",
    5,
    None,
    {"serverContent": "x"},
    {"serverContent": []},
    {"serverContent": {"modelTurn": "x"}},
    {"serverContent": {"modelTurn": {"parts": "x"}}},
    {"serverContent": {"modelTurn": {"parts": [5, None, "x", {"inlineData": 5}, {"inlineData": {"data": 5}}]}}},
    {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": "!!!not base64"}}]}}},
    {"serverContent": {"inputTranscription": "x"}},
    {"serverContent": {"inputTranscription": {"text": 5}}},
    {"serverContent": {"outputTranscription": {"text": ["a"]}}},
    {"serverContent": {"interrupted": "yes"}},
    {"toolCall": 5},
    {"toolCall": {"functionCalls": 5}},
    {"toolCall": {"functionCalls": [5, None, {"id": 5, "name": "end_call"}]}},
    {"toolCall": {"functionCalls": [{"id": "c9", "name": "end_call", "args": []}]}},
    {"toolCall": {"functionCalls": [{"id": "c8", "name": 7, "args": {}}]}},
    {"toolCallCancellation": {"ids": 5}},
    {"toolCallCancellation": {"ids": [1, 2]}},
    {"toolCallCancellation": "x"},
    {"sessionResumptionUpdate": {"newHandle": 5, "resumable": True}},
    {"sessionResumptionUpdate": {"newHandle": "h", "resumable": True, "lastConsumedClientMessageIndex": "x"}},
    {"sessionResumptionUpdate": {"newHandle": "h", "resumable": True, "lastConsumedClientMessageIndex": "9" * 5000}},
    {"sessionResumptionUpdate": []},
    {"goAway": "x"},
    {"goAway": [{"timeLeft": "1s"}]},
    {"usageMetadata": "x", "setupComplete": 5},
]
RAW: list[str | bytes] = ["{not json", "[" * 100_000, b"\xff\xfe\x00garbage", "1e999", "", "NaN"]


async def _send_all(session: FakeLiveSession) -> None:
    for message in MALFORMED:
        await session.send(message)  # json.dumps takes any value
    for raw in RAW:
        await session.send_raw(raw)


async def test_malformed_model_messages_are_skipped_and_the_call_goes_on(
    service: Service, gemini: FakeLiveServer
) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    await intact.both_ways()
    await _send_all(session)
    await intact.both_ways()
    active = service.calls.active[FORM["CallSid"]]
    assert active.record.tool_calls == []  # no malformed function call ran a tool
    assert all(isinstance(turn.text, str) for turn in active.record.turns)
    assert not session.tool_responses
    assert active.model.reconnects == 0 and not session.closed.is_set()
    await call.stop()


async def test_good_parts_of_a_message_count_when_others_are_malformed(
    service: Service, gemini: FakeLiveServer
) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    await session.send(
        {
            "serverContent": {"inputTranscription": {"text": 5}, "outputTranscription": {"text": "Hello there"}},
            "toolCall": {"functionCalls": [5, {"id": "c1", "name": "no_such_tool", "args": {}}]},
            "toolCallCancellation": {"ids": 5},
        }
    )
    response = await wait_for_response(session, "c1")
    assert response["id"] == "c1" and response["response"]["error"]["code"] == "unknown_tool"
    active = service.calls.active[FORM["CallSid"]]
    assert [(turn.role, turn.text) for turn in active.record.turns] == [("bot", "Hello there")]
    await intact.both_ways()
    await call.stop()


def _mangled(rng: random.Random) -> Any:
    good: list[dict[str, Any]] = [
        {"serverContent": {"outputTranscription": {"text": "hi"}, "turnComplete": True}},
        {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": "AAAA"}}]}}},
        {"toolCallCancellation": {"ids": ["zz"]}},
        {"sessionResumptionUpdate": {"newHandle": "", "resumable": False}},
    ]
    values: list[Any] = [None, 5, -1.5, 1e308, True, "", "x", "!!", [], {}, [[]], {"a": []}, ["x"]]
    message = json.loads(json.dumps(rng.choice(good)))
    node: Any = message
    path = []
    while isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(sorted(node))
        path.append((node, key))
        node = node[key]
        if isinstance(node, list) and node and isinstance(node[0], dict):
            node = node[0]
    if path:
        parent, key = path[-1]
        if rng.random() < 0.2:
            del parent[key]
        else:
            parent[key] = rng.choice(values)
    else:
        message = rng.choice(values)
    return message


@pytest.mark.parametrize("seed", [1, 2])
async def test_fuzz_many_malformed_model_messages_never_end_the_call(
    service: Service, gemini: FakeLiveServer, seed: int
) -> None:
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    rng = random.Random(seed)
    for _ in range(4):
        for _ in range(150):
            message = _mangled(rng)
            # Skip the mutants that stayed well-formed audio: the good call counts every byte.
            if json.dumps(message).count("inlineData") and "AAAA" in json.dumps(message):
                continue
            await session.send(message)
        await intact.both_ways(frames=5)
    assert FORM["CallSid"] in service.calls.active and not session.closed.is_set()
    await call.stop()


async def test_pings_and_a_message_in_fragments_reach_the_call(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    # The model's data frames are read off the connection by gemini/lane.py; a ping is answered by
    # the SDK's websockets as ever, and a fragmented message hands the connection back to websockets.
    call, session = await answer(service, gemini)
    intact = Intact(call, session)
    await intact.both_ways()
    for _ in range(3):
        await asyncio.wait_for(await session._ws.ping(), 5)  # the pong came back
        await intact.both_ways()
    text = json.dumps({"serverContent": {"outputTranscription": {"text": "Hello in three parts"}}})
    await session._ws.send(iter([text[:10], text[10:30], text[30:]]))
    await intact.both_ways()
    await asyncio.wait_for(await session._ws.ping(), 5)
    active = service.calls.active[FORM["CallSid"]]
    heard = [("bot", "Hello in three parts")]
    await wait_until(lambda: [(turn.role, turn.text) for turn in active.record.turns] == heard)
    assert active.model.reconnects == 0 and not session.closed.is_set()
    await call.stop()


async def test_model_audio_already_waiting_reaches_the_caller_whole(
    service: Service, gemini: FakeLiveServer, wait_until: Any
) -> None:
    """A burst of the model's audio read at once (the call behind it) goes to the caller together:
    the same bytes as chunk by chunk, and what came after it (the turn's end) still after it."""
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    rng = random.Random(3)
    pcm = bytes(rng.randrange(256) for _ in range(12 * 1920 + 960))  # 12.5 chunks of 40 ms
    chunks = [pcm[at : at + 1920] for at in range(0, len(pcm), 1920)]
    end = [{"serverContent": {"generationComplete": True}}, {"serverContent": {"turnComplete": True}}]
    await session.send_together([*map(audio_message, chunks), *end])
    expected = codec.pcm_to_mulaw(codec.Downsampler24to8().process(pcm))
    await call.wait_for_audio(len(expected))
    # The turn's last mark comes behind all of its audio, once played.
    await wait_until(lambda: call.marks_sent_back and call.marks_sent_back[-1].endswith(f":{len(expected)}"))
    assert bytes(call.received_audio) == expected
    await call.stop()


async def test_the_model_link_offers_no_compression(service: Service, gemini: FakeLiveServer) -> None:
    """A server that took permessage-deflate would deflate every audio message (CPU both ways, for
    a little bandwidth) and take the link off `lane.py`; this fake would take it: it is not offered."""
    call, session = await answer(service, gemini)
    assert session.headers.get("Sec-WebSocket-Extensions") is None
    await call.stop()
