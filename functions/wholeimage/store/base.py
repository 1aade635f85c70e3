"""``SqlJobStore``: the ``JobStore`` algorithm, written once over a few adapter primitives.

An adapter (``sqlite``, ``postgres``) supplies its ``dialect`` (``dialect.SQLITE``, ...) and:

- ``_transaction()``: a context manager for one write transaction; it yields a handle the
  primitives below take, commits when the block ends and rolls back when it raises;
- ``_read()``: the same for reads (by default a transaction too);
- ``_execute(handle, sql, params)`` -> rows affected; ``_fetch_one`` -> a row as a dict or
  None; ``_fetch_all`` -> a list of them. ``sql`` is already in the driver's own parameter
  style. A write that breaks a unique constraint raises ``DuplicateKeyError`` (chained to the
  engine's error), never the driver's own error;
- what the engines really do differently: ``claim_due`` and ``claim_notifications`` (how rows
  are leased without two claimers taking the same one), connections, the schema migrations.

Statements here carry ``:name`` parameters; ``Dialect.sql`` renders them for the driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from wholeimage.errors import SubmissionInProgressError
from wholeimage.models import Job, JobStatus
from wholeimage.store.dialect import Dialect
from wholeimage.store.policy_store import PolicyStoreMixin
from wholeimage.store.records import (
    BACKUP_BLOCKING_SQL,
    BACKUP_KINDS,
    BACKUP_KINDS_SQL,
    JOB_COLUMNS,
    NOTIFICATION_COLUMNS,
    OUTSTANDING_SQL,
    RECORDABLE_SQL,
    UNRESOLVED_SQL,
    Notification,
    Outbox,
    PollUpdate,
    Reservation,
    Settlement,
    backup_in_use,
    from_epoch,
    job_to_row,
    poll_update_values,
    row_to_job,
    to_epoch,
)
from wholeimage.store.schema import NO_MARKER_CODE

Handle = TypeVar("Handle")
Row = dict[str, Any]

SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
SELECT_NOTIFICATION = f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications"

# What ``claim_due`` may lease (``:now``): outstanding, due, and not leased or the lease expired.
DUE_JOBS = (
    f"status IN ({OUTSTANDING_SQL}) AND next_poll_at <= :now "
    "AND (lease_expires_at IS NULL OR lease_expires_at < :now)"
)
# What ``claim_unresolved`` may lease (``:now``, ``:stale_before``).
UNRESOLVED_JOBS = (
    f"status IN ({UNRESOLVED_SQL}) "
    f"AND (error_code IS NULL OR error_code <> '{NO_MARKER_CODE}') "
    "AND ((next_poll_at IS NULL AND updated_at <= :stale_before) OR next_poll_at <= :now) "
    "AND (lease_expires_at IS NULL OR lease_expires_at < :now)"
)
# Conditional on the row still being claimable, so of two concurrent claimers one wins (in
# PostgreSQL the loser's UPDATE waits for the winner's row lock, then re-checks and skips).
# ``updated_at`` is left alone: if the claiming tick dies, the row is due again as soon as
# its lease expires.
_LEASE_UNRESOLVED = (
    "UPDATE jobs SET lease_owner = :owner, lease_expires_at = :lease_until, "
    "fail_reason = CASE WHEN status = 'SUBMITTING' THEN :interrupted ELSE fail_reason END, "
    "status = 'SUBMIT_UNCERTAIN' "
    f"WHERE request_id = :request_id AND {UNRESOLVED_JOBS}"
)
INTERRUPTED_REASON = "the submission was interrupted; IMS may have accepted it"
# What ``claim_notifications`` may lease, likewise.
DUE_NOTIFICATIONS = (
    "state = 'PENDING' AND next_attempt_at <= :now "
    "AND (lease_expires_at IS NULL OR lease_expires_at < :now)"
)

_BACKUP_HOLDER = (
    f"source_kind IN ({BACKUP_KINDS_SQL}) AND source_id = :source_id "
    f"AND status IN ({BACKUP_BLOCKING_SQL})"
)

# Conditional on the lease and on the job being outstanding: an end is recorded exactly once.
_RECORD_POLL = (
    "UPDATE jobs SET status = :status, process_percent = :process_percent, "
    "image_id = COALESCE(:image_id, image_id), error_code = :error_code, "
    "fail_reason = :fail_reason, ended_at = :ended_at, next_poll_at = :next_poll_at, "
    "updated_at = :updated_at, poll_attempts = poll_attempts + :queried, "
    "lease_owner = NULL, lease_expires_at = NULL "
    f"WHERE request_id = :request_id AND lease_owner = :owner AND status IN ({RECORDABLE_SQL})"
)

# Only the lease holder settles, and only a PENDING row: a delivery is recorded once.
_SETTLE = (
    "UPDATE notifications SET state = :state, attempts = attempts + :attempted, "
    "next_attempt_at = :next_attempt_at, delivered_at = :delivered_at, dead_at = :dead_at, "
    "last_error = :last_error, message_id = :message_id, lease_owner = NULL, lease_expires_at = NULL "
    "WHERE notification_id = :notification_id AND lease_owner = :owner AND state = 'PENDING'"
)

_REDRIVE = (
    "UPDATE notifications SET state = 'PENDING', attempts = 0, next_attempt_at = :now, "
    "dead_at = NULL, lease_owner = NULL, lease_expires_at = NULL WHERE state = 'DEAD'"
)

_OUTSTANDING = f"FROM jobs WHERE status IN ({OUTSTANDING_SQL})"


class DuplicateKeyError(Exception):
    """A write broke a unique constraint (the adapters' translation of their engine's error)."""


class SqlJobStore(PolicyStoreMixin[Handle], ABC):
    """``JobStore`` over SQL; see the module docstring for what an adapter supplies."""

    dialect: ClassVar[Dialect]

    # --- the primitives ----------------------------------------------------------------------

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Handle]:
        """One write transaction."""

    def _read(self) -> AbstractContextManager[Handle]:
        """Where reads run."""
        return self._transaction()

    @abstractmethod
    def _execute(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> int:
        """Run one statement; the number of rows it affected."""

    @abstractmethod
    def _fetch_one(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> Row | None:
        """Run one query; its first row."""

    @abstractmethod
    def _fetch_all(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> list[Row]:
        """Run one query; all its rows."""

    # --- the same primitives, taking this module's :name statements ---------------------------

    def _run(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> int:
        return self._execute(handle, self.dialect.sql(sql), params)

    def _one(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> Row | None:
        return self._fetch_one(handle, self.dialect.sql(sql), params)

    def _all(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> list[Row]:
        return self._fetch_all(handle, self.dialect.sql(sql), params)

    def _job(self, handle: Handle, where: str, **params: Any) -> Job | None:
        row = self._one(handle, f"{SELECT_JOB} WHERE {where}", params)
        return row_to_job(row) if row is not None else None

    # --- jobs --------------------------------------------------------------------------------

    def reserve(self, job: Job) -> Reservation:
        """See ``JobStore.reserve``."""
        # Where a concurrent reservation can commit the same key or backup between our check
        # and our insert (PostgreSQL), a unique index refuses ours and the second pass sees
        # theirs. Losing twice in a row means someone is reserving it right now.
        for attempt in range(2):
            try:
                return self._reserve_once(job)
            except DuplicateKeyError as exc:
                if attempt == 1:
                    raise SubmissionInProgressError(
                        "another request for this idempotency key or backup is being recorded "
                        "right now; retry shortly"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _reserve_once(self, job: Job) -> Reservation:
        with self._transaction() as handle:
            if job.idempotency_key is not None:
                existing = self._job(handle, "idempotency_key = :key", key=job.idempotency_key)
                if existing is not None:
                    return Reservation(job=existing, created=False)
            if job.source_kind in BACKUP_KINDS:
                holder = self._job(handle, _BACKUP_HOLDER, source_id=job.source_id)
                if holder is not None:
                    raise backup_in_use(holder)
            row = job_to_row(job)
            self._run(handle, self.dialect.insert("jobs", tuple(row), ignore_duplicates=False), row)
        return Reservation(job=job, created=True)

    def _update(self, request_id: str, expected: JobStatus, **changes: Any) -> Job:
        """Set ``changes`` only while the job has status ``expected``; the job as it then is."""
        assignments = ", ".join(f"{column} = :{column}" for column in changes)
        with self._transaction() as handle:
            self._run(
                handle,
                f"UPDATE jobs SET {assignments} WHERE request_id = :request_id AND status = :expected",
                {**changes, "request_id": request_id, "expected": expected.value},
            )
            job = self._job(handle, "request_id = :request_id", request_id=request_id)
        if job is None:
            raise LookupError(f"job {request_id} vanished")
        return job

    def mark_submitted(
        self, request_id: str, *, ims_job_id: str, now: datetime, next_poll_at: datetime
    ) -> Job:
        """See ``JobStore.mark_submitted``."""
        return self._update(
            request_id,
            JobStatus.SUBMITTING,
            status=JobStatus.SUBMITTED.value,
            ims_job_id=ims_job_id,
            submitted_at=to_epoch(now),
            updated_at=to_epoch(now),
            next_poll_at=to_epoch(next_poll_at),
        )

    def mark_uncertain(self, request_id: str, *, reason: str, now: datetime) -> Job:
        """See ``JobStore.mark_uncertain``."""
        return self._update(
            request_id,
            JobStatus.SUBMITTING,
            status=JobStatus.SUBMIT_UNCERTAIN.value,
            fail_reason=reason,
            updated_at=to_epoch(now),
        )

    def discard(self, request_id: str) -> None:
        """See ``JobStore.discard``."""
        with self._transaction() as handle:
            self._run(
                handle,
                f"DELETE FROM jobs WHERE request_id = :request_id AND status IN ({UNRESOLVED_SQL})",
                {"request_id": request_id},
            )

    def get(self, request_id: str) -> Job | None:
        """See ``JobStore.get``."""
        with self._read() as handle:
            return self._job(handle, "request_id = :request_id", request_id=request_id)

    def get_by_ims_job_id(self, ims_job_id: str) -> Job | None:
        """See ``JobStore.get_by_ims_job_id``."""
        with self._read() as handle:
            return self._job(handle, "ims_job_id = :ims_job_id", ims_job_id=ims_job_id)

    @abstractmethod
    def claim_due(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Job]:
        """See ``JobStore.claim_due`` (``DUE_JOBS`` says which jobs)."""

    def claim_unresolved(
        self,
        *,
        now: datetime,
        owner: str,
        lease_until: datetime,
        stale_before: datetime,
        limit: int,
    ) -> list[Job]:
        """See ``JobStore.claim_unresolved``: few rows, so one conditional update each."""
        params = {"now": to_epoch(now), "stale_before": to_epoch(stale_before)}
        claimed: list[Job] = []
        with self._transaction() as handle:
            rows = self._all(
                handle,
                f"SELECT request_id FROM jobs WHERE {UNRESOLVED_JOBS} "
                f"ORDER BY updated_at, {self.dialect.in_byte_order('request_id')} LIMIT :limit",
                {**params, "limit": limit},
            )
            for row in rows:
                leased = self._run(
                    handle,
                    _LEASE_UNRESOLVED,
                    {
                        **params,
                        "owner": owner,
                        "lease_until": to_epoch(lease_until),
                        "interrupted": INTERRUPTED_REASON,
                        "request_id": row["request_id"],
                    },
                )
                if leased == 1:
                    job = self._job(handle, "request_id = :id", id=row["request_id"])
                    if job is not None:
                        claimed.append(job)
        return claimed

    def record_polls(
        self, updates: list[PollUpdate], *, owner: str, outbox: Outbox | None = None
    ) -> list[PollUpdate]:
        """See ``JobStore.record_polls``."""
        applied: list[PollUpdate] = []
        with self._transaction() as handle:
            for update in updates:
                values = poll_update_values(update)
                params = {**values, "request_id": update.request_id, "owner": owner}
                if self._run(handle, _RECORD_POLL, params) != 1:
                    continue
                applied.append(update)
                if outbox is not None and update.ended_at is not None:
                    job = self._job(
                        handle, "request_id = :request_id", request_id=update.request_id
                    )
                    if job is not None:
                        self._insert_notifications(handle, outbox(job, update.at))
        return applied

    def count_outstanding(self) -> int:
        """See ``JobStore.count_outstanding``."""
        with self._read() as handle:
            row = self._one(handle, f"SELECT COUNT(*) AS n {_OUTSTANDING}", {})
        return int(row["n"]) if row else 0

    def count_unresolved(self) -> int:
        """See ``JobStore.count_unresolved``."""
        with self._read() as handle:
            row = self._one(
                handle, f"SELECT COUNT(*) AS n FROM jobs WHERE status IN ({UNRESOLVED_SQL})", {}
            )
        return int(row["n"]) if row else 0

    def next_due_at(self) -> datetime | None:
        """See ``JobStore.next_due_at``."""
        with self._read() as handle:
            row = self._one(handle, f"SELECT MIN(next_poll_at) AS due {_OUTSTANDING}", {})
        return from_epoch(row["due"]) if row else None

    def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None,
        since: datetime | None,
        limit: int,
    ) -> list[Job]:
        """See ``JobStore.list_jobs``."""
        if limit < 1 or (statuses is not None and not statuses):
            return []
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if statuses is not None:
            wanted = sorted({JobStatus(status).value for status in statuses})
            names = [f"status_{index}" for index in range(len(wanted))]
            where.append(f"status IN ({', '.join(f':{name}' for name in names)})")
            params.update(zip(names, wanted, strict=True))
        if since is not None:
            where.append("created_at >= :since")
            params["since"] = to_epoch(since)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        # Ties on created_at break by request_id in byte order, the same in both engines.
        order = f"created_at DESC, {self.dialect.in_byte_order('request_id')} DESC"
        with self._read() as handle:
            rows = self._all(handle, f"{SELECT_JOB} {clause}ORDER BY {order} LIMIT :limit", params)
        return [row_to_job(row) for row in rows]

    # --- the notification outbox -------------------------------------------------------------

    def _insert_notifications(self, handle: Handle, notifications: list[Notification]) -> int:
        added = 0
        for notification in notifications:
            row = notification.to_row()
            sql = self.dialect.insert("notifications", tuple(row), ignore_duplicates=True)
            added += self._run(handle, sql, row)
        return added

    def add_notifications(self, notifications: list[Notification]) -> int:
        """See ``JobStore.add_notifications``."""
        with self._transaction() as handle:
            return self._insert_notifications(handle, notifications)

    @abstractmethod
    def claim_notifications(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Notification]:
        """See ``JobStore.claim_notifications`` (``DUE_NOTIFICATIONS`` says which rows)."""

    def settle_notifications(self, settlements: list[Settlement], *, owner: str) -> int:
        """See ``JobStore.settle_notifications``."""
        settled = 0
        with self._transaction() as handle:
            for settlement in settlements:
                settled += self._run(handle, _SETTLE, {**settlement.values(), "owner": owner})
        return settled

    def dead_letters(self, *, limit: int = 100) -> list[Notification]:
        """See ``JobStore.dead_letters``."""
        with self._read() as handle:
            rows = self._all(
                handle,
                f"{SELECT_NOTIFICATION} WHERE state = 'DEAD' ORDER BY dead_at DESC LIMIT :limit",
                {"limit": limit},
            )
        return [Notification.from_row(row) for row in rows]

    def redrive(self, notification_ids: list[str] | None, *, now: datetime) -> int:
        """See ``JobStore.redrive``."""
        with self._transaction() as handle:
            if notification_ids is None:
                return self._run(handle, _REDRIVE, {"now": to_epoch(now)})
            redriven = 0
            for notification_id in notification_ids:
                redriven += self._run(
                    handle,
                    f"{_REDRIVE} AND notification_id = :id",
                    {"now": to_epoch(now), "id": notification_id},
                )
            return redriven

    def notification_counts(self) -> dict[str, int]:
        """See ``JobStore.notification_counts``."""
        with self._read() as handle:
            rows = self._all(
                handle, "SELECT state, COUNT(*) AS n FROM notifications GROUP BY state", {}
            )
        return {row["state"]: int(row["n"]) for row in rows}

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
