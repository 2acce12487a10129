"""Which calls this replica holds, against `PHONEBOT_MAX_CALLS`, and whether it takes new ones.

A call counts from the moment phonebot hears of it (the voice webhook, the API request that
places it, the web token that will carry it) until it ends, so a burst of webhooks cannot
overshoot the cap before their streams arrive. A call admitted whose stream has not started
within its `stream_within_s` is let go (Twilio's status callback may let it go sooner). A stream
that starts here without its call having been admitted here (its webhook went to another
replica, or came before a restart) is held from then on and never refused: the caller is
already connected, and cutting them off would be worse than one call over the cap.

While draining nothing new is admitted; the calls already held go on.

PHONEBOT_MAX_CALLS is per replica, as its operators count: under `serve --workers N` each worker
holds its own calls and publishes how many in a `Tally` the workers share, and the cap is checked
against the replica's total. Two workers admitting at the very same moment may both see room for
one call: the replica can go over by at most N-1 calls, never more, and never under.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import structlog

from phonebot import metrics
from phonebot.call.ports import Direction

log = structlog.get_logger(__name__)


class Refusal(StrEnum):
    """Why a call was turned away, as counted in `phonebot_calls_refused_total{reason}`."""

    FULL = "full"  # PHONEBOT_MAX_CALLS calls held already
    DRAINING = "draining"  # the replica is shutting down
    UNAVAILABLE = "unavailable"  # admitted, then the call could not be set up (its store was down)


class Tally(Protocol):
    """The calls the replica's workers hold, each worker writing its own count."""

    def set(self, held: int) -> None: ...

    def total(self) -> int: ...


@dataclass(slots=True)
class _Held:
    direction: Direction
    expiry: asyncio.TimerHandle | None  # until its stream starts


class Admission:
    def __init__(self, max_calls: int, tally: Tally | None = None) -> None:
        self.max_calls = max_calls
        self.tally = tally  # the replica's count, when this process is one of its workers
        self.draining = False
        self._held: dict[str, _Held] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def count(self) -> int:
        """Calls this process holds."""
        return len(self._held)

    @property
    def replica_count(self) -> int:
        """Calls the replica holds: this process's, and its sibling workers'."""
        return len(self._held) if self.tally is None else self.tally.total()

    @property
    def full(self) -> bool:
        return self.replica_count >= self.max_calls

    def __contains__(self, call_sid: str) -> bool:
        return call_sid in self._held

    def admit(self, call_sid: str, direction: Direction, stream_within_s: float) -> Refusal | None:
        """Hold a place for a new call, or say why not. Asking again for a call held is not a new call
        (Twilio retries its webhook): it keeps its place."""
        if call_sid in self._held:
            return None
        refusal = Refusal.DRAINING if self.draining else Refusal.FULL if self.full else None
        if refusal is not None:
            metrics.CALLS_REFUSED.labels(refusal).inc()
            log.warning("call.refused", call_sid=call_sid, reason=refusal, held=self.replica_count)
            return refusal
        held = _Held(direction, None)
        held.expiry = asyncio.get_running_loop().call_later(stream_within_s, self._expire, held)
        self._hold(call_sid, held)
        return None

    def streaming(self, call_sid: str, direction: Direction) -> bool:
        """The call's stream started: it is held until `release`, admitted here or not. Whether it
        was admitted here."""
        held = self._held.get(call_sid)
        if held is None:
            self._hold(call_sid, _Held(direction, None))
            return False
        if held.expiry is not None:
            held.expiry.cancel()
            held.expiry = None
        return True

    def waiting(self) -> list[str]:
        """The calls held whose stream has not started here (yet)."""
        return [call_sid for call_sid, held in self._held.items() if held.expiry is not None]

    def is_streaming(self, call_sid: str) -> bool:
        held = self._held.get(call_sid)
        return held is not None and held.expiry is None

    def rename(self, old: str, call_sid: str) -> None:
        """A call admitted under a name of our own (an outbound call before Twilio names it) is `call_sid` now."""
        held = self._held.pop(old, None)
        if held is not None:
            self._held[call_sid] = held

    def release(self, call_sid: str, refused: Refusal | None = None) -> None:
        """The call ended (or never will start); `refused`: it was turned away after all, and why."""
        held = self._held.pop(call_sid, None)
        if held is None:
            return
        if held.expiry is not None:
            held.expiry.cancel()
        metrics.CALLS_ACTIVE.dec()
        if self.tally is not None:
            self.tally.set(len(self._held))
        if refused is not None:
            metrics.CALLS_REFUSED.labels(refused).inc()
        if not self._held:
            self._empty.set()

    def drain(self) -> None:
        """Take no new calls from now on."""
        self.draining = True

    async def empty(self) -> None:
        """Wait until no call is held."""
        await self._empty.wait()

    def _hold(self, call_sid: str, held: _Held) -> None:
        self._held[call_sid] = held
        self._empty.clear()
        metrics.CALLS_ACTIVE.inc()
        if self.tally is not None:
            self.tally.set(len(self._held))

    def _expire(self, held: _Held) -> None:
        """Its stream never started: let its place go (found by identity: it may have been renamed)."""
        call_sid = next((sid for sid, each in self._held.items() if each is held), None)
        if call_sid is not None:
            log.info("call.admission_expired", call_sid=call_sid)
            held.expiry = None
            self.release(call_sid)
