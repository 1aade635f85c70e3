"""The ``JobStore`` port contract (``wholeimage.store.records``), run against both adapters.

Every test here takes the ``store`` / ``store_kind`` / ``state_url`` fixtures of conftest, so it
runs twice: ``[sqlite]`` and ``[postgres]``. Setup goes through the port itself (``reserve``
records a job in any status with any ``next_poll_at``; ``claim_due`` sets leases); what the port
does not show (leases, row counts) is read behind the store's back with ``backend_rows``.

Child processes are started with the "spawn" context; their entry point is the top-level
``child_claim_until_empty`` (spawn imports this module in the child and finds it by name).
The last tests are PostgreSQL's own (concurrent migrations, the plan of the claim query); their
``[sqlite]`` variants skip.
"""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from wholeimage.bootstrap import open_store
from wholeimage.errors import BackupInUseError
from wholeimage.models import (
    BACKUP_BLOCKING,
    ENDED,
    OUTSTANDING,
    CreateImageRequest,
    Job,
    JobStatus,
)
from wholeimage.statuses import UNRESOLVED
from wholeimage.store.postgres import _CLAIM, MIGRATIONS, migrate
from wholeimage.store.records import JobStore, PollUpdate, to_epoch

T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
NOW = T0 + timedelta(minutes=10)  # when claims happen: jobs due at T0 + a few seconds are due
LEASE = timedelta(minutes=5)
LATER = NOW + timedelta(hours=1)  # where a progress update pushes the next poll

ECS_BODY: dict[str, Any] = {
    "name": "web01-full",
    "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
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
BACKUP_KINDS = pytest.mark.parametrize("kind", ["csbs", "cbr"])
NOT_SUBMITTING = [status for status in JobStatus if status is not JobStatus.SUBMITTING]
NOT_UNRESOLVED = [status for status in JobStatus if status not in UNRESOLVED]
NEVER_CLAIMED = [status for status in JobStatus if status not in OUTSTANDING]

POOL_SIZE = 500
THREADS = 8
PROCESSES = 4
RACERS = 16
CLAIM_LIMIT = 7  # odd and small, so claimers interleave many times over the pool
WAIT_SECONDS = 30.0

Result = TypeVar("Result")

# conftest's ``state_url`` asks for ``store_kind`` dynamically; naming it here parametrizes
# every test of the module: [sqlite] and [postgres].
pytestmark = pytest.mark.usefixtures("store_kind")


# --- builders and helpers --------------------------------------------------------------------


def backup_body(kind: str, backup_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"from-{kind}", "backup_id": backup_id or str(uuid.uuid4())}
    if kind == "cbr":
        body["whole_image_type"] = "CBR"
    return body


def new_job(
    body: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    status: JobStatus = JobStatus.SUBMITTING,
    next_poll_at: datetime | None = None,
) -> Job:
    request = CreateImageRequest.model_validate(body or ECS_BODY)
    request_id = uuid.uuid4().hex
    return Job(
        request_id=request_id,
        idempotency_key=key,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="alice",
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=status,
        ims_job_id=None if status is JobStatus.SUBMITTING else f"ims-{request_id}",
        created_at=T0,
        updated_at=T0,
        next_poll_at=next_poll_at,
    )


def due_job(next_poll_at: datetime = T0, *, status: JobStatus = JobStatus.SUBMITTED) -> Job:
    return new_job(status=status, next_poll_at=next_poll_at)


def reserve_all(store: JobStore, jobs: list[Job]) -> list[Job]:
    for job in jobs:
        assert store.reserve(job).created is True
    return jobs


def claim(store: JobStore, owner: str, *, now: datetime = NOW, limit: int = 100) -> list[Job]:
    return store.claim_due(now=now, owner=owner, lease_until=now + LEASE, limit=limit)


def ids(jobs: list[Job]) -> list[str]:
    return [job.request_id for job in jobs]


def backend_rows(state_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement behind the store's back (``?`` placeholders, either backend), committed."""
    if state_url.startswith("sqlite:///"):
        path = state_url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(path)) as connection, connection:
            cursor = connection.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
    with psycopg.connect(state_url) as postgres:
        result = postgres.execute(sql.replace("?", "%s"), params)
        return result.fetchall() if result.description else []


def lease_of(state_url: str, request_id: str) -> tuple[str | None, float | None]:
    [(owner, expires)] = backend_rows(
        state_url, "SELECT lease_owner, lease_expires_at FROM jobs WHERE request_id = ?", request_id
    )
    return owner, expires


def job_count(state_url: str) -> int:
    return int(backend_rows(state_url, "SELECT COUNT(*) FROM jobs")[0][0])


def run_at_once(count: int, work: Callable[[int], Result]) -> list[Result | Exception]:
    """Run ``work(index)`` in ``count`` threads released together; results or errors, in order."""
    barrier = threading.Barrier(count)

    def contender(index: int) -> Result | Exception:
        barrier.wait(timeout=WAIT_SECONDS)
        try:
            return work(index)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(contender, range(count)))


@pytest.fixture
def opened_stores(state_url: str) -> Iterator[Callable[[int], list[JobStore]]]:
    """Separate store objects on the test's state, like separate instances; closed after."""
    opened: list[JobStore] = []

    def open_many(count: int) -> list[JobStore]:
        stores = [open_store(state_url) for _ in range(count)]
        opened.extend(stores)
        for each in stores:
            each.count_outstanding()  # connected and migrated before any race starts
        return stores

    yield open_many
    for each in opened:
        each.close()


# --- reserve ---------------------------------------------------------------------------------


def test_reserve_records_a_new_job_and_says_it_created_it(store, state_url):
    job = new_job(key="key-1")

    reservation = store.reserve(job)

    assert reservation.created is True
    assert reservation.job == job
    assert store.get(job.request_id) == job
    assert job_count(state_url) == 1


def test_reserve_with_a_known_key_returns_the_recorded_job_whatever_its_status(store, state_url):
    for status in JobStatus:
        first = new_job(key=f"key-{status}", status=status, next_poll_at=T0)
        store.reserve(first)

        again = store.reserve(new_job({**ECS_BODY, "name": "another"}, key=f"key-{status}"))

        assert again.created is False, status
        assert again.job == first, status
    assert job_count(state_url) == len(JobStatus)


def test_jobs_without_an_idempotency_key_are_never_taken_for_each_other(store, state_url):
    reserve_all(store, [new_job(key=None), new_job(key=None)])

    assert job_count(state_url) == 2


@BACKUP_KINDS
def test_a_backup_with_a_job_in_a_blocking_status_refuses_another_job(store, state_url, kind):
    for status in BACKUP_BLOCKING:
        body = backup_body(kind)
        holder = new_job(body, key=f"holder-{status}", status=status)
        store.reserve(holder)

        with pytest.raises(BackupInUseError) as refused:
            store.reserve(new_job(body, key=f"second-{status}"))

        assert refused.value.http_status == 409
        [detail] = refused.value.details
        assert detail["path"] == "$.backup_id", status
        assert holder.request_id in detail["message"]
        assert body["backup_id"] in refused.value.message
    assert job_count(state_url) == len(BACKUP_BLOCKING)


@BACKUP_KINDS
def test_a_known_key_is_answered_before_its_backup_is_checked(store, kind):
    body = backup_body(kind)
    first = new_job(body, key="key-1", status=JobStatus.RUNNING)
    store.reserve(first)

    reservation = store.reserve(new_job(body, key="key-1"))

    assert reservation.created is False
    assert reservation.job == first


def test_an_ecs_is_never_blocked_whatever_its_jobs_statuses(store, state_url):
    jobs = [new_job(key=f"key-{status}", status=status) for status in JobStatus]

    reserve_all(store, [*jobs, new_job(key="one-more")])

    assert job_count(state_url) == len(JobStatus) + 1


@pytest.mark.slow
@BACKUP_KINDS
@pytest.mark.parametrize("ended", [JobStatus.FAIL, JobStatus.TIMED_OUT], ids=str)
def test_a_backup_whose_job_failed_or_timed_out_can_be_used_again(store, kind, ended):
    body = backup_body(kind)
    store.reserve(new_job(body, key="key-1", status=ended))

    assert store.reserve(new_job(body, key="key-2")).created is True
    with pytest.raises(BackupInUseError):
        store.reserve(new_job(body, key="key-3"))


def test_a_job_round_trips_with_every_field_in_utc_to_the_microsecond(store):
    request = CreateImageRequest.model_validate(FULL_CBR_BODY)
    job = Job(
        request_id=uuid.uuid4().hex,
        idempotency_key="key-1",
        request_fingerprint=request.fingerprint(),
        request=request,
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
        submitted_at=T0 + timedelta(seconds=2, microseconds=999999),
        ended_at=T0 + timedelta(hours=1, microseconds=7),
        poll_attempts=3,
        next_poll_at=T0 + timedelta(seconds=10, microseconds=123456),
        deadline_at=T0 + timedelta(hours=6),
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )

    assert store.reserve(job).created is True
    read = store.get(job.request_id)

    assert read == job
    assert read is not None
    assert read.model_dump() == job.model_dump()
    assert read.request.ims_body() == FULL_CBR_BODY
    for name in ("created_at", "updated_at", "submitted_at", "ended_at", "next_poll_at"):
        moment = getattr(read, name)
        assert moment.utcoffset() == timedelta(0), name
        assert moment.microsecond == getattr(job, name).microsecond, name
    assert store.get_by_ims_job_id("ff80808288d41e1b018a4c4f5a2f0e2a") == job


def test_a_job_with_its_optional_fields_empty_round_trips(store):
    job = new_job(key=None)

    store.reserve(job)

    assert store.get(job.request_id) == job


def test_times_in_another_timezone_come_back_as_the_same_instant_in_utc(store):
    local = T0.astimezone(timezone(timedelta(hours=8)))
    job = new_job().model_copy(update={"created_at": local, "updated_at": local})

    store.reserve(job)
    read = store.get(job.request_id)

    assert read is not None
    assert read.created_at == T0
    assert read.created_at.utcoffset() == timedelta(0)


# --- mark_submitted, mark_uncertain, discard, get --------------------------------------------


def test_mark_submitted_moves_a_submitting_job_to_submitted(store):
    job = new_job(key="key-1")
    store.reserve(job)
    at = T0 + timedelta(seconds=3, microseconds=5)

    moved = store.mark_submitted(
        job.request_id, ims_job_id="ims-1", now=at, next_poll_at=at + timedelta(seconds=10)
    )

    assert moved == job.model_copy(
        update={
            "status": JobStatus.SUBMITTED,
            "ims_job_id": "ims-1",
            "submitted_at": at,
            "updated_at": at,
            "next_poll_at": at + timedelta(seconds=10),
        }
    )
    assert store.get(job.request_id) == moved
    assert store.get_by_ims_job_id("ims-1") == moved


def test_mark_uncertain_moves_a_submitting_job_to_submit_uncertain(store):
    job = new_job(key="key-1")
    store.reserve(job)

    moved = store.mark_uncertain(job.request_id, reason="timed out", now=T0 + timedelta(minutes=1))

    assert moved == job.model_copy(
        update={
            "status": JobStatus.SUBMIT_UNCERTAIN,
            "fail_reason": "timed out",
            "updated_at": T0 + timedelta(minutes=1),
        }
    )
    assert store.get(job.request_id) == moved


def test_mark_submitted_and_mark_uncertain_leave_a_job_that_is_not_submitting_alone(store):
    for status in NOT_SUBMITTING:
        job = new_job(status=status, next_poll_at=T0)
        store.reserve(job)

        after_submitted = store.mark_submitted(
            job.request_id, ims_job_id=f"late-{status}", now=LATER, next_poll_at=LATER
        )
        after_uncertain = store.mark_uncertain(job.request_id, reason="too late", now=LATER)

        assert after_submitted == job, status
        assert after_uncertain == job, status
        assert store.get(job.request_id) == job, status
        assert store.get_by_ims_job_id(f"late-{status}") is None


def test_marking_an_unknown_job_raises_lookup_error(store):
    with pytest.raises(LookupError):
        store.mark_submitted("unknown", ims_job_id="ims-1", now=T0, next_poll_at=T0)
    with pytest.raises(LookupError):
        store.mark_uncertain("unknown", reason="whatever", now=T0)


@BACKUP_KINDS
def test_discard_deletes_a_submitting_job_and_frees_its_key_and_backup(store, kind):
    body = backup_body(kind)
    job = new_job(body, key="key-1")
    store.reserve(job)

    store.discard(job.request_id)

    assert store.get(job.request_id) is None
    assert store.reserve(new_job(body, key="key-1")).created is True


@BACKUP_KINDS
def test_discard_deletes_a_job_check_made_uncertain_meanwhile_and_frees_its_key_and_backup(
    store, kind
):
    # check took the live call over (SUBMIT_UNCERTAIN); then IMS refused it for certain.
    body = backup_body(kind)
    job = new_job(body, key="key-1")
    store.reserve(job)
    store.mark_uncertain(job.request_id, reason="interrupted", now=T0)

    store.discard(job.request_id)

    assert store.get(job.request_id) is None
    assert store.reserve(new_job(body, key="key-1")).created is True


def test_discard_leaves_a_submitted_or_ended_job_alone(store, state_url):
    jobs = reserve_all(store, [new_job(status=status) for status in NOT_UNRESOLVED])

    for job in jobs:
        store.discard(job.request_id)
    store.discard("0123456789abcdef0123456789abcdef")

    assert [store.get(job.request_id) for job in jobs] == jobs
    assert job_count(state_url) == len(NOT_UNRESOLVED)


def test_get_and_get_by_ims_job_id_answer_none_for_unknown_ids(store):
    store.reserve(new_job(status=JobStatus.SUBMITTED))

    assert store.get("0123456789abcdef0123456789abcdef") is None
    assert store.get_by_ims_job_id("ims-unknown") is None


# --- claim_due -------------------------------------------------------------------------------


def test_claim_due_returns_only_due_outstanding_jobs_earliest_first(store):
    due = [
        due_job(T0 + timedelta(seconds=3), status=JobStatus.RUNNING),
        due_job(T0 + timedelta(seconds=1), status=JobStatus.SUBMITTED),
        due_job(NOW, status=JobStatus.INIT),  # due exactly now counts
        due_job(T0 + timedelta(seconds=2, microseconds=1), status=JobStatus.RUNNING),
    ]
    not_yet = due_job(NOW + timedelta(microseconds=1), status=JobStatus.RUNNING)
    never = [due_job(T0, status=status) for status in NEVER_CLAIMED]
    reserve_all(store, [*due, not_yet, *never])

    claimed = claim(store, "tick-1")

    assert ids(claimed) == ids(sorted(due, key=lambda job: job.next_poll_at or T0))
    assert claimed == [store.get(job.request_id) for job in claimed]
    # A minute on, the job that was not yet due is; the others are still leased to tick-1.
    later = NOW + timedelta(minutes=1)
    assert claim(store, "tick-2", now=later) == [store.get(not_yet.request_id)]


@pytest.mark.slow
@pytest.mark.parametrize("status", NEVER_CLAIMED, ids=str)
def test_claim_due_never_returns_a_job_that_is_not_outstanding(store, status):
    reserve_all(store, [due_job(T0 - timedelta(days=1), status=status)])

    assert claim(store, "tick-1", now=LATER) == []


def test_claim_due_returns_at_most_limit_jobs_earliest_first(store):
    jobs = reserve_all(store, [due_job(T0 + timedelta(seconds=index)) for index in range(5)])

    first = claim(store, "tick-1", limit=2)
    second = claim(store, "tick-2", limit=2)
    third = claim(store, "tick-3", limit=2)

    assert ids(first) == ids(jobs[:2])
    assert ids(second) == ids(jobs[2:4])
    assert ids(third) == ids(jobs[4:])
    assert claim(store, "tick-4", limit=2) == []


def test_claim_due_leases_the_jobs_to_the_owner(store, state_url):
    [job] = reserve_all(store, [due_job()])

    claim(store, "tick-1")

    assert lease_of(state_url, job.request_id) == ("tick-1", to_epoch(NOW + LEASE))


def test_claim_due_skips_jobs_whose_lease_has_not_expired(store):
    reserve_all(store, [due_job(), due_job()])
    assert len(claim(store, "tick-1")) == 2

    assert claim(store, "tick-2") == []
    assert claim(store, "tick-1") == []  # the owner itself does not take them twice
    assert claim(store, "tick-3", now=NOW + LEASE - timedelta(microseconds=1)) == []


def test_claim_due_takes_up_jobs_whose_lease_expired_after_a_crashed_tick(store, state_url):
    jobs = reserve_all(store, [due_job(), due_job(T0 + timedelta(seconds=1))])
    assert ids(claim(store, "crashed-tick")) == ids(jobs)
    after_expiry = NOW + LEASE + timedelta(seconds=1)

    taken_up = claim(store, "next-tick", now=after_expiry)

    assert ids(taken_up) == ids(jobs)
    for job in jobs:
        assert lease_of(state_url, job.request_id) == ("next-tick", to_epoch(after_expiry + LEASE))
    assert claim(store, "third-tick", now=after_expiry) == []


# --- record_polls ----------------------------------------------------------------------------


def test_record_polls_applies_progress_while_the_owner_holds_the_lease(store, state_url):
    [job] = reserve_all(store, [due_job(status=JobStatus.SUBMITTED)])
    [leased] = claim(store, "tick-1")
    update = PollUpdate.progress(
        leased, status=JobStatus.RUNNING, at=NOW, process_percent=40.0, next_poll_at=LATER
    )

    assert store.record_polls([update], owner="tick-1") == [update]

    assert store.get(job.request_id) == job.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "process_percent": 40.0,
            "updated_at": NOW,
            "poll_attempts": 1,
            "next_poll_at": LATER,
        }
    )
    assert lease_of(state_url, job.request_id) == (None, None)
    assert claim(store, "tick-2", now=LATER - timedelta(microseconds=1)) == []
    assert ids(claim(store, "tick-2", now=LATER)) == [job.request_id]


def test_record_polls_returns_only_the_updates_it_applied(store):
    jobs = reserve_all(store, [due_job(T0 + timedelta(seconds=index)) for index in range(3)])
    mine, theirs = claim(store, "tick-1", limit=1), claim(store, "tick-2", limit=1)
    never_claimed = jobs[2]
    updates = [
        PollUpdate.progress(
            job, status=JobStatus.RUNNING, at=NOW, process_percent=10.0, next_poll_at=LATER
        )
        for job in [*mine, *theirs, never_claimed]
    ]
    unknown = PollUpdate(uuid.uuid4().hex, JobStatus.RUNNING, NOW, LATER)

    applied = store.record_polls([*updates, unknown], owner="tick-1")

    assert applied == updates[:1]
    assert store.get(theirs[0].request_id) == theirs[0]
    assert store.get(never_claimed.request_id) == never_claimed
    assert store.get(unknown.request_id) is None


def test_record_polls_of_nothing_applies_nothing(store):
    assert store.record_polls([], owner="tick-1") == []


def test_an_update_from_another_owner_is_not_applied(store):
    [job] = reserve_all(store, [due_job()])
    [leased] = claim(store, "tick-1")
    update = PollUpdate.end(leased, status=JobStatus.SUCCESS, at=NOW, image_id="img-1")

    assert store.record_polls([update], owner="tick-2") == []

    assert store.get(job.request_id) == job
    assert store.record_polls([update], owner="tick-1") == [update]


def test_an_update_after_the_lease_was_taken_over_is_not_applied(store, state_url):
    [job] = reserve_all(store, [due_job()])
    [leased] = claim(store, "crashed-tick")
    after_expiry = NOW + LEASE + timedelta(seconds=1)
    [taken] = claim(store, "next-tick", now=after_expiry)
    late = PollUpdate.end(leased, status=JobStatus.FAIL, at=after_expiry, error_code="IMG.0001")
    current = PollUpdate.progress(
        taken, status=JobStatus.RUNNING, at=after_expiry, process_percent=5.0, next_poll_at=LATER
    )

    assert store.record_polls([late], owner="crashed-tick") == []
    assert store.get(job.request_id) == job
    assert lease_of(state_url, job.request_id)[0] == "next-tick"

    assert store.record_polls([current], owner="next-tick") == [current]
    read = store.get(job.request_id)
    assert read is not None
    assert (read.status, read.process_percent, read.poll_attempts) == (JobStatus.RUNNING, 5.0, 1)


@pytest.mark.slow
@pytest.mark.parametrize("end_status", sorted(ENDED), ids=str)
def test_an_end_is_applied_exactly_once(store, state_url, end_status):
    [job] = reserve_all(store, [due_job(status=JobStatus.RUNNING)])
    [leased] = claim(store, "tick-1")
    at = NOW + timedelta(seconds=1, microseconds=3)
    succeeded = end_status is JobStatus.SUCCESS
    end = PollUpdate.end(
        leased,
        status=end_status,
        at=at,
        image_id="img-1" if succeeded else None,
        process_percent=100.0 if succeeded else 60.0,
        error_code=None if succeeded else "IMG.0002",
        fail_reason=None if succeeded else "it broke",
    )
    second = PollUpdate.end(
        leased, status=JobStatus.FAIL, at=at + timedelta(seconds=1), error_code="IMG.9999"
    )

    assert store.record_polls([end], owner="tick-1") == [end]
    assert store.record_polls([second], owner="tick-1") == []
    assert store.record_polls([second], owner="tick-2") == []

    assert store.get(job.request_id) == job.model_copy(
        update={
            "status": end_status,
            "image_id": end.image_id,
            "process_percent": end.process_percent,
            "error_code": end.error_code,
            "fail_reason": end.fail_reason,
            "ended_at": at,
            "updated_at": at,
            "next_poll_at": None,
            "poll_attempts": 1,
        }
    )
    assert lease_of(state_url, job.request_id) == (None, None)
    assert claim(store, "tick-3", now=LATER + LEASE) == []
    assert store.count_outstanding() == 0


def test_an_ended_job_is_never_updated_even_with_a_lease_left_on_it(store, state_url):
    [job] = reserve_all(store, [due_job(status=JobStatus.RUNNING)])
    [leased] = claim(store, "tick-1")
    store.record_polls([PollUpdate.end(leased, status=JobStatus.SUCCESS, at=NOW)], owner="tick-1")
    ended = store.get(job.request_id)
    # The port cannot leave a lease on an ended job; put one there behind its back.
    backend_rows(
        state_url,
        "UPDATE jobs SET lease_owner = ?, lease_expires_at = ? WHERE request_id = ?",
        "tick-1",
        to_epoch(NOW + LEASE),
        job.request_id,
    )
    late = PollUpdate.progress(
        leased, status=JobStatus.RUNNING, at=NOW, process_percent=10.0, next_poll_at=LATER
    )

    assert store.record_polls([late], owner="tick-1") == []

    assert store.get(job.request_id) == ended


def test_poll_attempts_count_queries_and_a_release_does_not(store, state_url):
    [job] = reserve_all(store, [due_job(status=JobStatus.INIT)])

    [leased] = claim(store, "tick-1")
    release = PollUpdate.release(leased, at=NOW)
    assert store.record_polls([release], owner="tick-1") == [release]
    released = store.get(job.request_id)
    assert released == job.model_copy(update={"updated_at": NOW})
    assert lease_of(state_url, job.request_id) == (None, None)

    # Released means due as before and unleased: another tick takes it at once.
    [again] = claim(store, "tick-2")
    queried = PollUpdate.progress(
        again, status=JobStatus.RUNNING, at=NOW, process_percent=1.0, next_poll_at=NOW
    )
    assert store.record_polls([queried], owner="tick-2") == [queried]
    [third] = claim(store, "tick-3")
    assert store.record_polls([queried], owner="tick-3") == [queried]

    read = store.get(job.request_id)
    assert read is not None
    assert (read.poll_attempts, third.poll_attempts) == (2, 1)


def test_an_image_id_once_recorded_is_kept_by_updates_without_one(store):
    [job] = reserve_all(store, [due_job(status=JobStatus.RUNNING)])

    def poll(update_of: Callable[[Job], PollUpdate]) -> Job:
        [leased] = claim(store, "tick")
        update = update_of(leased)
        assert store.record_polls([update], owner="tick") == [update]
        read: Job | None = store.get(job.request_id)
        assert read is not None
        return read

    with_image = poll(
        lambda leased: PollUpdate(leased.request_id, JobStatus.RUNNING, NOW, NOW, image_id="img-1")
    )
    progressed = poll(
        lambda leased: PollUpdate.progress(
            leased, status=JobStatus.RUNNING, at=NOW, process_percent=90.0, next_poll_at=NOW
        )
    )
    ended = poll(lambda leased: PollUpdate.end(leased, status=JobStatus.SUCCESS, at=NOW))

    assert (with_image.image_id, progressed.image_id, ended.image_id) == ("img-1",) * 3
    assert ended.status is JobStatus.SUCCESS


def test_a_new_image_id_replaces_the_recorded_one(store):
    reserve_all(store, [due_job(status=JobStatus.RUNNING)])
    [leased] = claim(store, "tick")
    store.record_polls(
        [PollUpdate(leased.request_id, JobStatus.RUNNING, NOW, NOW, image_id="img-1")], owner="tick"
    )
    [leased] = claim(store, "tick")

    store.record_polls(
        [PollUpdate.end(leased, status=JobStatus.SUCCESS, at=NOW, image_id="img-2")], owner="tick"
    )

    read = store.get(leased.request_id)
    assert read is not None
    assert read.image_id == "img-2"


# --- count_outstanding, next_due_at ----------------------------------------------------------


def test_an_empty_store_has_nothing_outstanding_and_nothing_due(store):
    assert store.count_outstanding() == 0
    assert store.next_due_at() is None


def test_count_outstanding_and_next_due_at_consider_outstanding_jobs_only(store):
    earliest = T0 + timedelta(seconds=5, microseconds=42)
    reserve_all(
        store,
        [
            *(due_job(T0 - timedelta(days=1), status=status) for status in NEVER_CLAIMED),
            due_job(earliest + timedelta(seconds=1), status=JobStatus.SUBMITTED),
            due_job(earliest, status=JobStatus.INIT),
            due_job(LATER, status=JobStatus.RUNNING),
        ],
    )

    assert store.count_outstanding() == 3
    assert store.next_due_at() == earliest

    claim(store, "tick-1")  # leased jobs are still outstanding
    assert store.count_outstanding() == 3


def test_count_outstanding_drops_as_jobs_end(store):
    reserve_all(store, [due_job(), due_job()])
    first, second = claim(store, "tick-1")

    store.record_polls([PollUpdate.end(first, status=JobStatus.SUCCESS, at=NOW)], owner="tick-1")

    assert store.count_outstanding() == 1
    assert store.next_due_at() == second.next_poll_at


# --- concurrency -----------------------------------------------------------------------------


def reserve_pool(store: JobStore) -> set[str]:
    """POOL_SIZE due jobs, each due a microsecond after the previous one."""
    jobs = [due_job(T0 + timedelta(microseconds=index)) for index in range(POOL_SIZE)]
    return set(ids(reserve_all(store, jobs)))


def claim_until_empty(store: JobStore, owner: str, claimed: list[str]) -> list[str]:
    """What a tick does, minus IMS: claim, record progress (next poll later), until none is due.

    Every claimed id goes into ``claimed`` at once, so a failing claimer still tells what it took.
    """
    while batch := claim(store, owner, limit=CLAIM_LIMIT):
        claimed.extend(ids(batch))
        updates = [
            PollUpdate.progress(
                job, status=JobStatus.RUNNING, at=NOW, process_percent=50.0, next_poll_at=LATER
            )
            for job in batch
        ]
        applied = store.record_polls(updates, owner=owner)
        if applied != updates:
            raise AssertionError(f"{owner} held {ids(batch)} but only {len(applied)} applied")
    return claimed


def assert_claimed_exactly_once(
    store: JobStore, state_url: str, pool: set[str], claimed: list[str]
) -> None:
    counts = Counter(claimed)
    assert [request_id for request_id, count in counts.items() if count > 1] == []
    assert set(counts) == pool
    assert store.count_outstanding() == POOL_SIZE
    assert claim(store, "after", now=LATER - timedelta(microseconds=1)) == []
    assert backend_rows(state_url, "SELECT DISTINCT poll_attempts FROM jobs") == [(1,)]


@pytest.mark.slow
def test_threads_each_with_its_own_store_claim_every_job_exactly_once(
    store, state_url, opened_stores
):
    pool = reserve_pool(store)
    stores = opened_stores(THREADS)
    claimed: list[list[str]] = [[] for _ in range(THREADS)]

    results = run_at_once(
        THREADS, lambda index: claim_until_empty(stores[index], f"tick-{index}", claimed[index])
    )

    assert_claimed_exactly_once(
        store, state_url, pool, [each for taken in claimed for each in taken]
    )
    assert [result for result in results if isinstance(result, Exception)] == []
    assert sum(1 for taken in claimed if taken) > 1  # the claimers did share the pool


def child_claim_until_empty(state_url: str, owner: str, out: str, barrier: Barrier) -> None:
    """One instance's ticks in a spawned process: claims until empty, writes what it claimed."""
    claimed: list[str] = []
    store = open_store(state_url)
    try:
        store.count_outstanding()  # connected and migrated before the race starts
        barrier.wait(timeout=WAIT_SECONDS)
        claim_until_empty(store, owner, claimed)
    finally:
        store.close()
        Path(out).write_text("".join(f"{request_id}\n" for request_id in claimed))


@pytest.mark.slow
def test_processes_claim_every_job_exactly_once(store, state_url, spawn, tmp_path):
    pool = reserve_pool(store)
    barrier = multiprocessing.get_context("spawn").Barrier(PROCESSES)
    outputs = [tmp_path / f"claimed-{index}.txt" for index in range(PROCESSES)]

    children = [
        spawn(child_claim_until_empty, state_url, f"process-{index}", str(out), barrier)
        for index, out in enumerate(outputs)
    ]
    for child in children:
        child.join(timeout=WAIT_SECONDS)

    claimed = [request_id for out in outputs for request_id in out.read_text().splitlines()]
    assert_claimed_exactly_once(store, state_url, pool, claimed)
    assert [child.exitcode for child in children] == [0] * PROCESSES
    assert sum(1 for out in outputs if out.read_text()) > 1  # the processes did share the pool


# The crashed tick wakes up and ends its jobs while the tick that took them over ends them too,
# twice (from two threads, as a retried batch would).
ENDERS = [("crashed-tick", "img-late"), ("next-tick", "img-new"), ("next-tick", "img-new")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "first", range(len(ENDERS)), ids=["crashed-first", "next-first", "next-again-first"]
)
def test_two_owners_racing_to_end_jobs_after_a_takeover_apply_exactly_one_end_each(
    store, state_url, opened_stores, first
):
    jobs = reserve_all(store, [due_job(T0 + timedelta(seconds=index)) for index in range(20)])
    leased = {"crashed-tick": claim(store, "crashed-tick")}
    after_expiry = NOW + LEASE + timedelta(seconds=1)
    leased["next-tick"] = claim(store, "next-tick", now=after_expiry)
    assert ids(leased["crashed-tick"]) == ids(leased["next-tick"]) == ids(jobs)
    # The last thread to reach a barrier runs on while the others are still being woken: it is
    # placed last so that each contender gets the head start in one of the variants.
    contenders = ENDERS[first + 1 :] + ENDERS[: first + 1]
    stores = opened_stores(len(contenders))

    def end_all(index: int) -> tuple[str, list[PollUpdate]]:
        owner, image_id = contenders[index]
        ends = [
            PollUpdate.end(job, status=JobStatus.SUCCESS, at=after_expiry, image_id=image_id)
            for job in leased[owner]
        ]
        return owner, stores[index].record_polls(ends, owner=owner)

    results = run_at_once(len(contenders), end_all)

    assert [result for result in results if isinstance(result, Exception)] == []
    applied = [result for result in results if not isinstance(result, Exception)]
    assert [
        update for owner, updates in applied if owner == "crashed-tick" for update in updates
    ] == []
    assert sorted(update.request_id for _, updates in applied for update in updates) == sorted(
        ids(jobs)
    )
    assert backend_rows(state_url, "SELECT DISTINCT status, image_id, poll_attempts FROM jobs") == [
        ("SUCCESS", "img-new", 1)
    ]


@pytest.mark.slow
def test_threads_reserving_one_key_at_once_create_exactly_one_job(state_url, opened_stores):
    stores = opened_stores(RACERS)

    results = run_at_once(
        RACERS, lambda index: stores[index].reserve(new_job({**ECS_BODY}, key="key-1"))
    )

    errors = [result for result in results if isinstance(result, Exception)]
    assert errors == []
    reservations = [result for result in results if not isinstance(result, Exception)]
    assert sum(reservation.created for reservation in reservations) == 1
    assert len({reservation.job.request_id for reservation in reservations}) == 1
    assert job_count(state_url) == 1


@pytest.mark.slow
@BACKUP_KINDS
def test_threads_reserving_one_backup_at_once_create_exactly_one_job(
    state_url, opened_stores, kind
):
    stores = opened_stores(RACERS)
    body = backup_body(kind)

    results = run_at_once(
        RACERS, lambda index: stores[index].reserve(new_job(body, key=f"key-{index}"))
    )

    created = [result for result in results if not isinstance(result, Exception)]
    refused = [result for result in results if isinstance(result, Exception)]
    assert [reservation.created for reservation in created] == [True]
    assert len(refused) == RACERS - 1
    assert all(isinstance(error, BackupInUseError) for error in refused), refused
    assert all(
        isinstance(error, BackupInUseError) and error.details[0]["path"] == "$.backup_id"
        for error in refused
    )
    assert job_count(state_url) == 1


# --- PostgreSQL only -------------------------------------------------------------------------


def schema_versions(url: str) -> list[tuple[Any, ...]]:
    return backend_rows(url, "SELECT version FROM wholeimage_schema")


def skip_unless_postgres(store_kind: str) -> None:
    if store_kind != "postgres":
        pytest.skip("PostgreSQL only")


@pytest.mark.slow
@pytest.mark.postgres
def test_migrate_run_by_eight_connections_at_once_creates_the_schema_once(store_kind, state_url):
    skip_unless_postgres(store_kind)
    postgres_url = state_url
    connections = [psycopg.connect(postgres_url) for _ in range(THREADS)]
    try:
        results = run_at_once(THREADS, lambda index: migrate(connections[index]))
    finally:
        for connection in connections:
            connection.close()

    assert results == [len(MIGRATIONS)] * THREADS
    assert schema_versions(postgres_url) == [(len(MIGRATIONS),)]
    indexes = backend_rows(
        postgres_url,
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname",
    )
    assert {"jobs_backup_once", "jobs_due"} <= {name for (name,) in indexes}

    with psycopg.connect(postgres_url) as connection:
        assert migrate(connection) == len(MIGRATIONS)
    assert schema_versions(postgres_url) == [(len(MIGRATIONS),)]
    assert (
        backend_rows(
            postgres_url,
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname",
        )
        == indexes
    )


def claim_inner_select() -> str:
    """The SELECT inside the claim UPDATE, as the store runs it."""
    found = re.search(r"WHERE request_id IN \((.*)\)\s*RETURNING", _CLAIM, re.DOTALL)
    assert found is not None, _CLAIM
    inner = found.group(1).strip()
    assert inner.startswith("SELECT request_id FROM jobs")
    assert "FOR UPDATE SKIP LOCKED" in inner
    return inner


@pytest.mark.slow
@pytest.mark.postgres
def test_the_claim_query_finds_due_jobs_through_the_jobs_due_index(store_kind, state_url):
    skip_unless_postgres(store_kind)
    columns = (
        "request_id, request_fingerprint, request_json, source_kind, source_id, status, "
        "created_at, updated_at, ended_at, next_poll_at"
    )
    with psycopg.connect(state_url, autocommit=True) as connection:
        migrate(connection)
        connection.execute(
            f"INSERT INTO jobs ({columns}) SELECT 'ended-' || n, 'f', '{{}}', 'ecs', 'i', "
            "(ARRAY['SUCCESS', 'FAIL', 'TIMED_OUT'])[n % 3 + 1], 0, 0, n, n "
            "FROM generate_series(1, 20000) AS n"
        )
        connection.execute(
            f"INSERT INTO jobs ({columns}) SELECT 'due-' || n, 'f', '{{}}', 'ecs', 'i', "
            "(ARRAY['SUBMITTED', 'INIT', 'RUNNING'])[n % 3 + 1], 0, 0, NULL, n "
            "FROM generate_series(1, 100) AS n"
        )
        connection.execute("ANALYZE jobs")
        with psycopg.ClientCursor(connection) as cursor:
            cursor.execute(
                f"EXPLAIN {claim_inner_select()}", {"now": 50_000.0, "limit": CLAIM_LIMIT}
            )
            plan = "\n".join(str(row[0]) for row in cursor.fetchall())

    # After ANALYZE, PostgreSQL 15 picks the partial index by itself at this size (20,000 ended
    # rows, 100 due): enable_seqscan is left alone, so this is the plan production would get.
    assert "Index Scan using jobs_due on jobs" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "Sort" not in plan, plan  # the index already yields next_poll_at order
