"""SQLite ``JobStore``: one file, WAL, safe for several threads and processes on one machine.

The algorithm is ``base.SqlJobStore``'s; this adapter supplies connections, transactions,
claims and migrations. Each thread gets its own connection (sqlite3 connections are not to be
shared across threads while in a transaction); every write runs in ``BEGIN IMMEDIATE`` so that
concurrent writers queue on the database lock instead of failing half-way. Reads run outside a
transaction: in WAL mode they see the last commit without waiting for writers.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from wholeimage.models import Job
from wholeimage.store import schema
from wholeimage.store.base import (
    DUE_JOBS,
    DUE_NOTIFICATIONS,
    SELECT_JOB,
    SELECT_NOTIFICATION,
    DuplicateKeyError,
    Row,
    SqlJobStore,
)
from wholeimage.store.dialect import SQLITE
from wholeimage.store.records import Notification, row_to_job, to_epoch

# Each migration runs once, in order; PRAGMA user_version remembers how far a file got.
MIGRATIONS: list[list[str]] = [SQLITE.migration(step) for step in schema.MIGRATIONS]
SCHEMA_VERSION = len(MIGRATIONS)

WAL_SWITCH_TIMEOUT = 30.0

_UNIQUE_VIOLATIONS = frozenset(
    {sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY}
)

# Claims select, then lease, inside one BEGIN IMMEDIATE: no other writer runs in between.
_DUE_JOBS = f"{SELECT_JOB} WHERE {DUE_JOBS} ORDER BY next_poll_at LIMIT :limit"
_LEASE_JOB = "UPDATE jobs SET lease_owner = ?, lease_expires_at = ? WHERE request_id = ?"
_DUE_NOTIFICATIONS = (
    f"{SELECT_NOTIFICATION} WHERE {DUE_NOTIFICATIONS} ORDER BY next_attempt_at LIMIT :limit"
)
_LEASE_NOTIFICATION = (
    "UPDATE notifications SET lease_owner = ?, lease_expires_at = ? WHERE notification_id = ?"
)


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


class SqliteJobStore(SqlJobStore[sqlite3.Connection]):
    """``JobStore`` over one SQLite file."""

    dialect = SQLITE

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
                for statement in migration:
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        self._schema_ready = True

    # --- the primitives ----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        yield self._connection()

    def _execute(self, handle: sqlite3.Connection, sql: str, params: Mapping[str, Any]) -> int:
        try:
            return handle.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            if exc.sqlite_errorcode in _UNIQUE_VIOLATIONS:
                raise DuplicateKeyError(str(exc)) from exc  # names the columns, not the values
            raise

    def _fetch_one(
        self, handle: sqlite3.Connection, sql: str, params: Mapping[str, Any]
    ) -> Row | None:
        row = handle.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def _fetch_all(
        self, handle: sqlite3.Connection, sql: str, params: Mapping[str, Any]
    ) -> list[Row]:
        return [dict(row) for row in handle.execute(sql, params).fetchall()]

    # --- claims ------------------------------------------------------------------------------

    def claim_due(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Job]:
        """See ``JobStore.claim_due``."""
        with self._transaction() as connection:
            rows = self._fetch_all(connection, _DUE_JOBS, {"now": to_epoch(now), "limit": limit})
            connection.executemany(
                _LEASE_JOB, [(owner, to_epoch(lease_until), row["request_id"]) for row in rows]
            )
        return [row_to_job(row) for row in rows]

    def claim_notifications(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Notification]:
        """See ``JobStore.claim_notifications``."""
        with self._transaction() as connection:
            rows = self._fetch_all(
                connection, _DUE_NOTIFICATIONS, {"now": to_epoch(now), "limit": limit}
            )
            connection.executemany(
                _LEASE_NOTIFICATION,
                [(owner, to_epoch(lease_until), row["notification_id"]) for row in rows],
            )
        return [Notification.from_row(row) for row in rows]

    def close(self) -> None:
        """Close every thread's connection."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
