"""The ``check`` use case: poll the jobs that are due, move them along, record their ends.

One tick:

1. claims due jobs in batches (a lease with an owner and an expiry, so overlapping ticks never
   poll or end the same job; a crashed tick's leases expire and its jobs are taken up again);
2. polls them concurrently, ``concurrency`` workers, one rate limiter for the IMS account;
3. records each outcome in the store, conditional on still holding the lease: an end is
   recorded once, in the transaction that also hands it to notification;
4. stops claiming when its time budget is spent, leaving the rest to the next tick.

Before polling, it reconciles up to ``reconcile.batch`` jobs whose submission outcome is
unknown, by asking IMS for their marker tag (``wholeimage.reconcile``), one at a time: there
are few, and each is leased and recorded like a polled job.

Transient errors never fail a job: they reschedule it. A job past its deadline is queried once
more and, without a verdict, ends as ``TIMED_OUT``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from wholeimage.ims.poller import PollResult
from wholeimage.models import ENDED, Job, JobStatus
from wholeimage.poll_backoff import PollBackoff
from wholeimage.reconcile import Lookup, ReconcileConfig, decide_reconcile, hand_back
from wholeimage.store.records import JobStore, Outbox, PollUpdate

if TYPE_CHECKING:
    from wholeimage.ims.job_report import JobReport
    from wholeimage.ims.poller import JobPoller, PollClient

log = logging.getLogger("wholeimage.check")

# IMS may not know a job id for a moment right after it was issued (eventual consistency).
NOT_FOUND_GRACE = timedelta(minutes=2)
# Past its deadline, a job whose queries keep failing ends after this much more time.
UNREACHABLE_GRACE = timedelta(minutes=30)
JOB_NOT_FOUND_CODE = "WHOLEIMAGE.JOB_NOT_FOUND"
UNPOLLABLE_CODE = "WHOLEIMAGE.UNPOLLABLE_JOB_ID"
TIMED_OUT_CODE = "WHOLEIMAGE.TIMED_OUT"


@dataclass(frozen=True)
class CheckConfig:
    """How one tick behaves."""

    backoff: PollBackoff = field(default_factory=PollBackoff)
    job_deadline: timedelta = timedelta(hours=3)
    time_budget: float = 120.0  # seconds; Cloud Scheduler gives up on a call after 180 s
    concurrency: int = 16
    batch_size: int = 256
    lease: timedelta = timedelta(minutes=5)  # longer than the budget plus one IMS timeout
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)


@dataclass
class CheckSummary:
    """What one tick did; its JSON form is ``check``'s answer."""

    owner: str
    polled: int = 0
    reconciled: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    still_outstanding: int = 0
    unresolved: int = 0
    next_due_at: datetime | None = None
    budget_exhausted: bool = False
    aborted: str | None = None
    lost_leases: int = 0
    duration_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The answer body."""
        return {
            "owner": self.owner,
            "polled": self.polled,
            "reconciled": self.reconciled,
            "ended": dict(self.ended),
            "errors": dict(self.errors),
            "still_outstanding": self.still_outstanding,
            "unresolved": self.unresolved,
            "next_due_at": self.next_due_at.isoformat() if self.next_due_at else None,
            "budget_exhausted": self.budget_exhausted,
            "aborted": self.aborted,
            "lost_leases": self.lost_leases,
            "duration_s": round(self.duration_s, 3),
        }


def decide(
    job: Job, result: PollResult, *, now: datetime, config: CheckConfig, rng: random.Random
) -> PollUpdate:
    """The pure decision: what one poll result does to one job."""
    submitted_at = job.submitted_at or job.created_at
    deadline = job.deadline_at or submitted_at + config.job_deadline
    next_poll = config.backoff.next_poll_at(submitted_at=submitted_at, now=now, rng=rng)
    if result.outcome == "report" and result.report is not None:
        return _after_report(
            job, result.report, now=now, deadline=deadline, next_poll=next_poll, config=config
        )
    return _after_failed_query(
        job,
        result,
        now=now,
        submitted_at=submitted_at,
        deadline=deadline,
        next_poll=next_poll,
        config=config,
    )


def _after_report(
    job: Job,
    report: JobReport,
    *,
    now: datetime,
    deadline: datetime,
    next_poll: datetime,
    config: CheckConfig,
) -> PollUpdate:
    """IMS answered: its verdict ends the job, the deadline times it out, or it runs on."""
    if report.ended:
        return PollUpdate.end(
            job,
            status=report.status or JobStatus.FAIL,
            at=now,
            image_id=report.image_id,
            process_percent=report.process_percent if report.status is JobStatus.FAIL else 1.0,
            error_code=report.error_code if report.status is JobStatus.FAIL else None,
            fail_reason=report.fail_reason if report.status is JobStatus.FAIL else None,
        )
    if now >= deadline:
        return PollUpdate.end(
            job,
            status=JobStatus.TIMED_OUT,
            at=now,
            process_percent=report.process_percent,
            error_code=TIMED_OUT_CODE,
            fail_reason=(
                f"no verdict within {config.job_deadline}; IMS last said "
                f"{report.raw_status or 'nothing'}"
            ),
        )
    return PollUpdate.progress(
        job,
        # An unknown or missing status is never an end; keep what we knew.
        status=report.status or job.status,
        at=now,
        process_percent=report.process_percent,
        next_poll_at=next_poll,
    )


def _after_failed_query(
    job: Job,
    result: PollResult,
    *,
    now: datetime,
    submitted_at: datetime,
    deadline: datetime,
    next_poll: datetime,
    config: CheckConfig,
) -> PollUpdate:
    """IMS gave no report: the job is lost, cannot be asked about, unreachable for too long, or
    polled again later."""
    if result.outcome == "unpollable":
        # No query can ever be made for it: end it with its own code, so chat hears of it and
        # the other jobs of the tick go on.
        return PollUpdate.end(
            job,
            status=JobStatus.FAIL,
            at=now,
            error_code=UNPOLLABLE_CODE,
            fail_reason=f"the recorded IMS job id cannot be queried safely ({result.detail})",
        )
    if result.outcome == "not_found" and now - submitted_at >= NOT_FOUND_GRACE:
        return PollUpdate.end(
            job,
            status=JobStatus.FAIL,
            at=now,
            error_code=JOB_NOT_FOUND_CODE,
            fail_reason=f"IMS does not know job {job.ims_job_id} ({result.detail})",
        )
    # Only an unreachable IMS times a job out; our own wrong credentials or endpoint (auth,
    # rejected) never end a job: once fixed, polling resumes and finds the real verdict.
    if now >= deadline + UNREACHABLE_GRACE and result.outcome in ("transient", "throttled"):
        return PollUpdate.end(
            job,
            status=JobStatus.TIMED_OUT,
            at=now,
            error_code=TIMED_OUT_CODE,
            fail_reason=f"no verdict within {config.job_deadline}; IMS queries kept failing ({result.detail})",
        )
    # Transient, throttled, rejected, auth or not-found-yet: try again later, never fail the job.
    if now >= deadline:
        next_poll = now + timedelta(seconds=max(config.backoff.min_interval, 1.0))
    # After the deadline adjustment, so IMS's Retry-After is honoured past the deadline too.
    if result.retry_after is not None:
        next_poll = max(next_poll, now + timedelta(seconds=result.retry_after))
    return PollUpdate.progress(
        job, status=job.status, at=now, process_percent=job.process_percent, next_poll_at=next_poll
    )


class _Tick:
    """One running tick: a claim loop feeding workers, updates flushed in batches."""

    def __init__(
        self,
        *,
        store: JobStore,
        poller: JobPoller,
        config: CheckConfig,
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
        rng: random.Random,
        summary: CheckSummary,
        outbox: Outbox | None,
        stop_claiming_at: float,
        lookup: Callable[[Job], Lookup] | None = None,
    ) -> None:
        self.lookup = lookup
        self.store = store
        self.poller = poller
        self.config = config
        self.now = now
        self.monotonic = monotonic
        self.rng = rng
        self.summary = summary
        self.outbox = outbox
        self.stop_claiming_at = stop_claiming_at
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self.updates: list[PollUpdate] = []
        self.abort = asyncio.Event()
        self.taken: set[str] = set()  # request ids this tick has claimed: each is polled once

    async def run(self) -> None:
        """Claim and poll until the due jobs, the budget or an abort end it; record every update."""
        workers = [
            asyncio.create_task(self.worker()) for _ in range(max(1, self.config.concurrency))
        ]
        try:
            if self.lookup is not None:
                await self.reconcile(self.lookup)
            await self.feed()
            if self.summary.budget_exhausted or self.abort.is_set():
                self.hand_back_unstarted()
        finally:
            for _ in workers:
                self.queue.put_nowait(None)
            for ended in await asyncio.gather(*workers, return_exceptions=True):
                if isinstance(ended, BaseException):  # a bug: the other workers took its jobs
                    log.error("a poll worker died", exc_info=ended)
            self.flush()

    async def worker(self) -> None:
        """Poll queued jobs over one client until the end-of-work signal."""
        try:
            client = self.poller.new_client()
        except Exception as exc:  # e.g. IAM refused to issue a token: no query can be made
            self.stop(f"cannot build an IMS client: {type(exc).__name__}: {exc}")
            await self.drain()
            return
        try:
            while (job := await self.queue.get()) is not None:
                if self.abort.is_set():
                    self.updates.append(PollUpdate.release(job, at=self.now()))
                    continue
                await self.poll(client, job)
        finally:
            await client.aclose()

    async def poll(self, client: PollClient, job: Job) -> None:
        """Query one job once and queue what the answer does to it."""
        try:
            result = await self.poller.query(
                client,
                job.ims_job_id or "",
                max_wait=self.stop_claiming_at - self.monotonic(),
            )
        except Exception as exc:
            # One job's failure is contained to that job: it is polled again later, as after a
            # transient failure (and times out at its deadline), while the others go on.
            log.exception("poll failed unexpectedly", extra={"request_id": job.request_id})
            result = PollResult("transient", detail=f"internal error: {type(exc).__name__}")
            self.summary.errors["internal"] += 1
            self.updates.append(
                decide(job, result, now=self.now(), config=self.config, rng=self.rng)
            )
            return
        if result.outcome == "not_sent":
            # Throttled past this tick's budget: the next tick has it, due as before.
            self.updates.append(PollUpdate.release(job, at=self.now()))
            return
        self.summary.polled += 1
        if result.outcome != "report":
            self.summary.errors[result.outcome] += 1
        if result.outcome == "auth":
            # Every other query would fail the same way: stop, and say why.
            self.stop(f"IMS refused our credentials: {result.detail}")
        self.updates.append(decide(job, result, now=self.now(), config=self.config, rng=self.rng))

    async def reconcile(self, lookup: Callable[[Job], Lookup]) -> None:
        """Ask IMS about each claimed unresolved job by its marker; record what that decides."""
        config = self.config.reconcile
        moment = self.now()
        claimed = self.store.claim_unresolved(
            now=moment,
            owner=self.summary.owner,
            lease_until=moment + self.config.lease,
            stale_before=moment - config.after,
            limit=config.batch,
        )
        # At most half the budget: due jobs must still be polled when IMS's list is slow.
        reconcile_until = self.stop_claiming_at - self.config.time_budget / 2
        for job in claimed:
            if self.monotonic() >= reconcile_until:
                self.updates.append(hand_back(job, now=self.now()))
                continue
            try:
                found = await asyncio.to_thread(lookup, job)
            except Exception as exc:  # a bug in one lookup stays with its job
                log.exception("reconcile lookup failed", extra={"request_id": job.request_id})
                found = Lookup("failed", detail=f"internal error: {type(exc).__name__}")
                self.summary.errors["internal"] += 1
            self.summary.reconciled += 1
            if found.outcome == "failed":
                self.summary.errors["auth" if found.auth else "reconcile_failed"] += 1
            self.updates.append(
                decide_reconcile(
                    job,
                    found,
                    now=self.now(),
                    config=config,
                    backoff=self.config.backoff,
                    job_deadline=self.config.job_deadline,
                    rng=self.rng,
                )
            )
        self.flush()

    def stop(self, reason: str) -> None:
        """Abort the tick (first reason wins); unstarted jobs are handed back."""
        if not self.abort.is_set():
            self.summary.aborted = reason
            self.abort.set()

    async def drain(self) -> None:
        """Hand back every job this worker would have taken, until the end-of-work signal."""
        while (job := await self.queue.get()) is not None:
            self.updates.append(PollUpdate.release(job, at=self.now()))

    def flush(self) -> None:
        """Record the queued updates, conditional on this tick's leases; count the ends."""
        if not self.updates:
            return
        batch, self.updates = self.updates, []
        try:
            applied = self.store.record_polls(batch, owner=self.summary.owner, outbox=self.outbox)
        except Exception:
            # One update the store refuses must not lose the batch: record each on its own.
            log.exception("recording a batch of polls failed; recording one by one")
            applied = [update for update in batch if self.record_one(update)]
        self.summary.lost_leases += len(batch) - len(applied)
        for update in applied:
            if update.status in ENDED:
                self.summary.ended[update.status.value] += 1

    def record_one(self, update: PollUpdate) -> bool:
        """Record one update; a failure stays with its job (leased, so due again later)."""
        try:
            recorded = self.store.record_polls(
                [update], owner=self.summary.owner, outbox=self.outbox
            )
        except Exception:
            log.exception("recording a poll failed", extra={"request_id": update.request_id})
            self.summary.errors["store"] += 1
            return False
        return bool(recorded)

    async def feed(self) -> None:
        """Claim due jobs while there are some and time is left; keep the queue short."""
        while not self.abort.is_set():
            if self.monotonic() >= self.stop_claiming_at:
                self.summary.budget_exhausted = True
                return
            if self.queue.qsize() >= self.config.concurrency * 2:
                self.flush()
                await asyncio.sleep(0.005)
                continue
            if not self.claim_batch():
                return
            await asyncio.sleep(0)

    def claim_batch(self) -> bool:
        """Claim one batch and queue its fresh jobs; False when nothing more is due for this tick."""
        moment = self.now()
        claimed = self.store.claim_due(
            now=moment,
            owner=self.summary.owner,
            lease_until=moment + self.config.lease,
            limit=self.config.batch_size,
        )
        # A job this tick already polled can be due again at once (a short back-off, or
        # min = max = 0): hand it back unpolled and stop claiming, or the tick would poll
        # the same jobs over and over until its budget is spent. The next tick has them.
        fresh = [job for job in claimed if job.request_id not in self.taken]
        self.updates.extend(
            PollUpdate.release(job, at=moment) for job in claimed if job.request_id in self.taken
        )
        self.flush()
        self.taken.update(job.request_id for job in fresh)
        for job in fresh:
            self.queue.put_nowait(job)
        return bool(fresh) and len(fresh) == len(claimed)

    def hand_back_unstarted(self) -> None:
        """Release what was claimed but not started, so the next tick has it at once."""
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if job is not None:
                self.updates.append(PollUpdate.release(job, at=self.now()))


async def run_check(
    *,
    store: JobStore,
    poller: JobPoller,
    config: CheckConfig,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    owner: str | None = None,
    outbox: Outbox | None = None,
    lookup: Callable[[Job], Lookup] | None = None,
) -> CheckSummary:
    """Run one tick; see the module docstring.

    ``outbox`` makes each recorded end write its notification rows in the same transaction;
    ``lookup`` (IMS's image list by marker) makes it reconcile unresolved submissions first.
    """
    summary = CheckSummary(owner=owner or f"check-{uuid.uuid4().hex[:12]}")
    started = monotonic()
    tick = _Tick(
        store=store,
        poller=poller,
        config=config,
        now=now,
        monotonic=monotonic,
        rng=rng or random.Random(),
        summary=summary,
        outbox=outbox,
        stop_claiming_at=started + config.time_budget,
        lookup=lookup,
    )
    await tick.run()
    summary.still_outstanding = store.count_outstanding()
    summary.unresolved = store.count_unresolved()
    summary.next_due_at = store.next_due_at()
    summary.duration_s = monotonic() - started
    log.info("check tick done", extra={"summary": summary.as_json()})
    return summary


def run_check_sync(**kwargs: Any) -> CheckSummary:
    """``run_check`` from synchronous code (an HTTP handler thread, a CLI)."""
    return asyncio.run(run_check(**kwargs))
