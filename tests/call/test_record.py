"""The call record: one timeline assembled from the call's events; bot turns hold what was heard."""

from __future__ import annotations

import asyncio
from typing import Any

from phonebot.call.playback import Playback
from phonebot.call.ports import CallInfo
from phonebot.call.record import CallRecord, Digit, EndReason, Entry, ToolRecord, Turn
from tests import audio
from tests.conftest import Service
from tests.fakes.gemini_live import FakeLiveServer
from tests.phone import FORM, answer, expected_mulaw_bytes

MS = 8  # samples per millisecond at 8 kHz
INFO = CallInfo("CA1", "+14155550123", "+14155550199")


class ListSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.fragments: list[tuple[int, str, str]] = []  # turns in progress, as each fragment came

    def started(self, record: CallRecord) -> None:
        self.events.append(("started", record.call_sid))

    def entry(self, record: CallRecord, entry: Entry) -> None:
        match entry:
            case Turn():
                self.events.append(("entry", (entry.seq, entry.role, entry.text, entry.interrupted)))
            case ToolRecord():
                self.events.append(("entry", (entry.seq, entry.name, entry.ok, entry.done)))
            case Digit():
                self.events.append(("entry", (entry.seq, entry.digit)))

    def progress(self, record: CallRecord, entry: Entry) -> None:
        assert isinstance(entry, Turn)
        self.fragments.append((entry.seq, entry.role, entry.text))

    def ended(self, record: CallRecord) -> None:
        self.events.append(("ended", record.end_reason))


def speak(playback: Playback, record: CallRecord, text: str, ms: int) -> list[str]:
    """The model sends a fragment of the bot's words, then `ms` of the audio that goes with it."""
    record.said("bot", text)
    marks = []
    for _ in range(ms // 20):
        if (mark := playback.sent(20 * MS * 2)) is not None:
            marks.append(mark)
    return marks


def test_a_barged_in_turn_keeps_the_fragments_and_words_that_were_heard() -> None:
    playback = Playback(8000)
    record = CallRecord(INFO, playback)
    marks = speak(playback, record, "Hello, thank you for calling.", 1000)
    marks += speak(playback, record, " We are open from nine", 1000)
    marks += speak(playback, record, " until five.", 1000)
    for mark in marks:
        if int(mark.split(":")[1]) <= 1500 * MS:
            playback.heard(mark)  # the caller has heard 1.5 s
    playback.interrupt()
    record.cut_short(playing=True)
    for mark in marks:
        playback.heard(mark)  # Twilio echoes every pending mark on `clear`: not heard
    record.said("caller", "Sorry, wait")
    assert [(t.role, t.text, t.interrupted) for t in record.turns] == [
        ("bot", "Hello, thank you for calling. We are", True),  # half of " We are open from nine"
        ("caller", "Sorry, wait", False),
    ]


def test_words_the_model_sent_before_any_of_their_audio_played_are_not_heard() -> None:
    playback = Playback(8000)
    record = CallRecord(INFO, playback)
    record.said("bot", "Let me check that for you.")  # the transcription is ahead of the audio
    playback.interrupt()
    record.cut_short(playing=False)
    assert [(t.text, t.interrupted) for t in record.turns] == [("", True)]
    record.said("bot", "Sure.")  # a new turn: the cut one takes no more
    assert [t.text for t in record.turns] == ["", "Sure."]


def test_a_turn_that_was_all_heard_is_not_cut_by_a_late_interruption() -> None:
    playback = Playback(8000)
    record = CallRecord(INFO, playback)
    marks = speak(playback, record, "Goodbye.", 200)
    marks.append(playback.last_mark() or "")
    playback.finish()
    for mark in marks:
        playback.heard(mark)
    playback.interrupt()
    record.cut_short(playing=False)
    assert [(t.text, t.interrupted) for t in record.turns] == [("Goodbye.", False)]


def test_hanging_up_on_the_bot_cuts_its_turn_short() -> None:
    playback = Playback(8000)
    record = CallRecord(INFO, playback)
    record.said("caller", "What are your hours?")
    marks = speak(playback, record, "We open at nine", 500)
    marks += speak(playback, record, " and close at five.", 500)
    playback.heard(marks[4])  # 500 ms
    record.end(EndReason.CALLER_HUNG_UP)
    assert [(t.text, t.interrupted) for t in record.turns] == [
        ("What are your hours?", False),
        ("We open at nine", True),
    ]


def test_entries_reach_the_sink_in_timeline_order_as_each_is_finished() -> None:
    sink = ListSink()
    playback = Playback(8000)
    record = CallRecord(INFO, playback, sink)
    record.said("bot", "Hello.")
    record.said("caller", "Book me")
    record.said("caller", " in, please.")
    entry = record.tool_started("book_appointment", {"service": "Check-up"})
    record.digit("3")
    record.tool_finished(entry, {"reference": "K7M4PX"}, ok=True)
    record.said("bot", "Done.")
    record.end(EndReason.BOT_ENDED)
    record.end(EndReason.ERROR)  # once ended, always ended
    assert sink.events == [
        ("started", "CA1"),
        ("entry", (1, "bot", "Hello.", False)),  # finished when the caller spoke
        ("entry", (3, "book_appointment", False, False)),  # what was asked, at once
        ("entry", (4, "3")),
        ("entry", (3, "book_appointment", True, True)),  # ... and its result
        ("entry", (2, "caller", "Book me in, please.", False)),  # finished when the bot spoke
        ("entry", (5, "bot", "Done.", False)),  # the turn in progress, at the end
        ("ended", EndReason.BOT_ENDED),
    ]
    assert [entry.seq for entry in record.entries()] == [1, 2, 3, 4, 5]
    assert record.end_reason == "bot_ended" and record.ended_at is not None
    # Live views (the softphone page) also see each turn as it grows, fragment by fragment.
    assert sink.fragments == [
        (1, "bot", "Hello."),
        (2, "caller", "Book me"),
        (2, "caller", "Book me in, please."),
        (5, "bot", "Done."),
    ]


async def test_barge_in_transcript_holds_only_what_the_caller_heard(service: Service, gemini: FakeLiveServer) -> None:
    """Over real sockets: the fake Twilio caller plays at 8 kHz and echoes every pending mark on
    `clear`; the bot's turn must keep only the words whose audio played before the barge-in."""
    call, session = await answer(service, gemini)
    await session.wait_for_text("Greet")
    second = 2 * 24000  # bytes of one second of 24 kHz audio
    speech = audio.tone(440, 24000, 3.0)
    for index, text in enumerate(["Hello, thank you for calling.", " We are open from nine", " until five."]):
        await session.send_output_transcription(text)  # the whole turn at once, as Gemini sends it
        await session.send_audio(speech[index * second : (index + 1) * second], chunk_bytes=2400)
    await session.send_turn_complete()
    await call.wait_for_audio(expected_mulaw_bytes(speech))
    await call.wait_for_mark(f"0:{1400 * MS}", timeout=5)  # 1.4 s has played
    await session.send_input_transcription("Sorry, do you open on Saturdays?")  # over the bot: a barge-in
    await call.wait_for_clear()
    active = service.calls.active[FORM["CallSid"]]
    await asyncio.sleep(0.2)  # Twilio's echoes of the cleared marks are in by now
    assert len(call.marks_sent_back) == 30  # every mark came back, heard or not
    assert 1400 <= active.playback.turns[0].heard_ms <= 1500
    assert [(t.role, t.text, t.interrupted) for t in active.record.turns] == [
        ("bot", "Hello, thank you for calling. We are", True),
        ("caller", "Sorry, do you open on Saturdays?", False),
    ]
    await call.stop()
