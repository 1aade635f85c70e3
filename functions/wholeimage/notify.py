"""The ``notify`` use case: deliver the outbox, each verdict once to each channel, never lost.

A run claims due ``PENDING`` outbox rows (leases, as ``check`` does), groups them by channel
and, per channel (channels in parallel):

- sends up to ``individual_limit`` results one message each; more are combined into digests
  of up to the target's ``digest_limit`` results, so a burst becomes a few messages instead of
  being throttled away or dropped;
- waits for the channel's rate limit (the service's documented one) between messages;
- records each message's outcome right after it, only while holding the lease: ``DELIVERED``
  when the service confirmed it, ``PENDING`` with full-jitter backoff (or the service's
  ``Retry-After``) when it may heal, ``DEAD`` at once when it will not (removed webhook,
  invalid payload, wrong secret), and ``DEAD`` when still undelivered after ``max_age``.

Chat webhooks have no idempotency keys: a process that dies after a service accepted a message
and before its row is settled leaves the row ``PENDING``, and it is sent again when the lease
expires. That window (one HTTP exchange) is the only way a duplicate can happen; nothing is
ever lost. Standard Webhooks receivers de-duplicate it by ``webhook-id``.

A local channel (``console:`` or ``file:PATH``, ``wholeimage.channels.sinks``) gets the same
message written out instead of POSTed, and counts as delivered once written.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from wholeimage.channels.base import Delivery, OutgoingMessage, RateLimit, Target
from wholeimage.channels.registry import target_for
from wholeimage.channels.sinks import is_local_sink, write_to_sink
from wholeimage.channels.standard import digest_id
from wholeimage.channels.urls import redact_url
from wholeimage.httputil import RateLimiter
from wholeimage.results import Channel, JobResult
from wholeimage.store.records import JobStore, Notification, Settlement

log = logging.getLogger("wholeimage.notify")


@dataclass(frozen=True)
class NotifyConfig:
    """How one delivery run behaves."""

    max_age: timedelta = timedelta(hours=6)
    time_budget: float = 60.0
    lease: timedelta = timedelta(minutes=3)
    individual_limit: int = 3
    base_delay: float = 2.0
    max_delay: float = 1800.0
    batch_size: int = 5000

    def backoff(self, attempts: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max, base * 3^attempts)] seconds (2 s, 6 s, 18 s, ...)."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * 3**attempts))


@dataclass
class NotifySummary:
    """What one run did; its JSON form is ``notify``'s answer."""

    owner: str
    claimed: int = 0
    messages: Counter[str] = field(default_factory=Counter)  # per channel
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    digests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    budget_exhausted: bool = False
    lost_leases: int = 0

    def as_json(self) -> dict[str, Any]:
        """The answer body."""
        return {
            "owner": self.owner,
            "claimed": self.claimed,
            "messages": dict(self.messages),
            "delivered": self.delivered,
            "retried": self.retried,
            "dead": self.dead,
            "digests": self.digests,
            "errors": dict(self.errors),
            "budget_exhausted": self.budget_exhausted,
            "lost_leases": self.lost_leases,
        }


class ChannelLimiters:
    """One pair of token buckets (per second, per minute) per channel, kept for the process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, list[RateLimiter]] = {}
        self._lock = threading.Lock()

    def for_channel(self, name: str, rate: RateLimit) -> list[RateLimiter]:
        """The channel's buckets, made on first use."""
        with self._lock:
            if name not in self._buckets:
                buckets = []
                if rate.per_second:
                    buckets.append(RateLimiter(rate.per_second, burst=1.0, clock=self._clock))
                if rate.per_minute:
                    buckets.append(
                        RateLimiter(
                            rate.per_minute / 60.0, burst=rate.per_minute, clock=self._clock
                        )
                    )
                self._buckets[name] = buckets
            return self._buckets[name]


def outbox_for(
    channels: Sequence[Channel], *, console: str | None = None, region: str | None = None
) -> Callable[..., list[Notification]]:
    """The rows an ended job writes: one per channel that wants its verdict."""

    def outbox(job: Any, at: datetime) -> list[Notification]:
        result = JobResult.from_job(job, console=console, region=region)
        return notifications_for(result, channels, now=at)

    return outbox


def notifications_for(
    result: JobResult, channels: Sequence[Channel], *, now: datetime
) -> list[Notification]:
    """Outbox rows for ``result``, one per channel whose filter accepts its verdict."""
    payload = json.dumps(result.to_json(), sort_keys=True, ensure_ascii=False)
    return [
        Notification.new(result_key=result.key, channel=channel.name, result_json=payload, now=now)
        for channel in channels
        if channel.wants(result.status)
    ]


def _message_id(results: Sequence[JobResult]) -> str:
    # The id the message went out under: the result's key, or the digest's (its webhook-id).
    return results[0].key if len(results) == 1 else digest_id(results)


class _ChannelRun:
    """Delivering one channel's claimed rows within one run."""

    def __init__(
        self,
        *,
        channel: Channel,
        target: Target,
        rows: list[Notification],
        run: _Run,
    ) -> None:
        self.channel = channel
        self.target = target
        self.rows = rows
        self.run = run

    def batches(self) -> list[list[Notification]]:
        limit = self.target.digest_limit
        if len(self.rows) <= self.run.config.individual_limit or limit <= 1:
            return [[row] for row in self.rows]
        return [self.rows[start : start + limit] for start in range(0, len(self.rows), limit)]

    def deliver(self) -> None:
        batches = self.batches()
        for index, batch in enumerate(batches):
            wait = self._wait_for_rate_limit()
            if wait is None:
                # The next message would go out after the budget: leave the rest for the next run.
                for rest in batches[index:]:
                    self.run.settle([self.run.release(row) for row in rest])
                self.run.summary.budget_exhausted = True
                return
            delivery = self._send(batch)
            # One retry time for the whole message, so its results come back together and go out
            # as one digest again, rather than trickling back one by one at jittered times.
            delay = self.run.retry_delay(batch, delivery)
            self.run.settle([self.run.settlement(row, delivery, delay) for row in batch])
            if delivery.outcome == "retry" and delivery.retry_after:
                # The service asked us to slow down: the rest waits with it.
                for limiter in self.run.limiters.for_channel(self.channel.name, self.target.rate):
                    limiter.pause(delivery.retry_after)

    def _wait_for_rate_limit(self) -> float | None:
        waited = 0.0
        limiters = self.run.limiters.for_channel(self.channel.name, self.target.rate)
        while True:
            if self.run.monotonic() >= self.run.deadline:
                # Slow answers spent the budget: the lease (budget + margin) must outlive every send.
                return None
            # Ask every bucket first and spend only when all agree: a per-second bucket that says
            # "go" must not spend the per-minute bucket's token while that one says "wait".
            delay = max((limiter.wait_time() for limiter in limiters), default=0.0)
            if delay <= 0:
                for limiter in limiters:
                    limiter.take()
                return waited
            if self.run.monotonic() + delay > self.run.deadline:
                return None
            self.run.sleep(delay)
            waited += delay

    def _send(self, batch: list[Notification]) -> Delivery:
        results = [JobResult.from_json(json.loads(row.result_json)) for row in batch]
        try:
            message = self.target.render(results, self.channel, self.run.now())
        except ValueError as exc:  # the channel's configuration cannot produce a valid message
            return Delivery("permanent", detail=f"cannot build the message: {exc}")
        summary = self.run.summary
        with self.run.lock:
            summary.messages[self.channel.name] += 1
            if len(results) > 1:
                summary.digests += 1
        delivery = self._transmit(message, len(results))
        if delivery.outcome == "delivered":
            # A digest's rows share one message id: they went out together.
            return Delivery("delivered", detail=_message_id(results))
        return delivery

    def _transmit(self, message: OutgoingMessage, results: int) -> Delivery:
        """Hand ``message`` over: written locally for a ``console:``/``file:`` channel, else POSTed."""
        if is_local_sink(self.channel.url.get_secret_value()):
            write_to_sink(self.channel, message)
            return Delivery("delivered", detail="written locally")
        return self._post(message, results)

    def _post(self, message: OutgoingMessage, results: int) -> Delivery:
        try:
            response = self.run.http.post(
                message.url, content=message.body, headers=message.headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return Delivery("retry", detail=f"not sent: {type(exc).__name__}")
        except httpx.TransportError as exc:
            # Sent but unanswered: the service may have posted it. Retry (never lose it); the
            # duplicate risk is this one exchange (see the module docstring).
            return Delivery("retry", detail=f"no answer: {type(exc).__name__}")
        except httpx.DecodingError as exc:
            # Answered, but the body cannot be decoded (a broken gzip): unconfirmed, as above.
            return Delivery("retry", detail=f"unreadable answer: {type(exc).__name__}")
        delivery = self.target.classify(response)
        log.log(
            logging.INFO if delivery.outcome == "delivered" else logging.WARNING,
            "notification sent",
            extra={
                "channel": self.channel.name,
                "webhook": redact_url(message.url),
                "outcome": delivery.outcome,
                "status": response.status_code,
                "detail": delivery.detail,
                "results": results,
            },
        )
        return delivery


class _Run:
    """The state of one delivery run."""

    def __init__(
        self,
        *,
        store: JobStore,
        http: httpx.Client,
        config: NotifyConfig,
        limiters: ChannelLimiters,
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
        rng: random.Random,
        summary: NotifySummary,
    ) -> None:
        self.store = store
        self.http = http
        self.config = config
        self.limiters = limiters
        self.now = now
        self.monotonic = monotonic
        self.sleep = sleep
        self.rng = rng
        self.summary = summary
        self.deadline = monotonic() + config.time_budget
        self.lock = threading.Lock()

    def release(self, row: Notification) -> Settlement:
        return Settlement(
            row.notification_id,
            "PENDING",
            self.now(),
            next_attempt_at=row.next_attempt_at,
            attempted=False,
        )

    def retry_delay(self, batch: list[Notification], delivery: Delivery) -> float:
        """Seconds until a failed message is tried again: its Retry-After, or full-jitter backoff."""
        attempts = max(row.attempts for row in batch)
        return max(delivery.retry_after or 0.0, self.config.backoff(attempts, self.rng))

    def settlement(self, row: Notification, delivery: Delivery, delay: float) -> Settlement:
        at = self.now()
        if delivery.outcome == "delivered":
            return Settlement(row.notification_id, "DELIVERED", at, message_id=delivery.detail)
        if delivery.outcome == "permanent":
            return Settlement(row.notification_id, "DEAD", at, error=delivery.detail)
        next_attempt = at + timedelta(seconds=delay)
        if next_attempt - row.created_at > self.config.max_age:
            return Settlement(
                row.notification_id,
                "DEAD",
                at,
                error=f"undelivered after {self.config.max_age}: {delivery.detail}",
            )
        return Settlement(
            row.notification_id, "PENDING", at, next_attempt_at=next_attempt, error=delivery.detail
        )

    def settle(self, settlements: list[Settlement]) -> None:
        if not settlements:
            return
        settled = self.store.settle_notifications(settlements, owner=self.summary.owner)
        with self.lock:
            self.summary.lost_leases += len(settlements) - settled
            for settlement in settlements:
                if not settlement.attempted:
                    continue
                if settlement.state == "DELIVERED":
                    self.summary.delivered += 1
                elif settlement.state == "DEAD":
                    self.summary.dead += 1
                    self.summary.errors[(settlement.error or "")[:80]] += 1
                else:
                    self.summary.retried += 1
                    self.summary.errors[(settlement.error or "")[:80]] += 1


_PROCESS_LIMITERS = ChannelLimiters()


def deliver_pending(
    *,
    store: JobStore,
    channels: Sequence[Channel],
    http: httpx.Client,
    config: NotifyConfig | None = None,
    limiters: ChannelLimiters | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    owner: str | None = None,
) -> NotifySummary:
    """Deliver what is due; see the module docstring."""
    config = config or NotifyConfig()
    summary = NotifySummary(owner=owner or f"notify-{uuid.uuid4().hex[:12]}")
    run = _Run(
        store=store,
        http=http,
        config=config,
        limiters=limiters or _PROCESS_LIMITERS,
        now=now,
        monotonic=monotonic,
        sleep=sleep,
        rng=rng or random.Random(),
        summary=summary,
    )
    by_name = {channel.name: channel for channel in channels}
    moment = now()
    claimed = store.claim_notifications(
        now=moment, owner=summary.owner, lease_until=moment + config.lease, limit=config.batch_size
    )
    summary.claimed = len(claimed)
    groups: dict[str, list[Notification]] = defaultdict(list)
    for row in claimed:
        groups[row.channel].append(row)
    runs: list[_ChannelRun] = []
    for name, rows in groups.items():
        channel = by_name.get(name)
        if channel is None:
            run.settle(
                [
                    Settlement(
                        row.notification_id, "DEAD", moment, error="channel no longer configured"
                    )
                    for row in rows
                ]
            )
            continue
        runs.append(
            _ChannelRun(channel=channel, target=target_for(channel.format), rows=rows, run=run)
        )
    if runs:
        with ThreadPoolExecutor(max_workers=min(len(runs), 16)) as pool:
            for future in [pool.submit(channel_run.deliver) for channel_run in runs]:
                future.result()
    log.info("notify run done", extra={"summary": summary.as_json()})
    return summary
