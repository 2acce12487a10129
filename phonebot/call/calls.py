"""Every call this process handles, and model sessions opened before their calls' streams.

Twilio's voice webhook comes a second or so before the media stream connects. Opening
the Live session (and asking for the greeting) at the webhook hides the model's connect
and setup time inside that second, so the greeting is ready when the stream starts.
A stream that finds no early session (another replica took the webhook, or none was
made) opens one itself; the replica that took the webhook then lets its early session and
the call's place go (`handoff.py`). Under `serve --workers N` a stream is handed to the worker
that took its webhook (`phonebot.siblings`); one that could not be tells the other workers at once
(`announce`), and the one holding the call lets it go (`elsewhere`).

An outbound call's session opens once Twilio has created the call, while the phone rings, and
waits up to `stream_within_s` (the ring) for the callee to answer; the greeting is ready by then.

Every call comes in through `admit()`, which counts it against PHONEBOT_MAX_CALLS from then
until it ends (`admission.py`); `wind_down()` and `stop()` end the calls when the service stops.
An outbound call waits for answering-machine detection's verdict (`voicemail.py`) while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from phonebot import metrics
from phonebot.call.admission import Admission, Refusal
from phonebot.call.playback import Playback
from phonebot.call.ports import CallerPort, CallInfo, ModelConnector, ModelPort
from phonebot.call.reconnect import ReconnectPolicy, ResilientModel
from phonebot.call.record import CallRecord, EndReason, RecordSink
from phonebot.call.session import APOLOGY, CallSession
from phonebot.call.voicemail import AnsweringMachine, Verdicts, Voicemail
from phonebot.tools.spec import ToolSpec, offered

GREETING_CUE = "(The call has connected. Greet the caller now.)"
OUTBOUND_GREETING_CUE = "(The person you are calling has answered. Greet them now and say why you are calling.)"
EARLY_SESSION_TTL_S = 30.0  # an early session no stream claims by then is closed

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Early:
    task: asyncio.Task[ModelPort]
    expiry: asyncio.TimerHandle


class Calls:
    def __init__(
        self,
        connector: ModelConnector,
        tools: Sequence[ToolSpec] = (),
        bookings: Any = None,
        transfer_to: str | None = None,
        policy: ReconnectPolicy | None = None,
        max_duration_s: float = 3600.0,
        max_calls: int = 50,
        caller_silence_s: float = 20.0,
    ) -> None:
        self._connector = connector
        self._policy = policy or ReconnectPolicy()
        self._max_duration_s = max_duration_s
        self._caller_silence_s = caller_silence_s
        self._tools: Mapping[str, ToolSpec] = {spec.name: spec for spec in tools}
        self.bookings = bookings  # the booking desk, once the app has opened it
        self.records: RecordSink | None = None  # where call records go, once the app has opened the store
        self.voicemail: Voicemail | None = None  # what an outbound call answered by a machine does
        self.verdicts: Verdicts | None = None  # where answering-machine verdicts are found (the database)
        self._machines: dict[str, AnsweringMachine] = {}  # outbound calls running here, by call_sid
        self._transfer_to = transfer_to
        self._early: dict[str, _Early] = {}
        self.active: dict[str, CallSession] = {}
        self.admission = Admission(max_calls)
        # Told the call_sid of a stream that started here though its call was not admitted here.
        self.announce: Callable[[str], None] | None = None
        self._goodbye: str | None = None  # the service is stopping: what every call is asked to say
        self._stopped = False  # the service is stopping now: every call ends at once
        self._discarding: set[asyncio.Task[None]] = set()
        metrics.known_labels(tuple(Refusal), (*self._tools, metrics.UNKNOWN_TOOL))

    def admit(self, info: CallInfo, stream_within_s: float = EARLY_SESSION_TTL_S, early: bool = True) -> Refusal | None:
        """The way in for every new call (voice webhook, API request, web token): counts it against
        PHONEBOT_MAX_CALLS from now until it ends, and starts opening its model session (`early`);
        or says why it is turned away (full, draining). A call whose stream has not started within
        `stream_within_s` is let go. An outbound call Twilio has not named yet is admitted under a
        name of our own, `early=False`, then `admission.rename()`d and `prepare()`d."""
        refusal = self.admission.admit(info.call_sid, info.direction, stream_within_s)
        if refusal is None and early:
            self.prepare(info, stream_within_s)
        return refusal

    async def release(self, call_sid: str, refused: Refusal | None = None) -> None:
        """A call admitted will not run here: it ended before its stream started (Twilio's status
        callback), or could not be set up (`refused`). Its place and its early session go."""
        self.admission.release(call_sid, refused)
        await self._discard(call_sid)

    def prepare(self, info: CallInfo, ttl_s: float = EARLY_SESSION_TTL_S) -> None:
        """Start opening the call's model session now; its stream will claim it within `ttl_s`."""
        if info.call_sid in self._early or info.call_sid in self.active:
            return
        with structlog.contextvars.bound_contextvars(call_sid=info.call_sid):  # the task's logs carry it
            task = asyncio.create_task(self._open(info), name=f"early model {info.call_sid}")
        expiry = asyncio.get_running_loop().call_later(ttl_s, self._expire, info.call_sid)
        self._early[info.call_sid] = _Early(task, expiry)

    async def run(self, caller: CallerPort) -> EndReason:
        """Run a call whose stream has started, until it ends. Returns the end reason."""
        info = caller.info
        if not self.admission.streaming(info.call_sid, info.direction) and self.announce is not None:
            self.announce(info.call_sid)
        started, reason = time.monotonic(), EndReason.SHUTDOWN  # unless it ends otherwise
        with structlog.contextvars.bound_contextvars(call_sid=info.call_sid):
            try:
                reason = await self._run(caller)
            finally:
                self.admission.release(info.call_sid)
                metrics.CALLS.labels(info.direction, reason).inc()
                metrics.CALL_DURATION.observe(time.monotonic() - started)
        return reason

    async def _run(self, caller: CallerPort) -> EndReason:
        info = caller.info
        log.info("call.started", direction=info.direction, caller=info.caller_number)
        # A call not on a phone line (the softphone's) cannot be transferred, and is offered no tool to.
        tools = {spec.name: spec for spec in offered(self._tools.values(), info.on_phone)}
        transfer_to = self._transfer_to if info.on_phone else None
        try:
            model = await self._claim(info)
        except Exception as error:  # noqa: BLE001 - the call fails, never the server
            log.error("call.model_unreachable", error=repr(error))
            CallRecord(info, Playback(caller.sample_rate), self.records).end(EndReason.MODEL_UNREACHABLE)
            await caller.redirect(say=APOLOGY, dial=transfer_to)
            return EndReason.MODEL_UNREACHABLE
        session = CallSession(
            caller,
            model,
            tools,
            self.bookings,
            transfer_to,
            self._max_duration_s,
            self.records,
            caller_silence_s=self._caller_silence_s,
        )
        self.active[info.call_sid] = session
        watching = self._watch_for_machines(session)
        try:
            if self._stopped:  # its stream started (or its model answered) after everything was stopped
                session.stop()
            elif self._goodbye is not None:  # its stream started while the service is stopping
                await session.say_goodbye(self._goodbye, EndReason.SHUTDOWN)
            return await session.run()
        finally:
            del self.active[info.call_sid]
            if watching is not None:
                watching.cancel()
                self._machines.pop(info.call_sid, None)

    def _watch_for_machines(self, session: CallSession) -> asyncio.Task[None] | None:
        """An outbound call: wait for answering-machine detection's verdict, from wherever it comes."""
        if session.info.direction != "outbound" or self.voicemail is None:
            return None
        machine = AnsweringMachine(session, self.voicemail, self.verdicts)
        self._machines[session.info.call_sid] = machine
        return asyncio.create_task(machine.watch(), name=f"answered by {session.info.call_sid}")

    async def answered(self, call_sid: str, answered_by: str) -> None:
        """Answering-machine detection's verdict on a call (human, machine or unknown). If the call
        runs here, it is acted on now; if elsewhere, the replica that runs it finds it in the database."""
        machine = self._machines.get(call_sid)
        if machine is not None:
            await machine.heard(answered_by)

    async def wind_down(self, cue: str) -> None:
        """The service is stopping: every call is asked to say goodbye through its model and then
        ends; so is any whose stream starts from now on. Sessions no stream has claimed yet go."""
        self._goodbye = cue
        for session in list(self.active.values()):
            await session.say_goodbye(cue, EndReason.SHUTDOWN)
        for call_sid in list(self._early):
            await self.release(call_sid)

    async def stop(self) -> None:
        """End every call now (the service cannot wait any longer): sessions end as `shutdown`, records
        and all, those still getting their model session as soon as they have it; calls whose
        stream has not started are let go."""
        self._stopped = True
        for session in self.active.values():
            session.stop()
        for call_sid in list(self._early):
            await self.release(call_sid)

    async def ended(self, call_sid: str) -> None:
        """Twilio says the call is over. If its stream has not started here, its place and its early
        model session go now (not when the session's TTL runs out); a streaming call ends by itself."""
        if call_sid in self.active or self.admission.is_streaming(call_sid):
            return
        if call_sid in self._early:
            log.info("call.ended_before_stream", call_sid=call_sid)
        await self.release(call_sid)

    async def elsewhere(self, call_sid: str) -> None:
        """The call's stream runs on another replica (or the call ended before any stream, as another
        replica heard): unless its stream has started here meanwhile, its place and early session go."""
        if call_sid in self.active or self.admission.is_streaming(call_sid):
            return
        if call_sid not in self.admission and call_sid not in self._early:
            return  # not ours (news for every worker of the replica)
        log.info("call.streaming_elsewhere", call_sid=call_sid, early_session=call_sid in self._early)
        await self.release(call_sid)

    async def aclose(self) -> None:
        """Close sessions no stream has claimed (shutdown)."""
        for call_sid in list(self._early):
            await self.release(call_sid)

    async def _claim(self, info: CallInfo) -> ModelPort:
        early = self._early.pop(info.call_sid, None)
        if early is None:
            return await self._open(info)
        early.expiry.cancel()
        return await early.task

    async def _open(self, info: CallInfo) -> ModelPort:
        model = await ResilientModel.open(self._connector, info, self._policy)
        try:  # the bot speaks first
            await model.send_text(OUTBOUND_GREETING_CUE if info.direction == "outbound" else GREETING_CUE)
        except BaseException:
            await model.close()
            raise
        return model

    def _expire(self, call_sid: str) -> None:
        log.warning("call.early_session_unclaimed", call_sid=call_sid)
        task = asyncio.create_task(self._discard(call_sid))
        self._discarding.add(task)  # hold a reference until it is done
        task.add_done_callback(self._discarding.discard)

    async def _discard(self, call_sid: str) -> None:
        early = self._early.pop(call_sid, None)
        if early is None:
            return
        early.expiry.cancel()
        early.task.cancel()
        try:
            model = await early.task
            await model.close()
        except asyncio.CancelledError:
            # The session's own task, cancelled above; unless the task discarding it is being
            # cancelled (a shutdown stopping the hand-off), which must stop, not carry on.
            if (current := asyncio.current_task()) is not None and current.cancelling():
                raise
        except Exception:  # noqa: BLE001 - it failed to open, or to close: nothing left to let go
            pass
