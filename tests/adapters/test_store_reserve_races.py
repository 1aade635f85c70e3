"""``reserve`` when a unique index refuses its insert: the race between the checks and the insert.

Under real load that race needs PostgreSQL and luck; here a store subclass overriding the
``_execute`` primitive records a rival row just before reserve's ``INSERT INTO jobs``, either
committed (as a concurrent reservation would have) or inside the same transaction (so that it
vanishes with the rollback and the next try loses again). Every test runs twice through
conftest's ``store_kind``: ``[sqlite]`` and ``[postgres]``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from wholeimage.errors import BackupInUseError, ConflictError, SubmissionInProgressError
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.store.base import DuplicateKeyError, SqlJobStore
from wholeimage.store.postgres import PostgresJobStore
from wholeimage.store.sqlite import SqliteJobStore

T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
ECS_BODY: dict[str, Any] = {
    "name": "web01-full",
    "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
}

pytestmark = pytest.mark.usefixtures("store_kind")


@dataclass
class Rival:
    """A row recorded just before our insert: ours with ``overrides``, committed or not."""

    committed: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def row(self, ours: Mapping[str, Any]) -> dict[str, Any]:
        """Its column values, given ours."""
        return {**ours, **self.overrides, "request_id": self.request_id}


def next_rival(rivals: list[Rival], sql: str) -> Rival | None:
    """The rival this statement meets: reserve's insert meets the next one planned."""
    return rivals.pop(0) if sql.startswith("INSERT INTO jobs") and rivals else None


class SqliteLosesRaces(SqliteJobStore):
    """A SQLite store whose next reservations each meet a rival from ``rivals`` at the insert."""

    rivals: list[Rival]

    def _execute(self, handle: sqlite3.Connection, sql: str, params: Mapping[str, Any]) -> int:
        if (rival := next_rival(self.rivals, sql)) is not None:
            super()._execute(handle, sql, rival.row(params))
            if rival.committed:
                handle.execute("COMMIT")
                handle.execute("BEGIN IMMEDIATE")
        return super()._execute(handle, sql, params)


class PostgresLosesRaces(PostgresJobStore):
    """The same over PostgreSQL."""

    rivals: list[Rival]

    def _execute(self, handle: psycopg.Cursor[Any], sql: str, params: Mapping[str, Any]) -> int:
        if (rival := next_rival(self.rivals, sql)) is not None:
            super()._execute(handle, sql, rival.row(params))
            if rival.committed:
                handle.connection.commit()  # the next statement starts a new transaction
        return super()._execute(handle, sql, params)


@pytest.fixture
def racing(state_url: str) -> Iterator[SqliteLosesRaces | PostgresLosesRaces]:
    """A store on the test's state whose reservations meet the rivals the test plans."""
    opened = (
        SqliteLosesRaces(state_url.removeprefix("sqlite:///"))
        if state_url.startswith("sqlite:///")
        else PostgresLosesRaces(state_url)
    )
    opened.rivals = []
    yield opened
    opened.close()


def new_job(body: dict[str, Any], *, key: str | None) -> Job:
    request = CreateImageRequest.model_validate(body)
    return Job(
        request_id=uuid.uuid4().hex,
        idempotency_key=key,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="alice",
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=JobStatus.SUBMITTING,
        created_at=T0,
        updated_at=T0,
    )


def cbr_body() -> dict[str, Any]:
    return {"name": "from-cbr", "backup_id": str(uuid.uuid4()), "whole_image_type": "CBR"}


def recorded_ids(store: SqlJobStore[Any]) -> list[str]:
    return [job.request_id for job in store.list_jobs(statuses=None, since=None, limit=100)]


def test_a_key_recorded_between_the_check_and_the_insert_is_found_on_the_second_try(racing):
    rival = Rival(committed=True)
    racing.rivals = [rival]

    reservation = racing.reserve(new_job(ECS_BODY, key="key-1"))

    assert reservation.created is False
    assert reservation.job.request_id == rival.request_id
    assert reservation.job.idempotency_key == "key-1"
    assert recorded_ids(racing) == [rival.request_id]


def test_a_backup_taken_between_the_check_and_the_insert_is_refused_on_the_second_try(racing):
    rival = Rival(committed=True, overrides={"idempotency_key": "rival-key"})
    racing.rivals = [rival]
    body = cbr_body()

    with pytest.raises(BackupInUseError) as refused:
        racing.reserve(new_job(body, key="key-1"))

    assert rival.request_id in refused.value.details[0]["message"]
    assert recorded_ids(racing) == [rival.request_id]


def test_a_race_lost_once_is_retried_and_the_job_recorded(racing):
    racing.rivals = [Rival(committed=False)]
    job = new_job(ECS_BODY, key="key-1")

    reservation = racing.reserve(job)

    assert reservation.created is True
    assert recorded_ids(racing) == [job.request_id]


@pytest.mark.parametrize("body", [ECS_BODY, cbr_body()], ids=["ecs", "cbr"])
def test_a_reservation_that_loses_both_tries_is_a_conflict_of_the_store_and_records_nothing(
    racing, body
):
    racing.rivals = [Rival(committed=False), Rival(committed=False)]
    job = new_job(body, key="key-1")

    with pytest.raises(SubmissionInProgressError) as refused:
        racing.reserve(job)

    assert isinstance(refused.value, ConflictError)
    assert refused.value.http_status == 409
    assert refused.value.code == "submission_in_progress"
    assert isinstance(refused.value.__cause__, DuplicateKeyError)
    assert recorded_ids(racing) == []
    # Nothing is left half-done: the same reservation goes through once the race is over.
    assert racing.reserve(job).created is True
    assert recorded_ids(racing) == [job.request_id]
