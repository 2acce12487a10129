"""A call in progress: the one place where the caller and the model meet.

Two pumps, one per direction, no queue between them:
- caller -> model: 8 kHz PCM, upsampled to the model's 16 kHz, sent at once;
- model -> caller: 24 kHz PCM, downsampled to 8 kHz, played with marks to know what was heard.
Barge-in clears the phone's buffer and drops the rest of the interrupted turn. A third task,
asleep but twice a second, asks `turns` whether a stalled model needs a nudge or a silent
caller a check-in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from phonebot import codec, metrics
from phonebot.call.playback import BotTurn, Playback
from phonebot.call.ports import (
    BotAudio,
    BotInterrupted,
    BotTurnComplete,
    CallerAudio,
    CallerDigit,
    CallerPort,
    ModelClosed,
    ModelPort,
    PlaybackMark,
    ToolCall,
    ToolCallCancelled,
    Transcript,
)
from phonebot.call.record import CallRecord, EndReason, RecordSink
from phonebot.call.tool_runner import ToolRunner
from phonebot.call.turns import CHECK_EVERY_S, TurnTaking
from phonebot.tools.context import ToolContext
from phonebot.tools.spec import ToolSpec

log = structlog.get_logger(__name__)

APOLOGY = (
    "We're sorry, we're having technical difficulties and can't take your call right now. Please call again later."
)
TIME_LIMIT_CUE = "(The call has reached its time limit. Apologise briefly, say goodbye and end the call.)"
NUDGE_CUE = "(The caller has finished speaking and is waiting for your answer. Answer them now.)"
CHECK_IN_CUE = "(The caller has said nothing for a while. Ask them briefly whether they are still there.)"
SILENT_GOODBYE_CUE = "(The caller is still silent. Say a short, polite goodbye; the call will then end.)"

# end_call / transfer_call act once the bot's last words have been heard. If the model says
# nothing more after asking, this long of quiet is enough; and never wait longer than the cap.
QUIET_AFTER_REQUEST_S = 4.0
ACTION_CAP_S = 30.0


@dataclass(slots=True)
class _AfterSpeech:
    """Something to do once the bot has finished speaking (hang up, transfer)."""

    action: Callable[[], Awaitable[None]]
    end_reason: EndReason
    requested: float = field(default_factory=time.monotonic)
    turn_done: bool = False
    # Asked for words (a cue): only a bot turn begun after this many counts, not the one it cut into.
    since_turn: int | None = None

    def bot_done(self, turns: int) -> None:
        """The bot is done speaking, `turns` turns of audio into the call."""
        if self.since_turn is None or turns > self.since_turn:
            self.turn_done = True

    def due(self, playing: bool, busy: bool, now: float) -> bool:
        if now - self.requested > ACTION_CAP_S:
            return True
        if playing or busy:  # busy: the model is between utterances of one answer
            return False
        return self.turn_done or now - self.requested > QUIET_AFTER_REQUEST_S


class CallSession:
    def __init__(
        self,
        caller: CallerPort,
        model: ModelPort,
        tools: Mapping[str, ToolSpec] | None = None,
        bookings: Any = None,
        transfer_to: str | None = None,
        max_duration_s: float = 3600.0,
        sink: RecordSink | None = None,
        caller_silence_s: float = 20.0,
    ) -> None:
        self.caller = caller
        self.model = model
        self.info = caller.info
        self.playback = Playback(caller.sample_rate)
        self.record = CallRecord(self.info, self.playback, sink)
        self._transfer_to = transfer_to
        self._deadline = self.record.started + max_duration_s
        self._after_speech: _AfterSpeech | None = None
        self._hung_up: EndReason | None = None  # we closed the line (`hang_up`), and why
        self._pumps: set[asyncio.Task[EndReason]] = set()
        self._stopped = False
        self._first_audio = True  # no bot audio sent yet (for the first-audio metric)
        self.turns = TurnTaking(self.record.started, caller_silence_s)
        context = ToolContext(self.info.call_sid, self.info.caller_number, bookings=bookings, control=self)
        self.tools = ToolRunner(tools or {}, context, model, self.record)
        # The codec's resamplers are fixed to the telephone and Gemini rates.
        assert (caller.sample_rate, model.input_rate, model.output_rate) == (8000, 16000, 24000)
        self._up = codec.Upsampler8to16()
        self._down = codec.Downsampler24to8()

    async def run(self) -> EndReason:
        """Bridge until either side ends; returns why the call ended. Closes the model session."""
        self._pumps = pumps = {
            asyncio.create_task(self._caller_to_model(), name=f"caller->model {self.info.call_sid}"),
            asyncio.create_task(self._model_to_caller(), name=f"model->caller {self.info.call_sid}"),
            asyncio.create_task(self._watch(), name=f"turns {self.info.call_sid}"),
        }
        if self._stopped:
            self.stop()
        reason = EndReason.SHUTDOWN  # unless a pump ends first
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            reason = _end_reason(done)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await self.tools.aclose()
            await self.model.close()
            self.record.end(reason)
        if reason in (EndReason.MODEL_UNREACHABLE, EndReason.ERROR):
            # Never a silent line: whichever side broke, the caller hears why the call ends.
            await self.caller.redirect(say=APOLOGY, dial=self._transfer_to)
        log.info("call.ended", reason=reason, duration_ms=self.record.offset_ms(), bot_turns=len(self.playback.turns))
        return reason

    async def _caller_to_model(self) -> EndReason:
        async for event in self.caller.events():
            match event:
                case CallerAudio(pcm=pcm):
                    await self.model.send_audio(self._up.process(pcm))
                case CallerDigit(digit=digit):
                    log.info("call.dtmf", digit=digit)
                    self.record.digit(digit)
                    self.turns.caller_spoke(time.monotonic(), self._output(), self._bot_has_floor())
                    await self.model.send_text(f"(The caller pressed {digit})")
                case PlaybackMark(name=name):
                    self.playback.heard(name)
            now = time.monotonic()
            after = self._after_speech
            if after is not None and after.due(self.playback.playing, self.turns.busy(now), now):
                return await self._act()
            if now > self._deadline and self._after_speech is None:
                log.warning("call.time_limit")
                await self.say_goodbye(TIME_LIMIT_CUE, EndReason.MAX_DURATION)
        return self._hung_up or EndReason.CALLER_HUNG_UP

    async def _model_to_caller(self) -> EndReason:
        async for event in self.model.events():
            match event:
                case BotAudio(pcm=pcm):
                    pcm8k = self._down.process(pcm)
                    await self.caller.play(pcm8k)
                    if self._first_audio:  # once per call
                        self._first_audio = False
                        metrics.FIRST_AUDIO.observe(time.monotonic() - self.record.started)
                    if (mark := self.playback.sent(len(pcm8k))) is not None:
                        await self.caller.mark(mark)
                case BotInterrupted():
                    await self._barge_in()
                case BotTurnComplete(idle=idle):
                    if (mark := self.playback.last_mark()) is not None:
                        await self.caller.mark(mark)
                    await self.caller.flush()
                    self.playback.finish()
                    self.turns.model_turn(time.monotonic(), idle)
                    if idle:  # not between the utterances of an answer still being worked on
                        self.record.bot_idle()
                        if self._after_speech is not None:
                            self._after_speech.bot_done(len(self.playback.turns))
                case ToolCall() as call:
                    log.info("call.tool_call", tool=call.name, call_id=call.call_id)
                    self.tools.start(call)
                case ToolCallCancelled(call_ids=call_ids):
                    self.tools.cancel(call_ids)
                case Transcript(role=role, text=text):
                    self.record.said(role, text)
                    if role == "caller" and text.strip():
                        if self.playback.playing and not self.playback.generating:
                            # The model sends audio faster than it plays and only says `interrupted`
                            # while generating: a caller talking over the rest of a finished turn
                            # is heard here, as their words, and stops the bot all the same.
                            await self._barge_in()
                        else:
                            self.turns.caller_spoke(time.monotonic(), self._output(), self._bot_has_floor())
                case ModelClosed(code=code, reason=reason):
                    log.error("call.model_unreachable", code=code, reason=reason)
                    return EndReason.MODEL_UNREACHABLE
        return EndReason.MODEL_UNREACHABLE

    # -- CallControl, for the end_call and transfer_call tools ------------------------------

    async def end_call(self) -> None:
        if self._after_speech is None:  # a goodbye the call asked for keeps its reason
            self._after_speech = _AfterSpeech(self.caller.close, EndReason.BOT_ENDED)

    async def transfer(self) -> None:
        if self._transfer_to is None:
            raise RuntimeError("no transfer number is set")  # the tool is not offered then
        number = self._transfer_to
        self._after_speech = _AfterSpeech(lambda: self.caller.redirect(dial=number), EndReason.TRANSFERRED)

    # -- ending the call from outside: time limit, the service stopping -----------------------

    async def say_goodbye(self, cue: str, reason: EndReason) -> None:
        """End the call through the model: `cue` asks it to say goodbye, and the line closes once
        that has been heard (or the model stays quiet), as `reason`."""
        if self._after_speech is None:
            self._after_speech = _AfterSpeech(self.caller.close, reason, since_turn=len(self.playback.turns))
            await self.model.send_text(cue)

    async def hang_up(self, reason: EndReason) -> None:
        """End the call at once, as `reason`: the line closes, and the caller's side ends."""
        self._hung_up = reason
        await self.caller.close()

    async def silence(self) -> None:
        """Stop the bot's audio now: what the caller has not heard yet is dropped (not a barge-in)."""
        playing, _turn = await self._drop_bot_audio()
        self.record.cut_short(playing)

    def stop(self) -> None:
        """End the call now (or as soon as it runs): `run()` returns `shutdown`, with the record
        finished as usual."""
        self._stopped = True
        for task in self._pumps:
            task.cancel()

    async def _act(self) -> EndReason:
        assert self._after_speech is not None
        log.info("call.after_speech", reason=self._after_speech.end_reason)
        await self._after_speech.action()
        return self._after_speech.end_reason

    async def _barge_in(self) -> None:
        # Freeze the ledger before the `clear` goes out: Twilio answers it by echoing every
        # pending mark at once, and those echoes are audio thrown away, not heard. (A few
        # microseconds; then the clear, since every millisecond is bot audio over the caller.)
        began = time.perf_counter()
        playing, turn = await self._drop_bot_audio()
        metrics.BARGE_IN.observe(time.perf_counter() - began)
        self.record.cut_short(playing)
        self.turns.cut_in(time.monotonic(), self._output())
        if turn is not None:
            log.info("call.barge_in", turn=turn.index, heard_ms=round(turn.heard_ms), sent_ms=round(turn.sent_ms))

    async def _drop_bot_audio(self) -> tuple[bool, BotTurn | None]:
        """Freeze the ledger, then clear the phone's buffer. Whether bot audio was playing, and the turn cut."""
        playing = self.playback.playing
        turn = self.playback.interrupt()
        await self.caller.clear()
        self._down.reset()
        return playing, turn


    # -- turns: a stalled model, a silent caller --------------------------------------------

    async def _watch(self) -> EndReason:
        """Never returns: one timer per call does what `turns` says is due."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            action = self.turns.due(time.monotonic(), self._output(), self._bot_has_floor())
            if action == "nudge":
                log.warning("call.model_stalled", nudges=self.turns.nudges)
                await self.model.send_text(NUDGE_CUE)
            elif action == "check_in":
                log.info("call.caller_silent", check_ins=self.turns.check_ins)
                await self.model.send_text(CHECK_IN_CUE)
            elif action == "goodbye":
                log.info("call.caller_silent", check_ins=self.turns.check_ins)
                await self.say_goodbye(SILENT_GOODBYE_CUE, EndReason.CALLER_SILENT)

    def _output(self) -> int:
        """How much the bot has produced: turns of audio and tool calls, so far."""
        return len(self.playback.turns) + len(self.record.tool_calls)

    def _bot_has_floor(self) -> bool:
        return self.playback.playing or self.playback.generating or self.tools.running or self._after_speech is not None


def _end_reason(done: set[asyncio.Task[EndReason]]) -> EndReason:
    task = next(iter(done))
    if task.cancelled():
        return EndReason.SHUTDOWN
    if (error := task.exception()) is not None:
        log.error("call.failed", error=repr(error), exc_info=error)
        return EndReason.ERROR
    return task.result()
