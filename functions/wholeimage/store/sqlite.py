"""SQLite ``JobStore``: one file, WAL, safe for several threads and processes on one machine.

Each thread gets its own connection (sqlite3 connections are not to be shared across threads
while in a transaction); every write runs in ``BEGIN IMMEDIATE`` so that concurrent writers
queue on the database lock instead of failing half-way.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from wholeimage.models import Job, JobStatus
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

_JOBS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    request_id          TEXT PRIMARY KEY,
    idempotency_key     TEXT UNIQUE,
    request_fingerprint TEXT NOT NULL,
    request_json        TEXT NOT NULL,
    requested_by        TEXT,
    source_kind         TEXT NOT NULL,
    source_id           TEXT NOT NULL,
    status              TEXT NOT NULL,
    ims_job_id          TEXT UNIQUE,
    image_id            TEXT,
    process_percent     REAL,
    error_code          TEXT,
    fail_reason         TEXT,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    submitted_at        REAL,
    ended_at            REAL,
    poll_attempts       INTEGER NOT NULL DEFAULT 0,
    next_poll_at        REAL,
    deadline_at         REAL,
    lease_owner         TEXT,
    lease_expires_at    REAL,
    trace               TEXT
);
-- One backup, one image: at most one job per backup in a blocking state, even under a race.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_backup_once ON jobs (source_id)
    WHERE source_kind IN ('csbs', 'cbr') AND status IN ({BACKUP_BLOCKING_SQL});
-- Due jobs only: a partial index over outstanding rows, ordered by next poll time.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (next_poll_at) WHERE status IN ({OUTSTANDING_SQL});
"""

NOTIFICATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    notification_id  TEXT PRIMARY KEY,
    result_key       TEXT NOT NULL,
    channel          TEXT NOT NULL,
    result_json      TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    next_attempt_at  REAL NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    delivered_at     REAL,
    message_id       TEXT,
    last_error       TEXT,
    dead_at          REAL,
    UNIQUE (result_key, channel)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS notifications_dead ON notifications (dead_at) WHERE state = 'DEAD';
"""

# Each migration runs once, in order; PRAGMA user_version remembers how far a file got.
# `list` reads the newest jobs first.
_CREATED_INDEX = "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)"
MIGRATIONS: list[str] = [_JOBS_SCHEMA, NOTIFICATIONS_SCHEMA, _CREATED_INDEX]
SCHEMA_VERSION = len(MIGRATIONS)


WAL_SWITCH_TIMEOUT = 30.0


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Switch the file to WAL, taking turns with other connections switching it at once.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked"
    at once, without calling the busy handler, when another connection holds a lock it could
    deadlock with (another first start switching the same file, a writer of the file still in
    rollback mode): so retry until the usual 30 s timeout.
    """
    deadline = time.monotonic() + WAL_SWITCH_TIMEOUT
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(random.uniform(0.005, 0.05))


# Conditional on the lease and on the job being outstanding: an end is recorded exactly once.
_RECORD_POLL = (
    "UPDATE jobs SET status = :status, process_percent = :process_percent, "
    "image_id = COALESCE(:image_id, image_id), error_code = :error_code, "
    "fail_reason = :fail_reason, ended_at = :ended_at, next_poll_at = :next_poll_at, "
    "updated_at = :updated_at, poll_attempts = poll_attempts + :queried, "
    "lease_owner = NULL, lease_expires_at = NULL "
    f"WHERE request_id = :request_id AND lease_owner = :owner AND status IN ({OUTSTANDING_SQL})"
)


# Only the lease holder settles, and only a PENDING row: a delivery is recorded once.
_SETTLE = (
    "UPDATE notifications SET state = :state, attempts = attempts + :attempted, "
    "next_attempt_at = :next_attempt_at, delivered_at = :delivered_at, dead_at = :dead_at, "
    "last_error = :last_error, message_id = :message_id, lease_owner = NULL, lease_expires_at = NULL "
    "WHERE notification_id = :notification_id AND lease_owner = :owner AND state = 'PENDING'"
)
_REDRIVE_ALL = (
    "UPDATE notifications SET state = 'PENDING', attempts = 0, next_attempt_at = :now, "
    "dead_at = NULL, lease_owner = NULL, lease_expires_at = NULL WHERE state = 'DEAD'"
)


class SqliteJobStore(SubmissionTransitions):
    """``JobStore`` over one SQLite file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._schema_ready = False

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self._path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            connection.row_factory = sqlite3.Row
            _enable_wal(connection)
            # NORMAL is durable against process crashes in WAL mode; FULL costs 5x (docs/performance.md §7).
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
            if not self._schema_ready:
                self._migrate(connection)
        return connection

    def _migrate(self, connection: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE makes concurrent first starts take turns; IF NOT EXISTS makes it idempotent.
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            for migration in MIGRATIONS[version:]:
                for statement in migration.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        self._schema_ready = True

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _fetch(self, connection: sqlite3.Connection, where: str, *params: Any) -> Job | None:
        row = connection.execute(
            f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE {where}",
            params,
        ).fetchone()
        return row_to_job(dict(row)) if row is not None else None

    def reserve(self, job: Job) -> Reservation:
        """See ``JobStore.reserve``."""
        with self._write() as connection:
            if job.idempotency_key is not None:
                existing = self._fetch(connection, "idempotency_key = ?", job.idempotency_key)
                if existing is not None:
                    return Reservation(job=existing, created=False)
            if job.source_kind in ("csbs", "cbr"):
                holder = self._fetch(
                    connection,
                    f"source_kind IN ('csbs', 'cbr') AND source_id = ? "
                    f"AND status IN ({BACKUP_BLOCKING_SQL})",
                    job.source_id,
                )
                if holder is not None:
                    raise backup_in_use(holder)
            row = job_to_row(job)
            placeholders = ", ".join("?" for _ in row)
            connection.execute(
                f"INSERT INTO jobs ({', '.join(row)}) VALUES ({placeholders})",
                tuple(row.values()),
            )
        return Reservation(job=job, created=True)

    def _update(self, request_id: str, expected: JobStatus, **changes: Any) -> Job:
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._write() as connection:
            connection.execute(
                f"UPDATE jobs SET {assignments} WHERE request_id = ? AND status = ?",
                (*changes.values(), request_id, expected.value),
            )
            job = self._fetch(connection, "request_id = ?", request_id)
        if job is None:
            raise LookupError(f"job {request_id} vanished")
        return job

    def discard(self, request_id: str) -> None:
        """See ``JobStore.discard``."""
        with self._write() as connection:
            connection.execute(
                "DELETE FROM jobs WHERE request_id = ? AND status = ?",
                (request_id, JobStatus.SUBMITTING.value),
            )

    def get(self, request_id: str) -> Job | None:
        """See ``JobStore.get``."""
        return self._fetch(self._connection(), "request_id = ?", request_id)

    def get_by_ims_job_id(self, ims_job_id: str) -> Job | None:
        """See ``JobStore.get_by_ims_job_id``."""
        return self._fetch(self._connection(), "ims_job_id = ?", ims_job_id)

    def claim_due(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Job]:
        """See ``JobStore.claim_due``."""
        moment = to_epoch(now)
        with self._write() as connection:
            rows = connection.execute(
                f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs "
                f"WHERE status IN ({OUTSTANDING_SQL}) AND next_poll_at <= ? "
                "AND (lease_expires_at IS NULL OR lease_expires_at < ?) "
                "ORDER BY next_poll_at LIMIT ?",
                (moment, moment, limit),
            ).fetchall()
            connection.executemany(
                "UPDATE jobs SET lease_owner = ?, lease_expires_at = ? WHERE request_id = ?",
                [(owner, to_epoch(lease_until), row["request_id"]) for row in rows],
            )
        return [row_to_job(dict(row)) for row in rows]

    def record_polls(
        self, updates: list[PollUpdate], *, owner: str, outbox: Outbox | None = None
    ) -> list[PollUpdate]:
        """See ``JobStore.record_polls``."""
        applied: list[PollUpdate] = []
        with self._write() as connection:
            for update in updates:
                values = poll_update_values(update)
                cursor = connection.execute(
                    _RECORD_POLL, {**values, "request_id": update.request_id, "owner": owner}
                )
                if cursor.rowcount != 1:
                    continue
                applied.append(update)
                if outbox is not None and update.ended_at is not None:
                    job = self._fetch(connection, "request_id = ?", update.request_id)
                    if job is not None:
                        self._insert_notifications(connection, outbox(job, update.at))
        return applied

    @staticmethod
    def _insert_notifications(
        connection: sqlite3.Connection, notifications: list[Notification]
    ) -> int:
        added = 0
        for notification in notifications:
            row = notification.to_row()
            cursor = connection.execute(
                f"INSERT OR IGNORE INTO notifications ({', '.join(row)}) "
                f"VALUES ({', '.join(':' + name for name in row)})",
                row,
            )
            added += cursor.rowcount
        return added

    def add_notifications(self, notifications: list[Notification]) -> int:
        """See ``JobStore.add_notifications``."""
        with self._write() as connection:
            return self._insert_notifications(connection, notifications)

    def claim_notifications(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Notification]:
        """See ``JobStore.claim_notifications``."""
        moment = to_epoch(now)
        with self._write() as connection:
            rows = connection.execute(
                f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications "
                "WHERE state = 'PENDING' AND next_attempt_at <= ? "
                "AND (lease_expires_at IS NULL OR lease_expires_at < ?) "
                "ORDER BY next_attempt_at LIMIT ?",
                (moment, moment, limit),
            ).fetchall()
            connection.executemany(
                "UPDATE notifications SET lease_owner = ?, lease_expires_at = ? WHERE notification_id = ?",
                [(owner, to_epoch(lease_until), row["notification_id"]) for row in rows],
            )
        return [Notification.from_row(dict(row)) for row in rows]

    def settle_notifications(self, settlements: list[Settlement], *, owner: str) -> int:
        """See ``JobStore.settle_notifications``."""
        settled = 0
        with self._write() as connection:
            for settlement in settlements:
                cursor = connection.execute(_SETTLE, {**settlement.values(), "owner": owner})
                settled += cursor.rowcount
        return settled

    def dead_letters(self, *, limit: int = 100) -> list[Notification]:
        """See ``JobStore.dead_letters``."""
        rows = (
            self._connection()
            .execute(
                f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications "
                "WHERE state = 'DEAD' ORDER BY dead_at DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [Notification.from_row(dict(row)) for row in rows]

    def redrive(self, notification_ids: list[str] | None, *, now: datetime) -> int:
        """See ``JobStore.redrive``."""
        with self._write() as connection:
            if notification_ids is None:
                cursor = connection.execute(_REDRIVE_ALL, {"now": to_epoch(now)})
                return cursor.rowcount
            redriven = 0
            for notification_id in notification_ids:
                cursor = connection.execute(
                    _REDRIVE_ALL + " AND notification_id = :id",
                    {"now": to_epoch(now), "id": notification_id},
                )
                redriven += cursor.rowcount
            return redriven

    def notification_counts(self) -> dict[str, int]:
        """See ``JobStore.notification_counts``."""
        rows = (
            self._connection()
            .execute("SELECT state, COUNT(*) FROM notifications GROUP BY state")
            .fetchall()
        )
        return {row[0]: int(row[1]) for row in rows}

    def count_outstanding(self) -> int:
        """See ``JobStore.count_outstanding``."""
        row = (
            self._connection()
            .execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({OUTSTANDING_SQL})")
            .fetchone()
        )
        return int(row[0])

    def next_due_at(self) -> datetime | None:
        """See ``JobStore.next_due_at``."""
        row = (
            self._connection()
            .execute(f"SELECT MIN(next_poll_at) FROM jobs WHERE status IN ({OUTSTANDING_SQL})")
            .fetchone()
        )
        return from_epoch(row[0])

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
        params: list[Any] = []
        if statuses is not None:
            wanted = sorted({JobStatus(status).value for status in statuses})
            where.append(f"status IN ({', '.join('?' for _ in wanted)})")
            params.extend(wanted)
        if since is not None:
            where.append("created_at >= ?")
            params.append(to_epoch(since))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = (
            self._connection()
            .execute(
                f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs {clause}"
                "ORDER BY created_at DESC, request_id DESC LIMIT ?",
                (*params, limit),
            )
            .fetchall()
        )
        return [row_to_job(dict(row)) for row in rows]

    def close(self) -> None:
        """Close every thread's connection."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
