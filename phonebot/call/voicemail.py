"""Answering machines on outbound calls: what the bot does once detection says who answered.

An outbound call is connected the moment it is answered and the bot speaks at once: a person
never waits for the detection. Twilio's asynchronous detection (DetectMessageEnd) says who
answered a few seconds later; for a machine, once its greeting is over and its beep has sounded,
when it is recording.

- a person, or no verdict: nothing changes; the conversation goes on.
- a machine (or a fax), PHONEBOT_VOICEMAIL=message: the bot's audio still to play is dropped, its
  instructions become "leave this message" (the call's own instructions stay: they are part of
  the call's context), it is cued to speak, and the call ends once the message has been heard
  (`voicemail_left`).
- PHONEBOT_VOICEMAIL=hangup: the call ends at once (`answering_machine`).

Twilio's callback may reach any replica, not necessarily the one that runs the call. The one that
receives it records the verdict in the database and, if it runs the call, acts at once; the
replica that runs an outbound call also looks for the verdict in the database (`Verdicts`) every
`POLL_S` until it has one, for up to `WATCH_S` after the call connected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from phonebot.call.record import EndReason
from phonebot.call.session import CallSession

log = structlog.get_logger(__name__)

POLL_S = 0.5  # how soon a verdict given to another replica is acted on here
WATCH_S = 90.0  # detection answers within ~30 s of the pickup (Twilio's default timeout); then it never will

VOICEMAIL_INSTRUCTIONS = (
    "\n\nThis call has been answered by an answering machine, and it is recording now. Leave a voicemail: say "
    "the message below, clearly and once, changing it only where this call's instructions need it (a name, the "
    "reason for the call). Ask nothing and do not wait for a reply: nobody will answer. The call ends after your "
    "message.\nThe message: {message}"
)
VOICEMAIL_CUE = "(The beep has sounded: the answering machine is recording. Leave your message now.)"


class Verdicts(Protocol):
    """Where the detection's verdicts are kept (the database), whichever replica heard them."""

    async def answered_by(self, call_sid: str) -> str | None:
        """human | machine | unknown, or None while there is no verdict."""


@dataclass(frozen=True, slots=True)
class Voicemail:
    """What to do when a machine answers (PHONEBOT_VOICEMAIL, PHONEBOT_VOICEMAIL_MESSAGE)."""

    mode: Literal["message", "hangup"]
    message: str
    prompt: Callable[[], str]  # the bot's configured instructions, kept under the message's

    def instructions(self) -> str:
        return self.prompt() + VOICEMAIL_INSTRUCTIONS.format(message=self.message)


class AnsweringMachine:
    """One outbound call waiting for the verdict, and what follows it (once, however it comes)."""

    def __init__(self, session: CallSession, policy: Voicemail, verdicts: Verdicts | None) -> None:
        self._session = session
        self._policy = policy
        self._verdicts = verdicts
        self.verdict: str | None = None

    async def heard(self, answered_by: str) -> None:
        """Detection's verdict: human, machine or unknown."""
        if self.verdict is not None:
            return
        self.verdict = answered_by
        if answered_by != "machine":
            log.info("call.answered_by", answered_by=answered_by)
            return
        log.info("call.answered_by", answered_by=answered_by, voicemail=self._policy.mode)
        if self._policy.mode == "hangup":
            await self._session.hang_up(EndReason.ANSWERING_MACHINE)
            return
        await self._session.silence()  # whatever the bot was saying to the greeting, the recording gets none of
        await self._session.model.update_instructions(self._policy.instructions())
        await self._session.say_goodbye(VOICEMAIL_CUE, EndReason.VOICEMAIL_LEFT)

    async def watch(self) -> None:
        """Look for a verdict given to any replica, until there is one (or there will be none)."""
        if self._verdicts is None:
            return
        call_sid, deadline = self._session.info.call_sid, time.monotonic() + WATCH_S
        while self.verdict is None and time.monotonic() < deadline:
            try:
                found = await self._verdicts.answered_by(call_sid)
            except Exception as error:  # noqa: BLE001 - the database may be back at the next look
                log.warning("call.verdict_unreadable", error=repr(error))
                found = None
            if found is not None:
                await self.heard(found)
                return
            await asyncio.sleep(POLL_S)
