"""The mark ledger: sent is not heard."""

from phonebot.call.playback import Playback


def test_marks_every_100_ms_and_at_the_end_of_a_turn() -> None:
    playback = Playback(8000)
    assert [playback.sent(640) for _ in range(6)] == [None, None, "0:960", None, None, "0:1920"]  # 40 ms chunks
    assert playback.sent(320) is None
    assert playback.last_mark() == "0:2080"
    assert playback.last_mark() is None  # already out


def test_heard_follows_marks_and_freezes_on_barge_in() -> None:
    playback = Playback(8000)
    first = playback.sent(1600)  # 100 ms
    second = playback.sent(1600)
    assert (first, second) == ("0:800", "0:1600")
    assert playback.playing
    playback.heard(first)
    turn = playback.interrupt()
    assert turn is not None and turn.heard_ms == 100 and turn.sent_ms == 200
    playback.heard(second)  # echoed by Twilio's clear: thrown away, not heard
    assert turn.heard_ms == 100
    assert not playback.playing


def test_finished_turn_keeps_counting_and_next_turn_is_new() -> None:
    playback = Playback(8000)
    mark = playback.sent(1600)
    playback.finish()
    playback.heard(mark)
    assert playback.turns[0].heard_ms == 100 and playback.turns[0].finished
    assert playback.sent(1600) == "1:800"


def test_foreign_marks_are_ignored() -> None:
    playback = Playback(8000)
    for name in ("", "x", "7:100", "0:abc"):
        playback.heard(name)
    assert playback.turns == []


def test_marks_that_look_like_ours_but_are_not_are_ignored() -> None:
    playback = Playback(8000)
    playback.sent(1600)
    for name in ("²:1", "0:²", "٣:1", "0:" + "9" * 5000, "9" * 5000 + ":1", "0:1:2", " 0:1", "0:800\n"):
        playback.heard(name)  # none of them raises
    assert playback.turns[0].heard_samples == 0
    playback.heard("0:" + "9" * 15)
    assert playback.turns[0].heard_samples == 800  # never more than was sent
