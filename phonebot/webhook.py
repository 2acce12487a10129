"""The finished-call webhook: delivers the outbox's events to `TRANSCRIPT_WEBHOOK_URL`.

Each attempt is signed per Standard Webhooks (the `standardwebhooks` package: `webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`),
with the event's own id on every attempt and a fresh timestamp (receivers reject old ones).
A 2xx answer delivers it; anything else (an error status, a refused connection, no answer within
`DELIVERY_TIMEOUT_S`) is retried with exponential backoff and jitter until
`PHONEBOT_WEBHOOK_GIVE_UP_S` after the call ended, when the event is marked failed and kept.

One `Deliveries` task per process, on the event loop but never on a call's path: it waits on
the database and the receiver, and the calls never wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import httpx
import structlog
from standardwebhooks.webhooks import Webhook

from phonebot import metrics
from phonebot.settings import Settings
from phonebot.store.liveness import Liveness
from phonebot.store.outbox import Outbox, OutboxEvent

log = structlog.get_logger(__name__)

DELIVERY_TIMEOUT_S = 10.0  # the whole attempt: connect, send, answer
LEASE_S = DELIVERY_TIMEOUT_S + 20.0  # an event is ours this long per attempt at most
FIRST_RETRY_S = 5.0
MAX_RETRY_S = 600.0  # a receiver back from an outage hears from us within ten minutes
IDLE_POLL_S = 2.0  # how often to look for events other processes queued, or that came due
AT_ONCE = 4  # attempts in flight together
SETTLE_S = 5.0  # at shutdown, this long to deliver what is due (the calls that just ended); the rest waits


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


def signed_headers(webhook: Webhook, event_id: str, body: str, now: datetime) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "phonebot",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": webhook.sign(event_id, now, body),
    }


def retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt: doubling from FIRST_RETRY_S, jittered +/-50 %, capped;
    never sooner than a receiver's Retry-After."""
    delay = min(FIRST_RETRY_S * 2 ** (attempts - 1), MAX_RETRY_S) * random.uniform(0.5, 1.5)
    return min(max(delay, retry_after or 0.0), MAX_RETRY_S)


class Deliveries:
    def __init__(self, settings: Settings, outbox: Outbox, liveness: Liveness) -> None:
        self._url = settings.transcript_webhook_url
        self._secret = settings.transcript_webhook_secret
        self._give_up = timedelta(seconds=settings.webhook_give_up_s)
        self._outbox = outbox
        self._liveness = liveness
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._client = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S, follow_redirects=False)

    def wake(self) -> None:
        """Events were queued: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        if self._url is None:
            return
        if self._secret is None:  # the events wait in the outbox for a restart with the secret
            reason = "TRANSCRIPT_WEBHOOK_SECRET is not set; it is required with TRANSCRIPT_WEBHOOK_URL"
            log.error("webhook.not_sent", reason=reason)
            return
        self._task = asyncio.create_task(self._run(), name="webhook deliveries")

    async def close(self, settle_s: float = 0.0) -> None:
        """Stop. First, for up to `settle_s`, deliver what is due now: a replica that drained its calls
        reports them before it goes (what is still undelivered then is kept, for any process to deliver)."""
        if self._task is not None and settle_s > 0:
            self._closing = True
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), settle_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            due = None
            try:
                if await self.deliver_due():
                    continue  # there may be more
                if self._closing:
                    return
                due = await self._outbox.next_due()
            except Exception as error:  # noqa: BLE001 - the database is away: look again later
                log.error("webhook.outbox_unavailable", error=repr(error))
            wait = IDLE_POLL_S if due is None else (due - datetime.now(UTC)).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(max(wait, 0.05), IDLE_POLL_S))
            self._wake.clear()

    async def deliver_due(self) -> int:
        """One round: claim what is due (taking over leases of dead processes) and attempt it."""
        now = datetime.now(UTC)
        dead = [holder for holder in await self._outbox.holders(now) if not await self._liveness.alive(holder)]
        events = await self._outbox.claim(now, AT_ONCE, LEASE_S, dead)
        await asyncio.gather(*(self.attempt(event) for event in events))
        return len(events)

    async def attempt(self, event: OutboxEvent) -> Outcome:
        assert self._url is not None and self._secret is not None
        error, retry_after = await self._post(event)
        now = datetime.now(UTC)
        if error is None:
            await self._outbox.delivered(event, now)
            outcome = Outcome.DELIVERED
        elif event.attempted_at >= event.created_at + self._give_up:
            # Given up after a try made at the give-up time (or later): a try that started before it
            # is never the last, however long it took to fail.
            await self._outbox.failed(event, error)
            outcome = Outcome.FAILED
        else:
            # The last try falls at the give-up time, not a backoff step past it (at once if it has passed).
            delay = timedelta(seconds=retry_delay(event.attempts, retry_after))
            at = min(now + delay, event.created_at + self._give_up)
            await self._outbox.retry(event, at, error)
            outcome = Outcome.RETRY
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        say = log.info if outcome == Outcome.DELIVERED else log.warning
        say(f"webhook.{outcome}", webhook_id=event.id, call_sid=event.call_sid, attempt=event.attempts, error=error)
        return outcome

    async def _post(self, event: OutboxEvent) -> tuple[str | None, float | None]:
        """POST the event once. Returns (what went wrong, or None; the receiver's Retry-After)."""
        assert self._url is not None and self._secret is not None
        headers = signed_headers(Webhook(self._secret), event.id, event.body, datetime.now(UTC))
        try:
            async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                response = await self._client.post(self._url, content=event.body.encode(), headers=headers)
        except TimeoutError:
            return f"no answer within {DELIVERY_TIMEOUT_S:g} s", None
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"[:300] or type(error).__name__, None
        if response.is_success:
            return None, None
        return f"HTTP {response.status_code}", _seconds(response.headers.get("retry-after"))


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff decides
