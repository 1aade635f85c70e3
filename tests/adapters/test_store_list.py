"""``JobStore.list_jobs``, the operator's ``list``: run against both adapters.

Every test takes conftest's ``store`` fixture, so it runs twice: ``[sqlite]`` and ``[postgres]``.
Jobs are recorded through the port itself (``reserve`` records a job in any status, with any
``created_at``), spaced a minute apart so that "newest first" has one right answer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from wholeimage.models import ENDED, OUTSTANDING, CreateImageRequest, Job, JobStatus
from wholeimage.store.records import JobStore

T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
REQUEST = CreateImageRequest(name="web01-full", instance_id="877a2cda-ba63-4e1e-b95f-e67e48b6129a")

pytestmark = pytest.mark.usefixtures("store_kind")


def recorded(
    store: JobStore,
    *,
    status: JobStatus = JobStatus.SUBMITTED,
    created_at: datetime = T0,
    request_id: str | None = None,
) -> Job:
    job = Job(
        request_id=request_id or uuid.uuid4().hex,
        idempotency_key=None,
        request_fingerprint=REQUEST.fingerprint(),
        request=REQUEST,
        requested_by="alice",
        source_kind=REQUEST.source_kind,
        source_id=REQUEST.source_id,
        status=status,
        ims_job_id=uuid.uuid4().hex if status is not JobStatus.SUBMITTING else None,
        created_at=created_at,
        updated_at=created_at,
    )
    assert store.reserve(job).created
    return job


def a_minute_apart(store: JobStore, statuses: list[JobStatus]) -> list[Job]:
    """One job per status, the first oldest, each created a minute after the one before."""
    return [
        recorded(store, status=status, created_at=T0 + timedelta(minutes=index))
        for index, status in enumerate(statuses)
    ]


def ids(jobs: list[Job]) -> list[str]:
    return [job.request_id for job in jobs]


@pytest.mark.slow
def test_an_empty_store_lists_nothing(store):
    assert store.list_jobs(statuses=None, since=None, limit=10) == []


@pytest.mark.slow
def test_jobs_are_listed_newest_first_with_every_field_read_back(store):
    jobs = a_minute_apart(store, [JobStatus.SUCCESS, JobStatus.RUNNING, JobStatus.SUBMITTED])

    listed = store.list_jobs(statuses=None, since=None, limit=10)

    assert ids(listed) == ids(jobs[::-1])
    assert listed[0] == store.get(jobs[2].request_id)
    assert listed[0].created_at == jobs[2].created_at


@pytest.mark.slow
def test_the_limit_keeps_the_newest(store):
    jobs = a_minute_apart(store, [JobStatus.SUBMITTED] * 5)

    assert ids(store.list_jobs(statuses=None, since=None, limit=2)) == ids(jobs[:2:-1])


@pytest.mark.slow
@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_lists_nothing(store, limit):
    a_minute_apart(store, [JobStatus.SUBMITTED] * 2)

    assert store.list_jobs(statuses=None, since=None, limit=limit) == []


@pytest.mark.slow
def test_a_status_filter_keeps_only_those_statuses(store):
    jobs = a_minute_apart(
        store, [JobStatus.FAIL, JobStatus.RUNNING, JobStatus.SUCCESS, JobStatus.TIMED_OUT]
    )

    listed = store.list_jobs(statuses=ENDED, since=None, limit=10)

    assert ids(listed) == [jobs[3].request_id, jobs[2].request_id, jobs[0].request_id]


@pytest.mark.slow
def test_every_status_can_be_listed_on_its_own(store):
    jobs = {status: recorded(store, status=status) for status in JobStatus}

    for status, job in jobs.items():
        assert ids(store.list_jobs(statuses=[status], since=None, limit=10)) == [job.request_id]


def test_an_empty_status_filter_lists_nothing(store):
    a_minute_apart(store, [JobStatus.SUBMITTED])

    assert store.list_jobs(statuses=[], since=None, limit=10) == []


def test_since_keeps_jobs_created_at_or_after_it(store):
    jobs = a_minute_apart(store, [JobStatus.SUBMITTED] * 4)

    listed = store.list_jobs(statuses=None, since=jobs[2].created_at, limit=10)

    assert ids(listed) == [jobs[3].request_id, jobs[2].request_id]


def test_since_in_another_time_zone_means_the_same_moment(store):
    jobs = a_minute_apart(store, [JobStatus.SUBMITTED] * 3)
    in_tokyo = jobs[1].created_at.astimezone(timezone(timedelta(hours=9)))

    assert ids(store.list_jobs(statuses=None, since=in_tokyo, limit=10)) == ids(jobs[:0:-1])


@pytest.mark.slow
def test_status_since_and_limit_combine(store):
    jobs = a_minute_apart(
        store,
        [
            JobStatus.RUNNING,
            JobStatus.RUNNING,
            JobStatus.SUCCESS,
            JobStatus.INIT,
            JobStatus.RUNNING,
        ],
    )

    listed = store.list_jobs(statuses=OUTSTANDING, since=jobs[1].created_at, limit=2)

    assert ids(listed) == [jobs[4].request_id, jobs[3].request_id]


@pytest.mark.slow
def test_jobs_created_at_the_same_moment_come_in_a_stable_order(store):
    same_moment = [recorded(store, request_id=f"{digit}" * 32, created_at=T0) for digit in "3a1f"]

    listed = store.list_jobs(statuses=None, since=None, limit=10)

    assert ids(listed) == sorted(ids(same_moment), reverse=True)
    assert ids(store.list_jobs(statuses=None, since=None, limit=2)) == ids(listed[:2])


def test_listing_changes_nothing(store):
    job = recorded(store, status=JobStatus.RUNNING)

    store.list_jobs(statuses=None, since=None, limit=10)

    assert store.get(job.request_id) == job
    assert store.count_outstanding() == 1
