"""A call in progress: the one place where the caller and the model meet.

Two pumps, one per direction, no queue between them:
- caller -> model: 8 kHz PCM, upsampled to the model's 16 kHz, sent at once;
- model -> caller: 24 kHz PCM, downsampled to 8 kHz, played with a mark behind each chunk.
Barge-in clears the phone's buffer and drops the rest of the interrupted turn.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from phonebot import codec
from phonebot.call.playback import Playback
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
    Transcript,
)

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Turn:
    role: str
    text: str
    offset_ms: int
    interrupted: bool = False


@dataclass(slots=True)
class CallRecord:
    """What happened on the call, for logs now and for call records later."""

    started: float = field(default_factory=time.monotonic)
    turns: list[Turn] = field(default_factory=list)
    end_reason: str = ""

    def offset_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def add_text(self, role: str, text: str) -> None:
        # Transcription arrives in fragments; a turn is the run of one speaker's fragments.
        last = self.turns[-1] if self.turns else None
        if last is not None and last.role == role and not last.interrupted:
            last.text += text
        else:
            self.turns.append(Turn(role, text, self.offset_ms()))


class CallSession:
    def __init__(self, caller: CallerPort, model: ModelPort) -> None:
        self.caller = caller
        self.model = model
        self.info = caller.info
        self.record = CallRecord()
        self.playback = Playback(caller.sample_rate)
        # The codec's resamplers are fixed to the telephone and Gemini rates.
        assert (caller.sample_rate, model.input_rate, model.output_rate) == (8000, 16000, 24000)
        self._up = codec.Upsampler8to16()
        self._down = codec.Downsampler24to8()

    async def run(self) -> str:
        """Bridge until either side ends; returns why the call ended. Closes the model session."""
        pumps = {
            asyncio.create_task(self._caller_to_model(), name=f"caller->model {self.info.call_sid}"),
            asyncio.create_task(self._model_to_caller(), name=f"model->caller {self.info.call_sid}"),
        }
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            self.record.end_reason = _end_reason(done)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await self.model.close()
        log.info(
            "call.ended",
            reason=self.record.end_reason,
            duration_ms=self.record.offset_ms(),
            bot_turns=len(self.playback.turns),
        )
        return self.record.end_reason

    async def _caller_to_model(self) -> str:
        async for event in self.caller.events():
            match event:
                case CallerAudio(pcm=pcm):
                    await self.model.send_audio(self._up.process(pcm))
                case CallerDigit(digit=digit):
                    log.info("call.dtmf", digit=digit)
                    await self.model.send_text(f"(The caller pressed {digit})")
                case PlaybackMark(name=name):
                    self.playback.heard(name)
        return "caller_hung_up"

    async def _model_to_caller(self) -> str:
        async for event in self.model.events():
            match event:
                case BotAudio(pcm=pcm):
                    pcm8k = self._down.process(pcm)
                    await self.caller.play(pcm8k)
                    await self.caller.mark(self.playback.sent(len(pcm8k)))
                case BotInterrupted():
                    await self._barge_in()
                case BotTurnComplete():
                    await self.caller.flush()
                    self.playback.finish()
                case Transcript(role=role, text=text):
                    self.record.add_text(role, text)
                case ModelClosed(code=code, reason=reason):
                    log.warning("call.model_closed", code=code, reason=reason)
                    return "model_closed"
        return "model_closed"

    async def _barge_in(self) -> None:
        await self.caller.clear()  # first: every millisecond here is bot audio talking over the caller
        self._down.reset()
        turn = self.playback.interrupt()
        if self.record.turns and self.record.turns[-1].role == "bot":
            self.record.turns[-1].interrupted = True
        if turn is not None:
            log.info("call.barge_in", turn=turn.index, heard_ms=round(turn.heard_ms), sent_ms=round(turn.sent_ms))


def _end_reason(done: set[asyncio.Task[str]]) -> str:
    task = next(iter(done))
    if task.cancelled():
        return "cancelled"
    if (error := task.exception()) is not None:
        log.error("call.failed", error=repr(error), exc_info=error)
        return "error"
    return task.result()
