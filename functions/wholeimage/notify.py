"""The ``notify`` use case: deliver the outbox, each verdict once to each channel, never lost.

A run claims due ``PENDING`` outbox rows (leases, as ``check`` does), groups them by channel
and, per channel (channels in parallel):

- sends up to ``individual_limit`` results one message each; more are combined into digests
  of up to the target's ``digest_limit`` results, so a burst becomes a few messages instead of
  being throttled away or dropped. Standard Webhooks receivers are machines and get one event
  per result (``digest_limit`` 1), so a result's ``webhook-id`` is the same on every resend,
  whatever else was due with it;
- waits for the channel's rate limit (the service's documented one) between messages;
- records each message's outcome right after it, only while holding the lease: ``DELIVERED``
  when the service confirmed it, ``PENDING`` with full-jitter backoff (or the service's
  ``Retry-After``) when it may heal, ``DEAD`` at once when it will not (removed webhook,
  invalid payload, wrong secret), and ``DEAD`` when still undelivered after ``max_age``;
- when an answer asks for a wait (``Retry-After``, Discord's ``retry_after``, a documented
  throttle code), pauses the channel for that long in this process: its other rows are handed
  back unsent, due no earlier than the pause's end, with no attempt counted.

Chat webhooks have no idempotency keys, so a message can be repeated: a process that dies after
a service accepted a message and before its row is settled leaves the row ``PENDING`` (sent
again when the lease expires), and a service that answers after our timeout gets the message
again on the retry. Nothing is ever lost. A chat message names its job (the request id in a
single message's footer, the image name in a digest line) for readers to spot a repeat;
Standard Webhooks receivers drop it by ``webhook-id``.

A local channel (``console:`` or ``file:PATH``, ``wholeimage.channels.sinks``) gets the same
message written out instead of POSTed, and counts as delivered once written.
"""

from __future__ import annotations

import hashlib
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
from wholeimage.channels.urls import redact_url
from wholeimage.httputil import RateLimiter
from wholeimage.idempotency import POLICY_KEY_PREFIX
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
    """Per channel, kept for the process: a pair of token buckets (per second, per minute) and
    the pause a service asked for."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, list[RateLimiter]] = {}
        self._paused_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def pause(self, name: str, seconds: float) -> None:
        """Send nothing to channel ``name`` for ``seconds`` (a pause already longer stays)."""
        with self._lock:
            until = self._clock() + max(seconds, 0.0)
            self._paused_until[name] = max(until, self._paused_until.get(name, 0.0))

    def paused_for(self, name: str) -> float:
        """Seconds left of channel ``name``'s pause; 0 when it is not paused."""
        with self._lock:
            return max(self._paused_until.get(name, 0.0) - self._clock(), 0.0)

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
        if is_policy_job(job):
            return []  # told in its policy run's one message (docs/policies.md §6)
        result = JobResult.from_job(job, console=console, region=region)
        return notifications_for(result, channels, now=at)

    return outbox


def is_policy_job(job: Any) -> bool:
    """Whether a lifecycle policy made the job (its run's message reports it)."""
    requested_by = getattr(job, "requested_by", None)
    key = getattr(job, "idempotency_key", None)
    return bool(
        requested_by
        and requested_by.startswith(POLICY_KEY_PREFIX)
        and key
        and key.startswith(POLICY_KEY_PREFIX)
    )


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


def digest_id(results: Sequence[JobResult]) -> str:
    """The id recorded for a chat digest's rows: a hash of its results' keys, in any order."""
    keys = "\n".join(sorted(result.key for result in results))
    return f"wi_digest_{hashlib.sha256(keys.encode('utf-8')).hexdigest()[:32]}"


def _message_id(results: Sequence[JobResult]) -> str:
    # What the message went out under: the result's key (a Standard Webhooks webhook-id), or
    # for a chat digest the id its rows share.
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
            paused = self.run.limiters.paused_for(self.channel.name)
            if paused > 0:
                self._hold_back(batches[index:], paused)
                return
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
                # The service asked us to wait: every other message to it waits too, in this run
                # and in later runs of this process, rather than spending attempts on refusals.
                self.run.limiters.pause(self.channel.name, delivery.retry_after)

    def _hold_back(self, batches: list[list[Notification]], paused: float) -> None:
        """Hand ``batches`` back unsent, due when the channel's pause is over; no attempt counted."""
        rows = [row for batch in batches for row in batch]
        not_before = self.run.now() + timedelta(seconds=paused)
        self.run.settle([self.run.release(row, not_before=not_before) for row in rows])
        log.warning(
            "channel paused",
            extra={
                "channel": self.channel.name,
                "seconds": round(paused, 3),
                "held_back": len(rows),
            },
        )

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
            # At least 1 ms: a residue of a few ulps would not move a clock that advances only
            # when slept (the tests'), and this loop would never end.
            delay = max(delay, 0.001)
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
        level, said = _OUTCOME_LOG[delivery.outcome]
        log.log(
            level,
            said,
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


# What one answered POST is logged as, by what the service's answer means (channels.base): a
# refusal for good was logged as "notification sent" at WARNING, like a retry.
_OUTCOME_LOG: dict[str, tuple[int, str]] = {
    "delivered": (logging.INFO, "notification delivered"),
    "retry": (logging.WARNING, "notification not delivered; retried later unless too old"),
    "permanent": (logging.ERROR, "notification refused for good; it goes to the dead letters"),
}


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

    def release(self, row: Notification, *, not_before: datetime | None = None) -> Settlement:
        """Hand ``row`` back unsent: due as before, or at ``not_before`` when that is later."""
        due = row.next_attempt_at if not_before is None else max(row.next_attempt_at, not_before)
        return Settlement(
            row.notification_id,
            "PENDING",
            self.now(),
            next_attempt_at=due,
            error=row.last_error,
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
