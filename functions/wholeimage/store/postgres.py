"""PostgreSQL ``JobStore`` (psycopg 3 with a pool), for several instances sharing one state.

The algorithm is ``base.SqlJobStore``'s; this adapter supplies the pool, transactions, claims
and migrations. Claims use ``FOR UPDATE SKIP LOCKED`` so concurrent ticks take disjoint jobs
without waiting on each other. Schema migrations run once, under a transaction-scoped advisory
lock, so instances starting together take turns and each applies only what is missing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from wholeimage.models import Job
from wholeimage.store import schema
from wholeimage.store.base import (
    DUE_JOBS,
    DUE_NOTIFICATIONS,
    DuplicateKeyError,
    Row,
    SqlJobStore,
)
from wholeimage.store.dialect import POSTGRES
from wholeimage.store.records import (
    JOB_COLUMNS,
    NOTIFICATION_COLUMNS,
    Notification,
    row_to_job,
    to_epoch,
)

MIGRATION_LOCK_KEY = 0x77686F6C65  # "whole": one advisory lock id for all wholeimage instances

# Seconds one connection attempt may take. libpq has no limit by default, so an unreachable
# database held a call as long as the network stack tried; the URL's own connect_timeout, or
# libpq's PGCONNECT_TIMEOUT, wins over this.
CONNECT_TIMEOUT = 5
# Seconds a call waits for a free pooled connection (busy, or the database gone since).
POOL_TIMEOUT = 30.0


def connect_options(url: str) -> dict[str, Any]:
    """The options every connection to ``url`` is opened with: a connect timeout, unless the
    URL or the environment names one."""
    if "connect_timeout" in conninfo_to_dict(url) or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT}


# Each migration runs once, in order; the table wholeimage_schema remembers how far we got.
MIGRATIONS: list[list[str]] = [POSTGRES.migration(step) for step in schema.MIGRATIONS]

Cursor = psycopg.Cursor[dict[str, Any]]

_CLAIM = POSTGRES.sql(f"""
UPDATE jobs SET lease_owner = :owner, lease_expires_at = :lease_until
WHERE request_id IN (
    SELECT request_id FROM jobs
    WHERE {DUE_JOBS}
    ORDER BY next_poll_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
RETURNING {", ".join(JOB_COLUMNS)}
""")

_CLAIM_NOTIFICATIONS = POSTGRES.sql(f"""
UPDATE notifications SET lease_owner = :owner, lease_expires_at = :lease_until
WHERE notification_id IN (
    SELECT notification_id FROM notifications
    WHERE {DUE_NOTIFICATIONS}
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
RETURNING {", ".join(NOTIFICATION_COLUMNS)}
""")


class PostgresJobStore(SqlJobStore[Cursor]):
    """``JobStore`` over PostgreSQL."""

    dialect = POSTGRES

    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        self._url = url
        self._max_connections = max_connections
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()

    def _connections(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None:
                options = connect_options(self._url)
                # One direct connection first, for the migrations: a database that cannot be
                # reached fails here within the connect timeout, with the driver's one error,
                # rather than after the pool's wait, which retried and logged every attempt.
                with psycopg.connect(self._url, **options) as connection:
                    migrate(connection)
                self._pool = ConnectionPool(
                    self._url,
                    min_size=1,
                    max_size=self._max_connections,
                    open=True,
                    timeout=POOL_TIMEOUT,
                    kwargs=options,
                )
            return self._pool

    # --- the primitives ----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        # The pool's connection context commits on success and rolls back on an exception.
        with (
            self._connections().connection() as connection,
            connection.cursor(row_factory=dict_row) as cursor,
        ):
            yield cursor

    def _execute(self, handle: Cursor, sql: str, params: Mapping[str, Any]) -> int:
        try:
            handle.execute(sql, params)
        except psycopg.errors.UniqueViolation as exc:
            # The constraint's name, not the error's text: that quotes the values.
            raise DuplicateKeyError(f"unique constraint {exc.diag.constraint_name}") from exc
        return handle.rowcount

    def _fetch_one(self, handle: Cursor, sql: str, params: Mapping[str, Any]) -> Row | None:
        handle.execute(sql, params)
        return handle.fetchone()

    def _fetch_all(self, handle: Cursor, sql: str, params: Mapping[str, Any]) -> list[Row]:
        handle.execute(sql, params)
        return handle.fetchall()

    # --- claims ------------------------------------------------------------------------------

    def _lease(
        self, sql: str, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Row]:
        params = {
            "owner": owner,
            "lease_until": to_epoch(lease_until),
            "now": to_epoch(now),
            "limit": limit,
        }
        with self._transaction() as cursor:
            return self._fetch_all(cursor, sql, params)

    def claim_due(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Job]:
        """See ``JobStore.claim_due``."""
        rows = self._lease(_CLAIM, now=now, owner=owner, lease_until=lease_until, limit=limit)
        jobs = [row_to_job(row) for row in rows]
        # RETURNING comes in no particular order.
        return sorted(jobs, key=lambda job: job.next_poll_at or job.created_at)

    def claim_notifications(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Notification]:
        """See ``JobStore.claim_notifications``."""
        rows = self._lease(
            _CLAIM_NOTIFICATIONS, now=now, owner=owner, lease_until=lease_until, limit=limit
        )
        notifications = [Notification.from_row(row) for row in rows]
        return sorted(notifications, key=lambda row: (row.next_attempt_at, row.notification_id))

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
