"""The state store port and the records every adapter shares (jobs, poll updates, notifications).

``base.SqlJobStore`` implements the port once over SQL; ``sqlite`` and ``postgres`` adapt it to
their engine. This module holds what they share and imports neither.

Contract of a ``JobStore`` (each method is one transaction):

- ``reserve(job)`` records a new job in ``SUBMITTING`` before IMS is called. If a job with the
  same idempotency key exists it records nothing and returns that job (``created=False``). If
  the job's backup already has a job in a blocking state it raises ``BackupInUseError``.
  Two concurrent reservations can never both succeed for one key or one backup; one that keeps
  losing such a race (a unique constraint refuses it twice) raises ``SubmissionInProgressError``.
- ``mark_submitted`` / ``mark_uncertain`` move a ``SUBMITTING`` job on (a job in another status
  is left alone and returned as it is; an unknown one raises ``LookupError``); ``discard``
  deletes a job whose submission IMS definitely refused, so nothing is left behind: while it is
  ``SUBMITTING``, or ``SUBMIT_UNCERTAIN`` because ``claim_unresolved`` took the live call over
  (IMS's refusal settles that doubt); a submitted or ended job is left alone.
- ``get`` / ``get_by_ims_job_id`` read one job.
- ``claim_due`` leases up to ``limit`` outstanding jobs whose next poll is due and whose lease
  (if any) has expired, earliest first; concurrent claims never return the same job.
- ``claim_unresolved`` leases, likewise, jobs whose submission outcome is unknown and due for
  reconciliation: ``SUBMIT_UNCERTAIN`` ones whose ``next_poll_at`` is due (or, never asked
  yet, last updated before ``stale_before``) and ``SUBMITTING`` ones last updated before
  ``stale_before`` (their process died mid-call), which become ``SUBMIT_UNCERTAIN`` as they are
  claimed, so a late ``mark_submitted`` no longer applies.
- ``record_polls`` applies poll outcomes in one transaction, each only while the caller still
  holds that job's lease and the job is outstanding (or ``SUBMIT_UNCERTAIN``, being
  reconciled): an end is recorded exactly once. It returns the updates it applied.
- ``count_outstanding`` / ``next_due_at`` summarise what is left; ``count_unresolved`` counts
  the jobs whose submission outcome is still unknown.
- ``list_jobs`` lists jobs newest first (by ``created_at``), optionally only some statuses and
  only those created since a moment, at most ``limit`` (what an operator's ``list`` shows).

The notification outbox (one row per job verdict and channel, unique):

- ``record_polls(..., outbox=...)`` writes the rows for each end it applies, in the same
  transaction: an end is never recorded without its notifications, nor notified twice;
- ``add_notifications`` adds rows for results handed in from outside (duplicates ignored);
- ``claim_notifications`` leases due ``PENDING`` rows as ``claim_due`` leases jobs;
- ``settle_notifications`` records each attempt's outcome, only while the lease is held:
  ``DELIVERED`` (the service confirmed it), ``PENDING`` again later, or ``DEAD``;
- ``dead_letters`` lists dead rows; ``redrive`` makes them ``PENDING`` and due now.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from wholeimage.errors import BackupInUseError
from wholeimage.models import BACKUP_BLOCKING, OUTSTANDING, CreateImageRequest, Job, JobStatus
from wholeimage.statuses import UNRESOLVED

JOB_COLUMNS = (
    "request_id",
    "idempotency_key",
    "request_fingerprint",
    "request_json",
    "requested_by",
    "source_kind",
    "source_id",
    "status",
    "ims_job_id",
    "image_id",
    "process_percent",
    "error_code",
    "fail_reason",
    "created_at",
    "updated_at",
    "submitted_at",
    "ended_at",
    "poll_attempts",
    "next_poll_at",
    "deadline_at",
    "trace",
)


def status_list(statuses: frozenset[JobStatus]) -> str:
    """A SQL literal list of statuses, for partial indexes (they cannot take parameters).

    In lifecycle (declaration) order: SQLite uses a partial index only when the query repeats
    its ``IN`` list in the same order, and ``SUBMITTED, INIT, RUNNING`` is how queries say it.
    """
    return ", ".join(f"'{status.value}'" for status in JobStatus if status in statuses)


OUTSTANDING_SQL = status_list(OUTSTANDING)
BACKUP_BLOCKING_SQL = status_list(BACKUP_BLOCKING)
UNRESOLVED_SQL = status_list(UNRESOLVED)
# What ``record_polls`` may change: polled jobs, and uncertain ones being reconciled.
RECORDABLE_SQL = status_list(OUTSTANDING | {JobStatus.SUBMIT_UNCERTAIN})
# The source kinds that are backups: one backup makes at most one image (an ECS, any number).
BACKUP_KINDS = ("csbs", "cbr")
BACKUP_KINDS_SQL = ", ".join(f"'{kind}'" for kind in BACKUP_KINDS)


@dataclass(frozen=True)
class PollUpdate:
    """What one poll (or a release without a poll) does to one leased job."""

    request_id: str
    status: JobStatus
    at: datetime
    next_poll_at: datetime | None
    process_percent: float | None = None
    image_id: str | None = None
    error_code: str | None = None
    fail_reason: str | None = None
    ended_at: datetime | None = None
    queried: bool = True  # False when the job is handed back unpolled

    @classmethod
    def progress(
        cls,
        job: Job,
        *,
        status: JobStatus,
        at: datetime,
        process_percent: float | None,
        next_poll_at: datetime,
        image_id: str | None = None,
    ) -> PollUpdate:
        """Still outstanding: poll again at ``next_poll_at``."""
        return cls(
            job.request_id,
            status,
            at,
            next_poll_at,
            process_percent=process_percent,
            image_id=image_id,
        )

    @classmethod
    def end(
        cls,
        job: Job,
        *,
        status: JobStatus,
        at: datetime,
        image_id: str | None = None,
        process_percent: float | None = None,
        error_code: str | None = None,
        fail_reason: str | None = None,
    ) -> PollUpdate:
        """The job reached ``SUCCESS``, ``FAIL``, ``TIMED_OUT`` or ``UNCONFIRMED``."""
        return cls(
            job.request_id,
            status,
            at,
            None,
            process_percent=process_percent,
            image_id=image_id,
            error_code=error_code,
            fail_reason=fail_reason,
            ended_at=at,
        )

    @classmethod
    def release(cls, job: Job, *, at: datetime) -> PollUpdate:
        """Hand the job back unpolled, due as before."""
        return cls(
            job.request_id,
            job.status,
            at,
            job.next_poll_at,
            process_percent=job.process_percent,
            queried=False,
        )


NOTIFICATION_COLUMNS = (
    "notification_id",
    "result_key",
    "channel",
    "result_json",
    "state",
    "attempts",
    "created_at",
    "next_attempt_at",
    "delivered_at",
    "message_id",
    "last_error",
    "dead_at",
)


@dataclass(frozen=True)
class Notification:
    """One outbox row: one verdict for one channel."""

    notification_id: str
    result_key: str
    channel: str
    result_json: str
    state: str  # PENDING | DELIVERED | DEAD
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None = None
    message_id: str | None = None
    last_error: str | None = None
    dead_at: datetime | None = None

    @classmethod
    def new(cls, *, result_key: str, channel: str, result_json: str, now: datetime) -> Notification:
        """A ``PENDING`` row, due now; its id is stable for the (verdict, channel) pair."""
        return cls(
            notification_id=f"{result_key}.{channel}",
            result_key=result_key,
            channel=channel,
            result_json=result_json,
            state="PENDING",
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )

    def to_row(self) -> dict[str, Any]:
        """Column values."""
        return {
            "notification_id": self.notification_id,
            "result_key": self.result_key,
            "channel": self.channel,
            "result_json": self.result_json,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": to_epoch(self.created_at),
            "next_attempt_at": to_epoch(self.next_attempt_at),
            "delivered_at": to_epoch(self.delivered_at),
            "message_id": self.message_id,
            "last_error": self.last_error,
            "dead_at": to_epoch(self.dead_at),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Notification:
        """A row read back."""
        return cls(
            notification_id=row["notification_id"],
            result_key=row["result_key"],
            channel=row["channel"],
            result_json=row["result_json"],
            state=row["state"],
            attempts=row["attempts"],
            created_at=from_epoch(row["created_at"]) or datetime.now(UTC),
            next_attempt_at=from_epoch(row["next_attempt_at"]) or datetime.now(UTC),
            delivered_at=from_epoch(row["delivered_at"]),
            message_id=row["message_id"],
            last_error=row["last_error"],
            dead_at=from_epoch(row["dead_at"]),
        )


@dataclass(frozen=True)
class Settlement:
    """The outcome of one delivery attempt (or of handing a row back unattempted)."""

    notification_id: str
    state: str  # DELIVERED | PENDING | DEAD
    at: datetime
    next_attempt_at: datetime | None = None  # for PENDING
    error: str | None = None
    message_id: str | None = None
    attempted: bool = True

    def values(self) -> dict[str, Any]:
        """The columns it sets."""
        return {
            "state": self.state,
            "attempted": 1 if self.attempted else 0,
            "next_attempt_at": to_epoch(self.next_attempt_at or self.at),
            "delivered_at": to_epoch(self.at) if self.state == "DELIVERED" else None,
            "dead_at": to_epoch(self.at) if self.state == "DEAD" else None,
            "last_error": self.error,
            "message_id": self.message_id,
            "notification_id": self.notification_id,
        }


# Builds the outbox rows for an ended job (the channels that want its verdict).
Outbox = Callable[[Job, datetime], list[Notification]]


@dataclass(frozen=True)
class Reservation:
    """The outcome of ``reserve``: the job now on record and whether this call created it."""

    job: Job
    created: bool


class JobStore(Protocol):
    """Where jobs are kept; see the module docstring for the contract."""

    def reserve(self, job: Job) -> Reservation:
        """Record ``job`` unless its idempotency key is known; refuse a reused backup."""
        ...

    def mark_submitted(
        self, request_id: str, *, ims_job_id: str, now: datetime, next_poll_at: datetime
    ) -> Job:
        """IMS accepted the job and gave ``ims_job_id``."""
        ...

    def mark_uncertain(self, request_id: str, *, reason: str, now: datetime) -> Job:
        """The submission's outcome is unknown; it will not be resubmitted."""
        ...

    def discard(self, request_id: str) -> None:
        """Delete a job IMS certainly refused, while it is unresolved (see the module docstring)."""
        ...

    def get(self, request_id: str) -> Job | None:
        """One job by our request id."""
        ...

    def get_by_ims_job_id(self, ims_job_id: str) -> Job | None:
        """One job by IMS's job id."""
        ...

    def claim_due(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Job]:
        """Lease due outstanding jobs to ``owner`` until ``lease_until``."""
        ...

    def claim_unresolved(
        self,
        *,
        now: datetime,
        owner: str,
        lease_until: datetime,
        stale_before: datetime,
        limit: int,
    ) -> list[Job]:
        """Lease jobs due for reconciliation (see the module docstring), oldest first."""
        ...

    def record_polls(
        self, updates: list[PollUpdate], *, owner: str, outbox: Outbox | None = None
    ) -> list[PollUpdate]:
        """Apply poll outcomes of jobs leased by ``owner``; return those applied."""
        ...

    def add_notifications(self, notifications: list[Notification]) -> int:
        """Add outbox rows; a (verdict, channel) already there is left alone. Returns rows added."""
        ...

    def claim_notifications(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Notification]:
        """Lease due ``PENDING`` rows to ``owner``."""
        ...

    def settle_notifications(self, settlements: list[Settlement], *, owner: str) -> int:
        """Record attempt outcomes for rows leased by ``owner``; returns rows settled."""
        ...

    def dead_letters(self, *, limit: int = 100) -> list[Notification]:
        """Dead rows, most recent first."""
        ...

    def redrive(self, notification_ids: list[str] | None, *, now: datetime) -> int:
        """Make dead rows (these, or all when None) ``PENDING`` and due now; returns how many."""
        ...

    def notification_counts(self) -> dict[str, int]:
        """How many rows are in each state."""
        ...

    def count_outstanding(self) -> int:
        """How many jobs are waiting for a verdict."""
        ...

    def count_unresolved(self) -> int:
        """How many jobs' submission outcome is unknown (``SUBMITTING``, ``SUBMIT_UNCERTAIN``)."""
        ...

    def next_due_at(self) -> datetime | None:
        """When the earliest outstanding job is due."""
        ...

    def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None,
        since: datetime | None,
        limit: int,
    ) -> list[Job]:
        """Jobs newest first (``created_at``, then ``request_id``), at most ``limit``.

        ``statuses`` keeps only those statuses (``None``: all; empty: none); ``since`` keeps
        jobs created at or after it (``None``: all). A ``limit`` below 1 lists nothing.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def to_epoch(moment: datetime | None) -> float | None:
    """Times are stored as UTC epoch seconds: comparable and indexable in both databases."""
    return moment.timestamp() if moment is not None else None


def from_epoch(value: float | None) -> datetime | None:
    """The inverse of ``to_epoch``."""
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def job_to_row(job: Job) -> dict[str, Any]:
    """A job as column values."""
    return {
        "request_id": job.request_id,
        "idempotency_key": job.idempotency_key,
        "request_fingerprint": job.request_fingerprint,
        "request_json": json.dumps(job.request.ims_body(), sort_keys=True),
        "requested_by": job.requested_by,
        "source_kind": job.source_kind,
        "source_id": job.source_id,
        "status": job.status.value,
        "ims_job_id": job.ims_job_id,
        "image_id": job.image_id,
        "process_percent": job.process_percent,
        "error_code": job.error_code,
        "fail_reason": job.fail_reason,
        "created_at": to_epoch(job.created_at),
        "updated_at": to_epoch(job.updated_at),
        "submitted_at": to_epoch(job.submitted_at),
        "ended_at": to_epoch(job.ended_at),
        "poll_attempts": job.poll_attempts,
        "next_poll_at": to_epoch(job.next_poll_at),
        "deadline_at": to_epoch(job.deadline_at),
        "trace": job.trace,
    }


def row_to_job(row: dict[str, Any]) -> Job:
    """Column values as a job."""
    return Job(
        request_id=row["request_id"],
        idempotency_key=row["idempotency_key"],
        request_fingerprint=row["request_fingerprint"],
        request=CreateImageRequest.model_validate_json(row["request_json"]),
        requested_by=row["requested_by"],
        source_kind=row["source_kind"],
        source_id=row["source_id"],
        status=JobStatus(row["status"]),
        ims_job_id=row["ims_job_id"],
        image_id=row["image_id"],
        process_percent=row["process_percent"],
        error_code=row["error_code"],
        fail_reason=row["fail_reason"],
        created_at=from_epoch(row["created_at"]) or datetime.now(UTC),
        updated_at=from_epoch(row["updated_at"]) or datetime.now(UTC),
        submitted_at=from_epoch(row["submitted_at"]),
        ended_at=from_epoch(row["ended_at"]),
        poll_attempts=row["poll_attempts"] or 0,
        next_poll_at=from_epoch(row["next_poll_at"]),
        deadline_at=from_epoch(row["deadline_at"]),
        trace=row["trace"],
    )


def poll_update_values(update: PollUpdate) -> dict[str, Any]:
    """The columns a poll update sets (the lease is cleared by the adapter)."""
    return {
        "status": update.status.value,
        "process_percent": update.process_percent,
        "error_code": update.error_code,
        "fail_reason": update.fail_reason,
        "ended_at": to_epoch(update.ended_at),
        "next_poll_at": to_epoch(update.next_poll_at),
        "updated_at": to_epoch(update.at),
        "queried": 1 if update.queried else 0,
        "image_id": update.image_id,
    }


def backup_in_use(holder: Job) -> BackupInUseError:
    """The 409 for a backup that already has a job."""
    return BackupInUseError(
        f"backup {holder.source_id} already has a {holder.status.value} image job: "
        "one backup makes at most one full-ECS image",
        details=[
            {
                "path": "$.backup_id",
                "message": f"in use by request {holder.request_id}"
                + (f" (IMS job {holder.ims_job_id})" if holder.ims_job_id else ""),
            }
        ],
    )
