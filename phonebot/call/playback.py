"""The mark ledger: how much of each bot turn the caller has actually heard.

Audio is sent to the phone faster than it plays, so "sent" is not "heard". Every 100 ms
of audio, and at the end of each turn, the call asks the telephony side for a mark named
after the turn and the audio sent so far; the mark comes back once that audio has played.
(A mark per model chunk would double the messages to the phone for no use.) On barge-in
the turn is frozen: marks that come back after the `clear` are for audio thrown away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARK_EVERY_MS = 100
# Our mark names, and only those: ASCII digits of sane length ("²" is a digit to str.isdigit(),
# and 5000 digits are more than int() takes).
_OUR_MARK = re.compile(r"(\d{1,9}):(\d{1,15})", re.ASCII)


@dataclass(slots=True)
class BotTurn:
    index: int
    sample_rate: int
    sent_samples: int = 0
    marked_samples: int = 0
    heard_samples: int = 0
    interrupted: bool = False
    finished: bool = False

    @property
    def sent_ms(self) -> float:
        return self.sent_samples * 1000 / self.sample_rate

    @property
    def heard_ms(self) -> float:
        return self.heard_samples * 1000 / self.sample_rate


class Playback:
    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.turns: list[BotTurn] = []
        self._current: BotTurn | None = None

    def sent(self, pcm_bytes: int) -> str | None:
        """Count audio sent to the caller; returns the name of a mark to send after it, when one is due."""
        turn = self._current
        if turn is None:
            turn = self._current = BotTurn(len(self.turns), self.sample_rate)
            self.turns.append(turn)
        turn.sent_samples += pcm_bytes // 2
        if (turn.sent_samples - turn.marked_samples) * 1000 < MARK_EVERY_MS * self.sample_rate:
            return None
        return self._mark(turn)

    def last_mark(self) -> str | None:
        """The mark for the end of the current turn, unless one is out already."""
        turn = self._current
        if turn is None or turn.marked_samples == turn.sent_samples:
            return None
        return self._mark(turn)

    @staticmethod
    def _mark(turn: BotTurn) -> str:
        turn.marked_samples = turn.sent_samples
        return f"{turn.index}:{turn.sent_samples}"

    def heard(self, mark: str) -> None:
        """A mark came back: its audio has played. Names that are not ours are ignored."""
        ours = _OUR_MARK.fullmatch(mark)
        if ours is None or int(ours[1]) >= len(self.turns):
            return
        turn = self.turns[int(ours[1])]
        if not turn.interrupted:
            # Never more than was sent: a forged mark cannot claim the caller heard more.
            turn.heard_samples = max(turn.heard_samples, min(int(ours[2]), turn.sent_samples))

    def interrupt(self) -> BotTurn | None:
        """The caller barged in: freeze the turn they were hearing at what was heard by now."""
        turn, self._current = self._current, None
        if turn is None and self.turns and self.playing:
            turn = self.turns[-1]  # finished generating, still playing
        if turn is not None:
            turn.interrupted = True
        return turn

    @property
    def generating(self) -> bool:
        """Whether the model is still sending audio for the current turn."""
        return self._current is not None

    def finish(self) -> BotTurn | None:
        """The model finished the turn; its marks may still be coming back."""
        turn, self._current = self._current, None
        if turn is not None:
            turn.finished = True
        return turn

    @property
    def playing(self) -> bool:
        """Whether the caller still has bot audio to hear."""
        return any(not t.interrupted and t.heard_samples < t.sent_samples for t in self.turns[-2:])
