"""The schema the stores generate from ``store.schema``, against databases made by earlier code.

``tests/data/store/schema-v3-{sqlite,postgres}.sql`` hold the DDL the stores ran before it was
generated (schema version 3 in both engines), frozen. A database made from it, once today's
store has opened it (and applied the migrations after 3, which add indexes and the lifecycle
policies' tables), and one made
by today's store must have the same tables, columns, constraints and indexes, down to the
partial indexes' conditions; and a database made from it keeps working.

The database tests take conftest's ``store_kind``, so they run twice: ``[sqlite]`` and
``[postgres]``.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from wholeimage.bootstrap import open_store
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.store import schema
from wholeimage.store.records import (
    JOB_COLUMNS,
    NOTIFICATION_COLUMNS,
    Notification,
    PollUpdate,
    job_to_row,
)

FROZEN = Path(__file__).parents[1] / "data" / "store"
FROZEN_VERSION = 3
LEASE_COLUMNS = ("lease_owner", "lease_expires_at")
T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)

Catalog = dict[str, list[tuple[Any, ...]]]


def frozen_migrations(kind: str) -> list[str]:
    """What each migration ran, in order."""
    text = (FROZEN / f"schema-v3-{kind}.sql").read_text("utf-8")
    return [chunk.strip() for chunk in re.split(r"^-- migration \d+$", text, flags=re.M)[1:]]


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def make_version_3_database(url: str) -> None:
    """A database as the code before the generated schema left it: every migration, version 3."""
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(sqlite_path(url), isolation_level=None)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            for migration in frozen_migrations("sqlite"):
                for statement in migration.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            connection.execute(f"PRAGMA user_version={FROZEN_VERSION}")
        return
    with psycopg.connect(url) as connection:
        connection.execute("CREATE TABLE wholeimage_schema (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO wholeimage_schema (version) VALUES (%s)", (FROZEN_VERSION,))
        for migration in frozen_migrations("postgres"):
            connection.execute(migration)


def schema_version(url: str) -> int:
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(sqlite_path(url))) as connection:
            return int(connection.execute("PRAGMA user_version").fetchone()[0])
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT version FROM wholeimage_schema").fetchone()
        assert row is not None
        return int(row[0])


def catalog(url: str) -> Catalog:
    """Every table, column, constraint and index, as the engine itself describes them."""
    if url.startswith("sqlite:///"):
        return sqlite_catalog(sqlite_path(url))
    return postgres_catalog(url)


def sqlite_catalog(path: str) -> Catalog:
    with closing(sqlite3.connect(path)) as connection:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in connection.execute(sql).fetchall()]

        objects = rows("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
        found: Catalog = {
            # SQLite keeps each CREATE statement's text; only its layout may differ.
            "objects": [
                (kind, name, table, " ".join(sql.split()) if sql else None)
                for kind, name, table, sql in objects
            ]
        }
        for kind, name, *_ in objects:
            if kind == "table":
                found[f"columns {name}"] = rows(f"PRAGMA table_xinfo({name})")
                found[f"indexes {name}"] = rows(f"PRAGMA index_list({name})")
            else:
                found[f"index {name}"] = rows(f"PRAGMA index_xinfo({name})")
        return found


def postgres_catalog(url: str) -> Catalog:
    with psycopg.connect(url) as connection:
        here = connection.execute("SELECT current_schema()").fetchone()
        assert here is not None

        def rows(sql: str) -> list[tuple[Any, ...]]:
            found = connection.execute(sql).fetchall()
            return [tuple(str(value).replace(f"{here[0]}.", "") for value in row) for row in found]

        return {
            "columns": rows(
                "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
                "column_default FROM information_schema.columns "
                "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
            ),
            "constraints": rows(
                "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE connamespace = current_schema()::regnamespace "
                "ORDER BY conname"
            ),
            "indexes": rows(
                "SELECT tablename, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() ORDER BY indexname"
            ),
        }


@pytest.fixture
def version_3_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second, empty state beside ``state_url``: another file, or another PostgreSQL schema."""
    if store_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'version-3.db'}"
        return
    server = str(request.getfixturevalue("postgres_server"))
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{name}"')
    separator = "&" if "?" in server else "?"
    yield f"{server}{separator}options=-csearch_path%3D{name}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA "{name}" CASCADE')


def insert_behind_the_stores_back(url: str, job: Job) -> None:
    """Record ``job`` as the code of schema version 3 would have, without migrating."""
    row = job_to_row(job)
    columns = ", ".join(row)
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(sqlite_path(url))) as connection, connection:
            marks = ", ".join("?" for _ in row)
            connection.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(row.values()))
        return
    with psycopg.connect(url) as postgres:
        marks = ", ".join("%s" for _ in row)
        postgres.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(row.values()))


def new_job(status: JobStatus, *, next_poll_at: datetime | None = None) -> Job:
    request = CreateImageRequest.model_validate(
        {"name": "from-cbr", "backup_id": str(uuid.uuid4()), "whole_image_type": "CBR"}
    )
    return Job(
        request_id=uuid.uuid4().hex,
        idempotency_key=uuid.uuid4().hex,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="alice",
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=status,
        ims_job_id=None if status is JobStatus.SUBMITTING else uuid.uuid4().hex,
        created_at=T0,
        updated_at=T0,
        next_poll_at=next_poll_at,
    )


# --- the column table ------------------------------------------------------------------------


def without_leases(table: schema.Table) -> tuple[str, ...]:
    return tuple(name for name in table.column_names() if name not in LEASE_COLUMNS)


def test_the_row_mappings_cover_every_column_but_the_leases():
    assert without_leases(schema.JOBS) == JOB_COLUMNS
    assert without_leases(schema.NOTIFICATIONS) == NOTIFICATION_COLUMNS


def test_the_migrations_create_each_table_and_index_once():
    names = [
        item.name
        for migration in schema.MIGRATIONS
        for item in migration
        if not isinstance(item, schema.Statement)
    ]

    assert len(names) == len(set(names))
    assert {schema.JOBS.name, schema.NOTIFICATIONS.name} <= set(names)


# --- against databases of schema version 3 ---------------------------------------------------


def index_names(found: Catalog) -> set[str]:
    if "objects" in found:
        return {name for kind, name, *_ in found["objects"] if kind == "index"}
    return {name for _, name, _ in found["indexes"]}


# What the migrations after version 3 add: indexes, and tables with their indexes.
ADDED_AFTER_3 = {
    item.name
    for migration in schema.MIGRATIONS[FROZEN_VERSION:]
    for item in migration
    if isinstance(item, schema.Index)
}


def added_indexes(after: Catalog, before: Catalog) -> set[str]:
    """Indexes in ``after`` but not ``before``, without those each engine makes for a table's keys."""
    return {
        name
        for name in index_names(after) - index_names(before)
        if not name.startswith("sqlite_autoindex_") and not name.endswith("_pkey")
    }


@pytest.mark.usefixtures("store_kind")
def test_a_new_database_has_exactly_the_schema_of_a_migrated_version_3_database(
    store, state_url, version_3_url
):
    store.count_outstanding()  # connected, so migrated
    make_version_3_database(version_3_url)
    frozen = catalog(version_3_url)
    migrated = open_store(version_3_url)
    try:
        migrated.count_outstanding()
    finally:
        migrated.close()

    assert catalog(state_url) == catalog(version_3_url)
    assert added_indexes(catalog(version_3_url), frozen) == ADDED_AFTER_3
    assert schema_version(state_url) == schema_version(version_3_url) == len(schema.MIGRATIONS)
    assert len(schema.MIGRATIONS) == FROZEN_VERSION + 2


@pytest.mark.usefixtures("store_kind")
def test_a_new_database_has_every_index_the_schema_describes(store, state_url):
    described = {
        item.name
        for migration in schema.MIGRATIONS
        for item in migration
        if isinstance(item, schema.Index)
    }

    store.count_outstanding()

    assert described <= index_names(catalog(state_url))


@pytest.mark.usefixtures("store_kind")
def test_a_version_3_database_gains_only_the_new_indexes_and_keeps_working(state_url):
    make_version_3_database(state_url)
    before = catalog(state_url)
    opened = open_store(state_url)
    try:
        due = new_job(JobStatus.RUNNING, next_poll_at=T0)
        assert opened.reserve(due).created is True
        submitting = new_job(JobStatus.SUBMITTING)
        assert opened.reserve(submitting).created is True
        assert (
            opened.mark_submitted(
                submitting.request_id, ims_job_id="ims-1", now=T0, next_poll_at=T0
            ).status
            is JobStatus.SUBMITTED
        )
        now = T0 + timedelta(minutes=1)
        claimed = opened.claim_due(
            now=now, owner="tick", lease_until=now + timedelta(minutes=5), limit=10
        )
        assert {job.request_id for job in claimed} == {due.request_id, submitting.request_id}
        ends = [PollUpdate.end(job, status=JobStatus.SUCCESS, at=now) for job in claimed]
        assert opened.record_polls(ends, owner="tick") == ends
        row = Notification.new(result_key="r-1", channel="chat", result_json="{}", now=now)
        assert opened.add_notifications([row, row]) == 1
        assert opened.notification_counts() == {"PENDING": 1}
        assert len(opened.list_jobs(statuses=[JobStatus.SUCCESS], since=None, limit=10)) == 2
    finally:
        opened.close()

    assert added_indexes(catalog(state_url), before) == ADDED_AFTER_3
    assert schema_version(state_url) == len(schema.MIGRATIONS)


@pytest.mark.usefixtures("store_kind")
def test_jobs_left_unresolved_before_the_marker_existed_are_never_reconciled(state_url):
    # They were sent without a marker tag: "IMS lists no image" would prove nothing about them,
    # so reconciliation must not end them UNCONFIRMED and free their backups.
    make_version_3_database(state_url)
    old = new_job(JobStatus.SUBMITTING)
    insert_behind_the_stores_back(state_url, old)
    opened = open_store(state_url)  # migrates the version 3 database: `old` is flagged
    try:
        flagged = opened.get(old.request_id)
        assert flagged is not None
        assert flagged.error_code == schema.NO_MARKER_CODE
        later = T0 + timedelta(days=1)
        claimed = opened.claim_unresolved(
            now=later,
            owner="tick",
            lease_until=later + timedelta(minutes=5),
            stale_before=later,
            limit=10,
        )
        assert claimed == []
        new = new_job(JobStatus.SUBMITTING)
        assert opened.reserve(new).created is True
        assert [
            job.request_id
            for job in opened.claim_unresolved(
                now=later,
                owner="tick",
                lease_until=later + timedelta(minutes=5),
                stale_before=later,
                limit=10,
            )
        ] == [new.request_id]
    finally:
        opened.close()
