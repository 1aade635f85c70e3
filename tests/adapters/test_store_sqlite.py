"""``SqliteJobStore``: schema, indexes, round-trips, and the promise "no job is lost or
submitted twice, even when two processes run at once" under threads, processes and SIGKILL.

Child processes are started with the "spawn" context; their entry points are the top-level
``child_*`` functions below (spawn imports this module in the child and finds them by name).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeImsClient
from wholeimage.create import STALE_SUBMISSION, CreateOutcome, submit_create
from wholeimage.errors import BackupInUseError, ConflictError, SubmissionInProgressError
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.store.records import OUTSTANDING_SQL
from wholeimage.store.sqlite import SCHEMA_VERSION, SqliteJobStore

T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)

ECS_BODY: dict[str, Any] = {
    "name": "web01-full",
    "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
}
CBR_BODY: dict[str, Any] = {
    "name": "from-cbr",
    "backup_id": "2f1c6a7e-5b7d-4f63-9a41-0d8c3e6b7a15",
    "whole_image_type": "CBR",
}
FULL_CBR_BODY: dict[str, Any] = {
    "name": "from-cbr-with-everything",
    "description": "every optional field set",
    "tags": ["aaa.111", "bbb.333"],
    "image_tags": [{"key": "key2", "value": "value2"}, {"key": "key1", "value": "value1"}],
    "backup_id": "2f1c6a7e-5b7d-4f63-9a41-0d8c3e6b7a15",
    "whole_image_type": "CBR",
    "enterprise_project_id": "0",
    "max_ram": 4096,
    "min_ram": 1024,
}
DUE_JOBS_QUERY = (
    "SELECT request_id FROM jobs WHERE status IN ('SUBMITTED','INIT','RUNNING') "
    "ORDER BY next_poll_at"
)
THREADS = 16
PROCESSES = 4
# How long a fake IMS call takes in the races: long enough for every contender to arrive.
IMS_CALL_SECONDS = 0.2
WAIT_SECONDS = 30.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteJobStore]:
    job_store = SqliteJobStore(str(db_path))
    yield job_store
    job_store.close()


def fixed_now() -> datetime:
    return T0


def new_job(
    body: dict[str, Any], *, key: str | None, status: JobStatus = JobStatus.SUBMITTING
) -> Job:
    request = CreateImageRequest.model_validate(body)
    return Job(
        request_id=uuid.uuid4().hex,
        idempotency_key=key,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="alice",
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=status,
        created_at=T0,
        updated_at=T0,
    )


def query(db_path: Path, sql: str, *params: Any) -> list[Any]:
    """Read the file behind the store's back, with a connection of our own."""
    with closing(sqlite3.connect(db_path)) as connection:
        return connection.execute(sql, params).fetchall()


def statuses(db_path: Path) -> list[tuple[str | None, str]]:
    return query(db_path, "SELECT idempotency_key, status FROM jobs ORDER BY idempotency_key")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- schema ----------------------------------------------------------------------------------


def test_the_schema_is_created_on_first_use_not_on_construction(tmp_path):
    path = tmp_path / "nested" / "dir" / "state.db"
    job_store = SqliteJobStore(str(path))
    try:
        assert not path.exists()

        assert job_store.get("0123456789abcdef0123456789abcdef") is None

        assert path.exists()
        tables = query(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        assert tables == [
            ("image_deletions",),
            ("jobs",),
            ("notifications",),
            ("policies",),
            ("policy_items",),
            ("policy_runs",),
        ]
        assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    finally:
        job_store.close()


def test_creating_the_schema_is_idempotent_across_stores_and_reopening(db_path):
    first = SqliteJobStore(str(db_path))
    second = SqliteJobStore(str(db_path))
    try:
        job = new_job(ECS_BODY, key="key-1")
        assert first.reserve(job).created is True
        assert second.get(job.request_id) == job
        second_job = new_job(ECS_BODY, key="key-2")
        assert second.reserve(second_job).created is True
    finally:
        first.close()
        second.close()
    schema_before = query(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")

    reopened = SqliteJobStore(str(db_path))
    try:
        assert reopened.get(job.request_id) == job
        assert reopened.get(second_job.request_id) == second_job
    finally:
        reopened.close()

    assert (
        query(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before
    )
    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


@pytest.mark.slow
def test_first_use_waits_for_a_writer_of_the_new_file_instead_of_failing(db_path):
    # A writer holding a new file's lock makes SQLite refuse the switch to WAL at once, without
    # the busy handler: the store must take its turn, as concurrent first starts need.
    writer = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: writer.execute("ROLLBACK"))
    release.start()
    job_store = SqliteJobStore(str(db_path))
    try:
        assert job_store.get("anything") is None
    finally:
        release.join()
        writer.close()
        job_store.close()

    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_the_database_is_in_wal_mode(store, db_path):
    store.get("anything")

    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_the_partial_indexes_exist(store, db_path):
    store.get("anything")

    indexes = dict(query(db_path, "SELECT name, sql FROM sqlite_master WHERE type = 'index'"))

    backup_once = indexes["jobs_backup_once"]
    assert backup_once.startswith("CREATE UNIQUE INDEX jobs_backup_once ON jobs (source_id)")
    assert "WHERE source_kind IN ('csbs', 'cbr')" in backup_once
    for status in (
        "SUBMITTING",
        "SUBMIT_UNCERTAIN",
        "SUBMITTED",
        "INIT",
        "RUNNING",
        "SUCCESS",
    ):
        assert f"'{status}'" in backup_once
    assert "'FAIL'" not in backup_once
    assert "'TIMED_OUT'" not in backup_once

    due = indexes["jobs_due"]
    assert due.startswith("CREATE INDEX jobs_due ON jobs (next_poll_at) WHERE status IN (")
    assert f"WHERE status IN ({OUTSTANDING_SQL})" in due


@pytest.mark.parametrize(
    "sql",
    [
        DUE_JOBS_QUERY,
        DUE_JOBS_QUERY.replace("ORDER BY", "AND next_poll_at <= ? ORDER BY") + " LIMIT 10",
        f"SELECT request_id FROM jobs WHERE status IN ({OUTSTANDING_SQL}) "
        "AND next_poll_at <= ? ORDER BY next_poll_at LIMIT 10",
    ],
    ids=["all-due", "due-by-now", "due-by-now-from-outstanding-sql"],
)
def test_the_due_jobs_query_uses_the_jobs_due_index(store, db_path, sql):
    store.get("anything")
    params = (T0.timestamp(),) if "?" in sql else ()

    plan = [row[3] for row in query(db_path, f"EXPLAIN QUERY PLAN {sql}", *params)]

    assert any("USING INDEX jobs_due" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


def test_the_backup_index_refuses_a_second_blocking_job_even_behind_the_stores_back(store, db_path):
    store.reserve(new_job(CBR_BODY, key="key-1"))
    second = new_job(CBR_BODY, key="key-2")
    columns = "request_id, request_fingerprint, request_json, source_kind, source_id, status, created_at, updated_at"

    with closing(sqlite3.connect(db_path)) as connection, pytest.raises(sqlite3.IntegrityError):
        connection.execute(
            f"INSERT INTO jobs ({columns}) VALUES (?, ?, '{{}}', ?, ?, 'SUBMITTED', 0, 0)",
            (second.request_id, second.request_fingerprint, "cbr", second.source_id),
        )


# --- round-trip and transitions --------------------------------------------------------------


def test_a_job_round_trips_through_reserve_and_get_with_every_field(store):
    job = Job(
        request_id=uuid.uuid4().hex,
        idempotency_key="key-1",
        request_fingerprint=CreateImageRequest.model_validate(FULL_CBR_BODY).fingerprint(),
        request=CreateImageRequest.model_validate(FULL_CBR_BODY),
        requested_by="alice",
        source_kind="cbr",
        source_id=FULL_CBR_BODY["backup_id"],
        status=JobStatus.RUNNING,
        ims_job_id="ff80808288d41e1b018a4c4f5a2f0e2a",
        image_id="d3a6d2a6-2f9c-4a57-8a8e-0f1a62f3c0b1",
        process_percent=42.5,
        error_code="IMG.0001",
        fail_reason="not really",
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1, microseconds=1),
        submitted_at=T0 + timedelta(seconds=2),
        ended_at=T0 + timedelta(hours=1, microseconds=999999),
        poll_attempts=3,
        next_poll_at=T0 + timedelta(seconds=10),
        deadline_at=T0 + timedelta(hours=6),
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )

    assert store.reserve(job).created is True
    read = store.get(job.request_id)

    assert read == job
    assert read is not None
    assert read.model_dump() == job.model_dump()
    assert read.request.ims_body() == FULL_CBR_BODY
    for name in (
        "created_at",
        "updated_at",
        "submitted_at",
        "ended_at",
        "next_poll_at",
        "deadline_at",
    ):
        moment = getattr(read, name)
        assert moment.tzinfo is not None
        assert moment.utcoffset() == timedelta(0)
    assert store.get_by_ims_job_id("ff80808288d41e1b018a4c4f5a2f0e2a") == job


def test_a_job_reserved_and_read_back_has_its_optional_fields_empty(store):
    job = new_job(ECS_BODY, key=None)

    assert store.reserve(job).created is True

    assert store.get(job.request_id) == job


def test_times_in_another_timezone_come_back_as_the_same_instant_in_utc(store):
    beijing = timezone(timedelta(hours=8))
    local = T0.astimezone(beijing)
    job = new_job(ECS_BODY, key=None).model_copy(update={"created_at": local, "updated_at": local})

    store.reserve(job)
    read = store.get(job.request_id)

    assert read is not None
    assert read.created_at == T0
    assert read.created_at.utcoffset() == timedelta(0)


def test_mark_submitted_moves_a_submitting_job_on(store):
    job = new_job(ECS_BODY, key="key-1")
    store.reserve(job)
    later = T0 + timedelta(seconds=3)

    moved = store.mark_submitted(
        job.request_id, ims_job_id="job-1", now=later, next_poll_at=later + timedelta(seconds=10)
    )

    assert moved.status is JobStatus.SUBMITTED
    assert moved.ims_job_id == "job-1"
    assert (moved.submitted_at, moved.updated_at) == (later, later)
    assert moved.next_poll_at == later + timedelta(seconds=10)
    assert store.get(job.request_id) == moved


def test_mark_uncertain_moves_a_submitting_job_on(store):
    job = new_job(ECS_BODY, key="key-1")
    store.reserve(job)

    moved = store.mark_uncertain(job.request_id, reason="timed out", now=T0 + timedelta(minutes=1))

    assert moved.status is JobStatus.SUBMIT_UNCERTAIN
    assert moved.fail_reason == "timed out"
    assert moved.updated_at == T0 + timedelta(minutes=1)
    assert store.get(job.request_id) == moved


NOT_SUBMITTING = [status for status in JobStatus if status is not JobStatus.SUBMITTING]


@pytest.mark.slow
@pytest.mark.parametrize("status", NOT_SUBMITTING, ids=str)
def test_mark_submitted_and_mark_uncertain_leave_a_job_that_is_not_submitting_alone(store, status):
    job = new_job(ECS_BODY, key="key-1", status=status)
    store.reserve(job)
    later = T0 + timedelta(hours=1)

    after_submitted = store.mark_submitted(
        job.request_id, ims_job_id="job-2", now=later, next_poll_at=later
    )
    after_uncertain = store.mark_uncertain(job.request_id, reason="too late", now=later)

    assert after_submitted == job
    assert after_uncertain == job
    assert store.get(job.request_id) == job


def test_a_job_marked_uncertain_can_no_longer_be_marked_submitted(store):
    job = new_job(ECS_BODY, key="key-1")
    store.reserve(job)
    uncertain = store.mark_uncertain(job.request_id, reason="interrupted", now=T0)

    after = store.mark_submitted(job.request_id, ims_job_id="job-1", now=T0, next_poll_at=T0)

    assert after == uncertain


def test_discard_deletes_a_submitting_job(store):
    job = new_job(CBR_BODY, key="key-1")
    store.reserve(job)

    store.discard(job.request_id)

    assert store.get(job.request_id) is None
    # The key and the backup are free again.
    assert store.reserve(new_job(CBR_BODY, key="key-1")).created is True


@pytest.mark.slow
@pytest.mark.parametrize(
    "status",
    [status for status in NOT_SUBMITTING if status is not JobStatus.SUBMIT_UNCERTAIN],
    ids=str,
)
def test_discard_leaves_a_submitted_or_ended_job_alone(store, status):
    job = new_job(CBR_BODY, key="key-1", status=status)
    store.reserve(job)

    store.discard(job.request_id)

    assert store.get(job.request_id) == job


def test_discarding_an_unknown_job_does_nothing(store, db_path):
    store.reserve(new_job(ECS_BODY, key="key-1"))

    store.discard("0123456789abcdef0123456789abcdef")

    assert len(statuses(db_path)) == 1


def test_reserve_with_a_known_key_returns_the_recorded_job_and_records_nothing(store, db_path):
    first = new_job(ECS_BODY, key="key-1")
    store.reserve(first)

    reservation = store.reserve(new_job({**ECS_BODY, "name": "other"}, key="key-1"))

    assert reservation.created is False
    assert reservation.job == first
    assert statuses(db_path) == [("key-1", "SUBMITTING")]


# --- concurrency: threads --------------------------------------------------------------------


def race_in_threads(attempt: Callable[[int], CreateOutcome]) -> list[CreateOutcome | BaseException]:
    """Run ``attempt(index)`` in THREADS threads released at once; return results or errors."""
    barrier = threading.Barrier(THREADS)

    def contender(index: int) -> CreateOutcome | BaseException:
        barrier.wait(timeout=WAIT_SECONDS)
        try:
            return attempt(index)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(contender, range(THREADS)))


def test_sixteen_threads_with_one_key_make_exactly_one_submission(store, db_path):
    ims = FakeImsClient(on_submit=lambda: time.sleep(IMS_CALL_SECONDS))
    request = CreateImageRequest.model_validate(ECS_BODY)

    results = race_in_threads(
        lambda _: submit_create(
            request,
            idempotency_key="key-1",
            requested_by=None,
            trace=None,
            ims=ims,
            store=store,
            first_poll_after=timedelta(seconds=15),
            now=fixed_now,
        )
    )

    assert len(ims.submitted) == 1
    outcomes = [result for result in results if isinstance(result, CreateOutcome)]
    others = [result for result in results if not isinstance(result, CreateOutcome)]
    assert all(isinstance(error, SubmissionInProgressError) for error in others), others
    assert [outcome.replayed for outcome in outcomes].count(False) == 1
    assert len({outcome.job.request_id for outcome in outcomes}) == 1
    assert statuses(db_path) == [("key-1", "SUBMITTED")]


def test_sixteen_threads_with_one_backup_make_exactly_one_submission(store, db_path):
    ims = FakeImsClient(on_submit=lambda: time.sleep(IMS_CALL_SECONDS))
    request = CreateImageRequest.model_validate(CBR_BODY)

    results = race_in_threads(
        lambda index: submit_create(
            request,
            idempotency_key=f"key-{index}",
            requested_by=None,
            trace=None,
            ims=ims,
            store=store,
            first_poll_after=timedelta(seconds=15),
            now=fixed_now,
        )
    )

    assert len(ims.submitted) == 1
    outcomes = [result for result in results if isinstance(result, CreateOutcome)]
    others = [result for result in results if not isinstance(result, CreateOutcome)]
    assert len(outcomes) == 1
    assert outcomes[0].replayed is False
    assert len(others) == THREADS - 1
    assert all(isinstance(error, BackupInUseError) for error in others), others
    assert [status for _, status in statuses(db_path)] == ["SUBMITTED"]


def test_sixteen_threads_each_with_its_own_store_on_one_file_make_exactly_one_submission(db_path):
    ims = FakeImsClient(on_submit=lambda: time.sleep(IMS_CALL_SECONDS))
    request = CreateImageRequest.model_validate(CBR_BODY)
    stores = [SqliteJobStore(str(db_path)) for _ in range(THREADS)]
    try:
        results = race_in_threads(
            lambda index: submit_create(
                request,
                idempotency_key="key-1" if index % 2 else f"key-{index}",
                requested_by=None,
                trace=None,
                ims=ims,
                store=stores[index],
                first_poll_after=timedelta(seconds=15),
                now=fixed_now,
            )
        )
    finally:
        for job_store in stores:
            job_store.close()

    assert len(ims.submitted) == 1
    errors = [result for result in results if not isinstance(result, CreateOutcome)]
    assert all(isinstance(error, ConflictError) for error in errors), errors
    assert [status for _, status in statuses(db_path)] == ["SUBMITTED"]


# --- concurrency: processes ------------------------------------------------------------------


def record_submission(submissions: str, pause: float) -> None:
    """A fake IMS call in a child: one line per submission in a file shared by all processes."""
    with open(submissions, "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(pause)


def signal_then_hang(submissions: str, inside: Event) -> None:
    """A fake IMS call that never returns: the parent kills the process while it hangs."""
    record_submission(submissions, 0)
    inside.set()
    time.sleep(WAIT_SECONDS)


def child_submit(
    db: str,
    submissions: str,
    body: dict[str, Any],
    key: str,
    *,
    barrier: Barrier,
    results: Queue[tuple[str, str]],
) -> None:
    """One contender in a race between processes; reports what it got on ``results``."""
    store = SqliteJobStore(db)
    ims = FakeImsClient(
        script=[f"ims-job-{os.getpid()}"],
        on_submit=functools.partial(record_submission, submissions, IMS_CALL_SECONDS),
    )
    try:
        barrier.wait(timeout=WAIT_SECONDS)
        outcome = submit_create(
            CreateImageRequest.model_validate(body),
            idempotency_key=key,
            requested_by=None,
            trace=None,
            ims=ims,
            store=store,
            first_poll_after=timedelta(seconds=15),
            now=fixed_now,
        )
        results.put(("replayed" if outcome.replayed else "created", outcome.job.request_id))
    except ConflictError as exc:
        results.put((exc.code, ""))
    except BaseException as exc:
        results.put(("crashed", repr(exc)))
    finally:
        store.close()


def child_submit_and_get_killed(
    db: str, submissions: str, body: dict[str, Any], key: str, inside: Event
) -> None:
    """Reserve, then hang inside the IMS call until killed."""
    store = SqliteJobStore(db)
    ims = FakeImsClient(on_submit=functools.partial(signal_then_hang, submissions, inside))
    submit_create(
        CreateImageRequest.model_validate(body),
        idempotency_key=key,
        requested_by=None,
        trace=None,
        ims=ims,
        store=store,
        first_poll_after=timedelta(seconds=15),
        now=fixed_now,
    )


def child_hang_before_commit(db: str, body: dict[str, Any], key: str, inside: Event) -> None:
    """Reserve, but hang at the COMMIT of the reservation (write lock held) until killed."""
    store = SqliteJobStore(db)
    store.get("warm-up")  # the connection and the schema exist

    def hang_at_commit(statement: str) -> None:
        if statement == "COMMIT":
            inside.set()
            time.sleep(WAIT_SECONDS)

    store._connection().set_trace_callback(hang_at_commit)
    store.reserve(new_job(body, key=key))


def child_submit_many(db: str, tag: str, count: int, barrier: Barrier) -> None:
    """``count`` sequential submissions, racing another process doing the same."""
    store = SqliteJobStore(db)
    ims = FakeImsClient(script=[f"{tag}-{index:04d}" for index in range(count)])
    try:
        barrier.wait(timeout=WAIT_SECONDS)
        for index in range(count):
            submit_create(
                CreateImageRequest.model_validate(ECS_BODY),
                idempotency_key=f"{tag}-{index:04d}",
                requested_by=tag,
                trace=None,
                ims=ims,
                store=store,
                first_poll_after=timedelta(seconds=15),
            )
    finally:
        store.close()


def race_in_processes(
    spawn: Callable[..., SpawnProcess],
    db_path: Path,
    submissions: Path,
    body: dict[str, Any],
    key_of: Callable[[int], str],
) -> list[tuple[str, str]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results: Queue[tuple[str, str]] = context.Queue()
    processes = [
        spawn(
            child_submit,
            str(db_path),
            str(submissions),
            body,
            key_of(index),
            barrier=barrier,
            results=results,
        )
        for index in range(PROCESSES)
    ]
    answers = [results.get(timeout=WAIT_SECONDS) for _ in processes]
    for process in processes:
        process.join(timeout=WAIT_SECONDS)
        assert process.exitcode == 0
    results.close()
    results.join_thread()
    return answers


@pytest.mark.slow
def test_four_processes_with_one_key_make_exactly_one_submission(spawn, db_path, tmp_path):
    submissions = tmp_path / "submissions.log"

    answers = race_in_processes(spawn, db_path, submissions, ECS_BODY, lambda _: "key-1")

    assert len(lines(submissions)) == 1
    kinds = Counter(kind for kind, _ in answers)
    assert kinds["created"] == 1
    assert kinds["created"] + kinds["replayed"] + kinds["submission_in_progress"] == PROCESSES, (
        answers
    )
    assert len({request_id for kind, request_id in answers if kind in ("created", "replayed")}) == 1
    assert statuses(db_path) == [("key-1", "SUBMITTED")]


@pytest.mark.slow
def test_four_processes_with_one_backup_make_exactly_one_submission(spawn, db_path, tmp_path):
    submissions = tmp_path / "submissions.log"

    answers = race_in_processes(spawn, db_path, submissions, CBR_BODY, lambda index: f"key-{index}")

    assert len(lines(submissions)) == 1
    kinds = Counter(kind for kind, _ in answers)
    assert kinds == Counter({"created": 1, "backup_in_use": PROCESSES - 1}), answers
    assert [status for _, status in statuses(db_path)] == ["SUBMITTED"]


@pytest.mark.slow
def test_a_process_killed_inside_the_ims_call_loses_nothing_and_nothing_is_resubmitted(
    spawn, db_path, tmp_path
):
    submissions = tmp_path / "submissions.log"
    inside = multiprocessing.get_context("spawn").Event()
    child = spawn(
        child_submit_and_get_killed, str(db_path), str(submissions), CBR_BODY, "key-1", inside
    )
    assert inside.wait(timeout=WAIT_SECONDS)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=WAIT_SECONDS)
    assert child.exitcode == -signal.SIGKILL

    store = SqliteJobStore(str(db_path))
    ims = FakeImsClient()
    request = CreateImageRequest.model_validate(CBR_BODY)

    def repeat(at: datetime, key: str = "key-1") -> CreateOutcome:
        return submit_create(
            request,
            idempotency_key=key,
            requested_by=None,
            trace=None,
            ims=ims,
            store=store,
            first_poll_after=timedelta(seconds=15),
            now=lambda: at,
        )

    try:
        # Nothing lost: the job is on record, still SUBMITTING.
        assert statuses(db_path) == [("key-1", "SUBMITTING")]
        with pytest.raises(SubmissionInProgressError):
            repeat(T0 + STALE_SUBMISSION - timedelta(seconds=1))
        with pytest.raises(BackupInUseError):
            repeat(T0 + timedelta(minutes=1), key="key-2")

        outcome = repeat(T0 + STALE_SUBMISSION)

        assert outcome.replayed is True
        assert outcome.job.status is JobStatus.SUBMIT_UNCERTAIN
        assert store.get(outcome.job.request_id) == outcome.job
        with pytest.raises(BackupInUseError):
            repeat(T0 + STALE_SUBMISSION, key="key-2")
    finally:
        store.close()

    # Nothing twice: the dead child's call is the only one IMS ever saw.
    assert ims.submitted == []
    assert len(lines(submissions)) == 1
    assert statuses(db_path) == [("key-1", "SUBMIT_UNCERTAIN")]


@pytest.mark.slow
def test_a_process_killed_inside_the_reserve_transaction_leaves_neither_a_row_nor_a_lock(
    spawn, db_path
):
    inside = multiprocessing.get_context("spawn").Event()
    child = spawn(child_hang_before_commit, str(db_path), CBR_BODY, "key-1", inside)
    assert inside.wait(timeout=WAIT_SECONDS)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=WAIT_SECONDS)

    store = SqliteJobStore(str(db_path))
    try:
        started = time.monotonic()
        reservation = store.reserve(new_job(CBR_BODY, key="key-1"))
        assert time.monotonic() - started < 5
    finally:
        store.close()

    assert reservation.created is True
    assert statuses(db_path) == [("key-1", "SUBMITTING")]


@pytest.mark.slow
def test_two_hundred_submissions_from_two_processes_on_one_file_lose_no_row(spawn, db_path):
    per_process = 100
    barrier = multiprocessing.get_context("spawn").Barrier(2)
    children = [
        spawn(child_submit_many, str(db_path), tag, per_process, barrier) for tag in ("a", "b")
    ]
    for child in children:
        child.join(timeout=WAIT_SECONDS)
        assert child.exitcode == 0

    recorded = statuses(db_path)
    assert len(recorded) == 2 * per_process
    assert {key for key, _ in recorded} == {
        f"{tag}-{index:04d}" for tag in ("a", "b") for index in range(per_process)
    }
    assert {status for _, status in recorded} == {"SUBMITTED"}
    ims_job_ids = query(db_path, "SELECT ims_job_id, idempotency_key FROM jobs")
    assert all(ims_job_id == key for ims_job_id, key in ims_job_ids)
