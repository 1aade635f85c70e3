"""PostgreSQL ``JobStore`` (psycopg 3 with a pool), for several instances sharing one state.

Claims use ``FOR UPDATE SKIP LOCKED`` so concurrent ticks take disjoint jobs without waiting
on each other. Schema migrations run once, under a transaction-scoped advisory lock, so
instances starting together take turns and each applies only what is missing.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from wholeimage.models import Job, JobStatus
from wholeimage.store import schema
from wholeimage.store.dialect import POSTGRES
from wholeimage.store.records import (
    BACKUP_BLOCKING_SQL,
    JOB_COLUMNS,
    NOTIFICATION_COLUMNS,
    OUTSTANDING_SQL,
    Notification,
    Outbox,
    PollUpdate,
    Reservation,
    Settlement,
    SubmissionTransitions,
    backup_in_use,
    from_epoch,
    job_to_row,
    poll_update_values,
    row_to_job,
    to_epoch,
)

MIGRATION_LOCK_KEY = 0x77686F6C65  # "whole": one advisory lock id for all wholeimage instances

# Each migration runs once, in order; the table wholeimage_schema remembers how far we got.
MIGRATIONS: list[list[str]] = [POSTGRES.migration(step) for step in schema.MIGRATIONS]

_SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"

_CLAIM = f"""
UPDATE jobs SET lease_owner = %(owner)s, lease_expires_at = %(lease_until)s
WHERE request_id IN (
    SELECT request_id FROM jobs
    WHERE status IN ({OUTSTANDING_SQL}) AND next_poll_at <= %(now)s
      AND (lease_expires_at IS NULL OR lease_expires_at < %(now)s)
    ORDER BY next_poll_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING {", ".join(JOB_COLUMNS)}
"""

# Conditional on the lease and on the job being outstanding: an end is recorded exactly once.
_RECORD_POLL = f"""
UPDATE jobs SET status = %(status)s, process_percent = %(process_percent)s,
    image_id = COALESCE(%(image_id)s, image_id), error_code = %(error_code)s,
    fail_reason = %(fail_reason)s, ended_at = %(ended_at)s, next_poll_at = %(next_poll_at)s,
    updated_at = %(updated_at)s, poll_attempts = poll_attempts + %(queried)s,
    lease_owner = NULL, lease_expires_at = NULL
WHERE request_id = %(request_id)s AND lease_owner = %(owner)s AND status IN ({OUTSTANDING_SQL})
"""


_CLAIM_NOTIFICATIONS = f"""
UPDATE notifications SET lease_owner = %(owner)s, lease_expires_at = %(lease_until)s
WHERE notification_id IN (
    SELECT notification_id FROM notifications
    WHERE state = 'PENDING' AND next_attempt_at <= %(now)s
      AND (lease_expires_at IS NULL OR lease_expires_at < %(now)s)
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING {", ".join(NOTIFICATION_COLUMNS)}
"""

# Only the lease holder settles, and only a PENDING row: a delivery is recorded once.
_SETTLE = """
UPDATE notifications SET state = %(state)s, attempts = attempts + %(attempted)s,
    next_attempt_at = %(next_attempt_at)s, delivered_at = %(delivered_at)s, dead_at = %(dead_at)s,
    last_error = %(last_error)s, message_id = %(message_id)s, lease_owner = NULL, lease_expires_at = NULL
WHERE notification_id = %(notification_id)s AND lease_owner = %(owner)s AND state = 'PENDING'
"""

_REDRIVE = """
UPDATE notifications SET state = 'PENDING', attempts = 0, next_attempt_at = %(now)s,
    dead_at = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE state = 'DEAD' AND (%(all)s OR notification_id = ANY(%(ids)s))
"""


class PostgresJobStore(SubmissionTransitions):
    """``JobStore`` over PostgreSQL."""

    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        self._url = url
        self._max_connections = max_connections
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()

    def _connections(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None:
                pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                    self._url, min_size=1, max_size=self._max_connections, open=True, timeout=30
                )
                try:
                    with pool.connection() as connection:
                        migrate(connection)
                except BaseException:
                    pool.close()
                    raise
                self._pool = pool
            return self._pool

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        # The pool's connection context commits on success and rolls back on an exception.
        with (
            self._connections().connection() as connection,
            connection.cursor(row_factory=dict_row) as cursor,
        ):
            yield cursor

    def _fetch(
        self, cursor: psycopg.Cursor[dict[str, Any]], where: str, *params: Any
    ) -> Job | None:
        cursor.execute(f"{_SELECT_JOB} WHERE {where}", params)
        row = cursor.fetchone()
        return row_to_job(row) if row is not None else None

    def reserve(self, job: Job) -> Reservation:
        """See ``JobStore.reserve``."""
        # A concurrent reservation may commit the same key or backup between our check and our
        # insert; the unique indexes then refuse ours, and the second pass sees theirs.
        for attempt in range(2):
            try:
                return self._reserve_once(job)
            except psycopg.errors.UniqueViolation:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _reserve_once(self, job: Job) -> Reservation:
        with self._transaction() as cursor:
            if job.idempotency_key is not None:
                existing = self._fetch(cursor, "idempotency_key = %s", job.idempotency_key)
                if existing is not None:
                    return Reservation(job=existing, created=False)
            if job.source_kind in ("csbs", "cbr"):
                holder = self._fetch(
                    cursor,
                    f"source_kind IN ('csbs', 'cbr') AND source_id = %s AND status IN ({BACKUP_BLOCKING_SQL})",
                    job.source_id,
                )
                if holder is not None:
                    raise backup_in_use(holder)
            row = job_to_row(job)
            columns = ", ".join(row)
            placeholders = ", ".join(f"%({name})s" for name in row)
            cursor.execute(f"INSERT INTO jobs ({columns}) VALUES ({placeholders})", row)
        return Reservation(job=job, created=True)

    def _update(self, request_id: str, expected: JobStatus, **changes: Any) -> Job:
        assignments = ", ".join(f"{column} = %({column})s" for column in changes)
        with self._transaction() as cursor:
            cursor.execute(
                f"UPDATE jobs SET {assignments} WHERE request_id = %(request_id)s AND status = %(expected)s",
                {**changes, "request_id": request_id, "expected": expected.value},
            )
            job = self._fetch(cursor, "request_id = %s", request_id)
        if job is None:
            raise LookupError(f"job {request_id} vanished")
        return job

    def discard(self, request_id: str) -> None:
        """See ``JobStore.discard``."""
        with self._transaction() as cursor:
            cursor.execute(
                "DELETE FROM jobs WHERE request_id = %s AND status = %s",
                (request_id, JobStatus.SUBMITTING.value),
            )

    def get(self, request_id: str) -> Job | None:
        """See ``JobStore.get``."""
        with self._transaction() as cursor:
            return self._fetch(cursor, "request_id = %s", request_id)

    def get_by_ims_job_id(self, ims_job_id: str) -> Job | None:
        """See ``JobStore.get_by_ims_job_id``."""
        with self._transaction() as cursor:
            return self._fetch(cursor, "ims_job_id = %s", ims_job_id)

    def claim_due(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Job]:
        """See ``JobStore.claim_due``."""
        with self._transaction() as cursor:
            cursor.execute(
                _CLAIM,
                {
                    "owner": owner,
                    "lease_until": to_epoch(lease_until),
                    "now": to_epoch(now),
                    "limit": limit,
                },
            )
            jobs = [row_to_job(row) for row in cursor.fetchall()]
        return sorted(jobs, key=lambda job: job.next_poll_at or job.created_at)

    def record_polls(
        self, updates: list[PollUpdate], *, owner: str, outbox: Outbox | None = None
    ) -> list[PollUpdate]:
        """See ``JobStore.record_polls``."""
        applied: list[PollUpdate] = []
        with self._transaction() as cursor:
            for update in updates:
                cursor.execute(
                    _RECORD_POLL,
                    {**poll_update_values(update), "request_id": update.request_id, "owner": owner},
                )
                if cursor.rowcount != 1:
                    continue
                applied.append(update)
                if outbox is not None and update.ended_at is not None:
                    job = self._fetch(cursor, "request_id = %s", update.request_id)
                    if job is not None:
                        self._insert_notifications(cursor, outbox(job, update.at))
        return applied

    @staticmethod
    def _insert_notifications(
        cursor: psycopg.Cursor[dict[str, Any]], notifications: list[Notification]
    ) -> int:
        added = 0
        for notification in notifications:
            row = notification.to_row()
            cursor.execute(
                f"INSERT INTO notifications ({', '.join(row)}) "
                f"VALUES ({', '.join(f'%({name})s' for name in row)}) ON CONFLICT DO NOTHING",
                row,
            )
            added += cursor.rowcount
        return added

    def add_notifications(self, notifications: list[Notification]) -> int:
        """See ``JobStore.add_notifications``."""
        with self._transaction() as cursor:
            return self._insert_notifications(cursor, notifications)

    def claim_notifications(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Notification]:
        """See ``JobStore.claim_notifications``."""
        with self._transaction() as cursor:
            cursor.execute(
                _CLAIM_NOTIFICATIONS,
                {
                    "owner": owner,
                    "lease_until": to_epoch(lease_until),
                    "now": to_epoch(now),
                    "limit": limit,
                },
            )
            rows = [Notification.from_row(row) for row in cursor.fetchall()]
        return sorted(rows, key=lambda row: (row.next_attempt_at, row.notification_id))

    def settle_notifications(self, settlements: list[Settlement], *, owner: str) -> int:
        """See ``JobStore.settle_notifications``."""
        settled = 0
        with self._transaction() as cursor:
            for settlement in settlements:
                cursor.execute(_SETTLE, {**settlement.values(), "owner": owner})
                settled += cursor.rowcount
        return settled

    def dead_letters(self, *, limit: int = 100) -> list[Notification]:
        """See ``JobStore.dead_letters``."""
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications "
                "WHERE state = 'DEAD' ORDER BY dead_at DESC LIMIT %s",
                (limit,),
            )
            return [Notification.from_row(row) for row in cursor.fetchall()]

    def redrive(self, notification_ids: list[str] | None, *, now: datetime) -> int:
        """See ``JobStore.redrive``."""
        with self._transaction() as cursor:
            cursor.execute(
                _REDRIVE,
                {
                    "now": to_epoch(now),
                    "all": notification_ids is None,
                    "ids": notification_ids or [],
                },
            )
            return cursor.rowcount

    def notification_counts(self) -> dict[str, int]:
        """See ``JobStore.notification_counts``."""
        with self._transaction() as cursor:
            cursor.execute("SELECT state, COUNT(*) AS n FROM notifications GROUP BY state")
            return {row["state"]: int(row["n"]) for row in cursor.fetchall()}

    def count_outstanding(self) -> int:
        """See ``JobStore.count_outstanding``."""
        with self._transaction() as cursor:
            cursor.execute(f"SELECT COUNT(*) AS n FROM jobs WHERE status IN ({OUTSTANDING_SQL})")
            row = cursor.fetchone()
        return int(row["n"]) if row else 0

    def next_due_at(self) -> datetime | None:
        """See ``JobStore.next_due_at``."""
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT MIN(next_poll_at) AS due FROM jobs WHERE status IN ({OUTSTANDING_SQL})"
            )
            row = cursor.fetchone()
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
            where.append("status = ANY(%(statuses)s)")
            params["statuses"] = sorted({JobStatus(status).value for status in statuses})
        if since is not None:
            where.append("created_at >= %(since)s")
            params["since"] = to_epoch(since)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._transaction() as cursor:
            # COLLATE "C": ties break in byte order, as SQLite's default collation does.
            cursor.execute(
                f"{_SELECT_JOB} {clause}"
                'ORDER BY created_at DESC, request_id COLLATE "C" DESC LIMIT %(limit)s',
                params,
            )
            return [row_to_job(row) for row in cursor.fetchall()]

    def close(self) -> None:
        """Close the pool."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


def migrate(connection: psycopg.Connection[Any]) -> int:
    """Apply the missing migrations once, safely when several instances start together.

    Returns the schema version now in force.
    """
    with connection.transaction(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        cursor.execute("CREATE TABLE IF NOT EXISTS wholeimage_schema (version INTEGER NOT NULL)")
        cursor.execute("SELECT version FROM wholeimage_schema")
        row = cursor.fetchone()
        version = int(row[0]) if row else 0
        if row is None:
            cursor.execute("INSERT INTO wholeimage_schema (version) VALUES (0)")
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in migration:
                cursor.execute(statement)
            cursor.execute("UPDATE wholeimage_schema SET version = %s", (number,))
        return len(MIGRATIONS)
