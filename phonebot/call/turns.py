"""Whose turn it is: a model that has stalled, a caller who has gone silent, a model still at work.

The session reports the few things that change whose turn it is (the caller spoke or pressed a
key, the caller cut the bot short, the model finished an utterance busy or idle) and asks, on
one timer per call, what is due:

- a stall: the caller has had their say and the model has produced nothing since (no audio, no
  tool call, no background work) for `stall_s`. It is nudged once, with realtime text, and
  counted. (A premature turnComplete with no audio leaves callers in silence: python-genai #2117.)
- a silent caller: the line has been the caller's (no bot audio playing, the model idle, no tool
  running) and they have said nothing for `silence_s`: the bot checks in; silent that long again
  right after, the bot says goodbye and the call ends.

Caller speech is known from the model's transcription of it and from keypresses, so nothing here
runs per audio frame; what the bot has produced (`output`: playback turns and tool calls so far)
is read when the timer fires. Pure bookkeeping: the session does what `due` returns.
"""

from __future__ import annotations

from typing import Literal

STALL_S = 5.0  # after the caller's last words, this long with nothing from the model is a stall
BUSY_CAP_S = 30.0  # background work the model says is in progress holds the line this long at most
CHECK_EVERY_S = 0.5  # how often the session asks what is due

Action = Literal["nudge", "check_in", "goodbye"]


class TurnTaking:
    def __init__(self, now: float, silence_s: float, stall_s: float | None = None) -> None:
        self.silence_s = silence_s
        self.stall_s = STALL_S if stall_s is None else stall_s
        self.nudges = 0  # stalls nudged on this call (a metric reads it)
        self.check_ins = 0  # silent spells in a row since the caller last spoke
        self._busy_since: float | None = None  # the model said more is coming (extended thinking)
        self._caller_at = now  # the caller's last words (or the start of the call)
        self._free_since: float | None = None  # since when the line has been the caller's
        # The bot output count when the caller took their turn, until the model produces more;
        # the call starts waiting for the greeting.
        self._awaiting: int | None = 0
        self._nudged = False

    # -- what the session reports ----------------------------------------------------------

    def caller_spoke(self, now: float, output: int, bot_has_floor: bool) -> None:
        """The caller's words were transcribed, or they pressed a key. Words heard while the bot
        has the line (often the transcription of what it is answering, arriving late) do not
        start a wait for an answer; the caller cutting in does (`cut_in`)."""
        self._caller_at = now
        self.check_ins = 0
        self._answered(output)
        if not bot_has_floor and self._awaiting is None:
            self._await(output)

    def cut_in(self, now: float, output: int) -> None:
        """The caller cut the bot short: the model owes them an answer."""
        self._caller_at = now
        self.check_ins = 0
        self._busy_since = None
        self._awaiting = None
        self._await(output)

    def model_turn(self, now: float, idle: bool) -> None:
        """The model finished an utterance; `idle`: and has nothing more coming."""
        if idle:
            self._busy_since = None
        elif self._busy_since is None:
            self._busy_since = now

    def busy(self, now: float) -> bool:
        """Whether the model is still working on what it was asked (within reason)."""
        return self._busy_since is not None and now - self._busy_since < BUSY_CAP_S

    # -- what is due -------------------------------------------------------------------------

    def due(self, now: float, output: int, bot_has_floor: bool) -> Action | None:
        """`bot_has_floor`: bot audio is playing, a tool is at work or the call is being ended."""
        self._answered(output)
        if bot_has_floor or self.busy(now):
            self._free_since = None
            return None
        if self._awaiting is not None and not self._nudged and now - self._caller_at >= self.stall_s:
            self._nudged = True
            self.nudges += 1
            return "nudge"
        if self._free_since is None:
            self._free_since = now
        if now - max(self._free_since, self._caller_at) < self.silence_s:
            return None
        self._free_since = now  # the clock starts again once the bot's words are over
        self.check_ins += 1
        return "check_in" if self.check_ins == 1 else "goodbye"

    def _await(self, output: int) -> None:
        self._awaiting = output
        self._nudged = False

    def _answered(self, output: int) -> None:
        if self._awaiting is not None and output > self._awaiting:
            self._awaiting = None
