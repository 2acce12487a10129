"""The call record: what happened on a call, assembled from the events the session reports.

The session tells the record what was said (transcription fragments), which tools ran, which
digits were pressed, when the caller cut the bot short and why the call ended; the record turns
that into one timeline of entries (`Turn`, `ToolRecord`, `Digit`, numbered in order) and hands
each finished entry to a `RecordSink` (the store) as the call goes. Sinks never block: the
record is written off the audio path.

Heard-only bot turns. The model sends the bot's words as transcription fragments interleaved
with its audio. Each bot fragment is pinned to where the bot's audio stood when it arrived: the
playback turn and the samples sent in it so far. The fragment covers the audio from there to the
next fragment (or the end of that turn's audio). When the caller cuts the bot short, the mark
ledger (`Playback`) says how much of each turn was heard, and the turn keeps the fragments (and
the words of a fragment, in proportion) whose audio was heard, and no more. Marks Twilio echoes
on a `clear` are not counted as heard (the ledger freezes the turn first).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from phonebot.call.playback import BotTurn, Playback
from phonebot.call.ports import CallInfo

Role = Literal["caller", "bot"]


class EndReason(StrEnum):
    """Why a call ended: one value per way a call can end, as stored, sent and counted."""

    CALLER_HUNG_UP = "caller_hung_up"
    BOT_ENDED = "bot_ended"  # the end_call tool, after the goodbye was heard
    TRANSFERRED = "transferred"
    MAX_DURATION = "max_duration"
    CALLER_SILENT = "caller_silent"  # checked in on, still silent: the bot said goodbye
    MODEL_UNREACHABLE = "model_unreachable"
    ERROR = "error"
    SHUTDOWN = "shutdown"  # the service stopped while the call went on
    SERVICE_RESTART = "service_restart"  # the process died mid-call; finalised at the next start
    # An outbound call answered by a machine (PHONEBOT_VOICEMAIL): a message left after the beep, or none.
    VOICEMAIL_LEFT = "voicemail_left"
    ANSWERING_MACHINE = "answering_machine"
    # Calls that ended before their media stream started, as Twilio's status callback says.
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    FAILED = "failed"
    CANCELED = "canceled"
    NO_STREAM = "no_stream"  # the stream never started and Twilio never said how the call ended


@dataclass(slots=True)
class _Fragment:
    text: str
    turn: int  # index of the playback turn whose audio it came with
    start: int  # samples of that turn sent when it arrived


@dataclass(slots=True)
class Turn:
    role: Role
    text: str
    offset_ms: int
    interrupted: bool = False
    seq: int = 0  # place on the call's timeline
    fragments: list[_Fragment] = field(default_factory=list, repr=False)  # bot turns: where each piece was said


@dataclass(slots=True)
class ToolRecord:
    name: str
    args: dict[str, Any]
    offset_ms: int
    result: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    done: bool = False
    seq: int = 0


@dataclass(slots=True)
class Digit:
    digit: str
    offset_ms: int
    seq: int = 0


Entry = Turn | ToolRecord | Digit


class RecordSink(Protocol):
    """Where a call's record goes as the call goes (the store). Every method returns at once."""

    def started(self, record: CallRecord) -> None: ...

    def entry(self, record: CallRecord, entry: Entry) -> None:
        """A new or changed entry (the same `seq` again replaces the earlier version)."""

    def progress(self, record: CallRecord, entry: Entry) -> None:
        """An entry still being said (a turn, as each fragment comes): for live views, not to keep."""

    def ended(self, record: CallRecord) -> None: ...


def merge_fragment(
    turns: list[Turn], role: Role, text: str, offset_ms: int, fresh: bool = False
) -> tuple[Turn, bool]:
    """Transcription arrives in fragments; a turn is the run of one speaker's fragments (a turn
    cut short takes no more; `fresh`: nor one that is over). Returns the turn the text went to,
    and whether it is new."""
    last = turns[-1] if turns else None
    if last is not None and last.role == role and not last.interrupted and not fresh:
        last.text += text
        return last, False
    turn = Turn(role, text, offset_ms)
    turns.append(turn)
    return turn, True


class CallRecord:
    def __init__(self, info: CallInfo, playback: Playback, sink: RecordSink | None = None) -> None:
        self.info = info
        self.call_sid = info.call_sid
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.ended_at: datetime | None = None
        self.turns: list[Turn] = []
        self.tool_calls: list[ToolRecord] = []
        self.dtmf: list[Digit] = []
        self.end_reason: EndReason | None = None
        self._playback = playback
        self._sink = sink
        self._seq = 0
        self._bot_done = False  # the model went idle since the bot's last words
        if sink is not None:
            sink.started(self)

    def offset_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def entries(self) -> list[Entry]:
        """Every entry, in timeline order."""
        return sorted([*self.turns, *self.tool_calls, *self.dtmf], key=lambda entry: entry.seq)

    # -- what the session reports ---------------------------------------------------------

    def said(self, role: Role, text: str) -> None:
        """A transcription fragment of the caller's or the bot's speech."""
        fresh = role == "bot" and self._bot_done
        if role == "bot":
            self._bot_done = False
        turn, new = merge_fragment(self.turns, role, text, self.offset_ms(), fresh)
        if new:
            turn.seq = self._next_seq()
            if len(self.turns) > 1:
                self._report(self.turns[-2])  # the turn before is finished
        if role == "bot":
            index, sent = self._audio_position()
            turn.fragments.append(_Fragment(text, index, sent))
        if self._sink is not None:
            self._sink.progress(self, turn)

    def bot_idle(self) -> None:
        """The model has finished (idle, not just between utterances): the bot's next words are a
        new turn, even with no caller words between (a check-in on a silent caller, say)."""
        self._bot_done = True

    def digit(self, digit: str) -> None:
        entry = Digit(digit, self.offset_ms(), self._next_seq())
        self.dtmf.append(entry)
        self._report(entry)

    def tool_started(self, name: str, args: dict[str, Any]) -> ToolRecord:
        entry = ToolRecord(name, args, self.offset_ms(), seq=self._next_seq())
        self.tool_calls.append(entry)
        self._report(entry)
        return entry

    def tool_finished(self, entry: ToolRecord, result: dict[str, Any], ok: bool) -> None:
        entry.result, entry.ok, entry.done = result, ok, True
        self._report(entry)

    def cut_short(self, playing: bool) -> None:
        """The caller barged in (or hung up) on the bot: its last turn keeps only what they heard.

        Call it after the ledger has frozen the interrupted turn (`Playback.interrupt`); `playing`:
        whether bot audio was still playing then. The caller may have been transcribed before the
        model said `interrupted`, so this is the last bot turn, not necessarily the last turn.
        """
        turn = next((t for t in reversed(self.turns) if t.role == "bot"), None)
        if turn is None or turn.interrupted:
            return
        heard = heard_text(turn.fragments, self._playback.turns)
        if not playing and heard == turn.text.rstrip():
            return  # all of it was heard and nothing was playing: nothing was cut
        turn.interrupted, turn.text = True, heard
        self._report(turn)

    def end(self, reason: EndReason) -> None:
        """The call is over: settle the turn in progress and hand the whole record to the sink."""
        if self.end_reason is not None:
            return
        if reason == EndReason.CALLER_HUNG_UP and self._playback.playing:
            self.cut_short(playing=True)  # they hung up on the bot mid-sentence
        self.end_reason = reason
        self.ended_at = datetime.now(UTC)
        if self.turns:
            self._report(self.turns[-1])
        if self._sink is not None:
            self._sink.ended(self)

    # -- inside -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _report(self, entry: Entry) -> None:
        if self._sink is not None:
            self._sink.entry(self, entry)

    def _audio_position(self) -> tuple[int, int]:
        """Where the bot's audio stands: the playback turn the next audio goes to, and its samples sent."""
        turns = self._playback.turns
        if self._playback.generating:
            return len(turns) - 1, turns[-1].sent_samples
        return len(turns), 0  # between turns: the fragment comes with the next turn's audio


def heard_text(fragments: list[_Fragment], turns: list[BotTurn]) -> str:
    """The part of the fragments whose audio the caller heard, by the ledger's count."""
    heard = []
    for position, fragment in enumerate(fragments):
        if fragment.turn >= len(turns):
            break  # its audio never started playing
        turn = turns[fragment.turn]
        following = fragments[position + 1] if position + 1 < len(fragments) else None
        end = following.start if following is not None and following.turn == fragment.turn else turn.sent_samples
        if turn.heard_samples >= end:
            heard.append(fragment.text)
            continue
        if turn.heard_samples > fragment.start:
            heard.append(_leading_words(fragment.text, (turn.heard_samples - fragment.start) / (end - fragment.start)))
        break  # the caller heard nothing after this
    return "".join(heard).rstrip()


def _leading_words(text: str, fraction: float) -> str:
    """The words of `text` that lie wholly within its first `fraction` (speech taken as even)."""
    cut = fraction * len(text)
    kept = 0
    for word in re.finditer(r"\S+", text):
        if word.end() > cut:
            break
        kept = word.end()
    return text[:kept]
