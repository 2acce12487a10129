"""Turn-taking bookkeeping on a clock of its own: when a stalled model is nudged, when a silent caller
is checked in on, and what never triggers either."""

from __future__ import annotations

from phonebot.call.turns import BUSY_CAP_S, TurnTaking

SILENCE_S = 20.0
STALL_S = 5.0


def ticks(turns: TurnTaking, start: float, end: float, output: int = 1, floor: bool = False) -> list[tuple[float, str]]:
    """What is due at each half second from `start` to `end`."""
    due = []
    now = start
    while now <= end + 1e-9:
        if (action := turns.due(now, output, floor)) is not None:
            due.append((now, action))
        now += 0.5
    return due


def test_a_model_that_says_nothing_after_the_caller_is_nudged_once() -> None:
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    assert ticks(turns, 0.5, 2.0, output=1) == []  # the greeting came
    turns.caller_spoke(10.0, output=1, bot_has_floor=False)
    turns.caller_spoke(11.0, output=1, bot_has_floor=False)  # still talking
    assert ticks(turns, 11.5, 19.0, output=1) == [(16.0, "nudge")]  # once, 5 s after their last words
    assert turns.nudges == 1


def test_an_answer_audio_or_tool_call_is_no_stall() -> None:
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    turns.caller_spoke(1.0, output=0, bot_has_floor=False)
    assert ticks(turns, 1.5, 9.0, output=1) == []  # a new bot turn or tool call since they spoke
    assert turns.nudges == 0


def test_the_greeting_is_awaited_too() -> None:
    turns = TurnTaking(100.0, SILENCE_S, STALL_S)
    assert ticks(turns, 100.5, 106.0, output=0) == [(105.0, "nudge")]


def test_words_heard_while_the_bot_has_the_line_start_no_wait() -> None:
    # Late transcription of what the model is already answering must not look like a new question.
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    turns.caller_spoke(1.0, output=1, bot_has_floor=True)
    assert ticks(turns, 1.5, 9.0, output=1) == []


def test_cutting_the_bot_short_is_owed_an_answer() -> None:
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    turns.cut_in(1.0, output=1)
    assert ticks(turns, 1.5, 7.0, output=1) == [(6.0, "nudge")]


def test_background_work_is_no_stall_until_it_has_gone_on_too_long() -> None:
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    turns.caller_spoke(1.0, output=1, bot_has_floor=False)
    turns.model_turn(1.5, idle=False)  # extended thinking works on (its filler aside, nothing new)
    assert ticks(turns, 2.0, 20.0, output=1) == []
    assert turns.busy(20.0)
    assert not turns.busy(1.5 + BUSY_CAP_S)
    turns.model_turn(21.0, idle=True)
    assert not turns.busy(21.0)


def test_a_silent_caller_is_checked_in_on_then_said_goodbye_to() -> None:
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    assert ticks(turns, 0.5, 4.0, output=1, floor=True) == []  # the greeting plays until 4 s
    due = ticks(turns, 4.5, 60.0, output=1)
    assert due[0] == (24.5, "check_in")  # 20 s from when the line became the caller's
    assert due[1] == (44.5, "goodbye")


def test_the_caller_speaking_resets_the_silence() -> None:
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    assert ticks(turns, 0.5, 20.0, output=1) == []
    assert turns.due(20.5, 1, False) == "check_in"
    turns.caller_spoke(25.0, output=1, bot_has_floor=False)
    assert turns.check_ins == 0
    due = ticks(turns, 25.5, 70.0, output=2)  # the bot answered them
    assert due == [(45.0, "check_in"), (65.0, "goodbye")]


def test_no_silence_while_the_bot_holds_the_line() -> None:
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    assert ticks(turns, 0.5, 100.0, output=1, floor=True) == []  # playing, a tool at work, or hanging up
    turns.model_turn(100.0, idle=False)
    assert ticks(turns, 100.5, 100.0 + BUSY_CAP_S - 0.5, output=1) == []


def test_a_model_waiting_on_a_tool_is_not_stalled() -> None:
    turns = TurnTaking(0.0, SILENCE_S, STALL_S)
    turns.caller_spoke(1.0, output=1, bot_has_floor=False)
    # A tool the model called earlier is still at work (it waits for the result, as on 3.1):
    assert ticks(turns, 1.5, 10.0, output=1, floor=True) == []
    assert ticks(turns, 10.5, 11.0, output=1) == [(10.5, "nudge")]  # its result came, then nothing
