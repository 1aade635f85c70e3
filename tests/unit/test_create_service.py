"""The ``create`` use case: ``submit_create`` and ``find_job`` over a real SQLite store and a fake IMS.

The clock is injected, so "five minutes later" is a line of code, not a wait.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeImsClient, make_dependencies
from wholeimage.create import (
    STALE_SUBMISSION,
    CreateOutcome,
    find_job,
    submit_create,
)
from wholeimage.errors import (
    BackupInUseError,
    IdempotencyKeyReusedError,
    ImsRejectedError,
    NotFoundError,
    SubmissionInProgressError,
    SubmissionUncertainError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from wholeimage.models import BACKUP_BLOCKING, CreateImageRequest, Job, JobStatus
from wholeimage.service.jobs import submit
from wholeimage.store.sqlite import SqliteJobStore

T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)

ECS_BODY: dict[str, Any] = {
    "name": "web01-full",
    "description": "creating an image from an ECS",
    "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
    "tags": ["aaa.111", "bbb.333"],
}
CSBS_BODY: dict[str, Any] = {
    "name": "from-csbs",
    "backup_id": "9b27efab-4a17-4c06-bfa2-3e0cf021d3c3",
}
CBR_BODY: dict[str, Any] = {
    "name": "from-cbr",
    "backup_id": "2f1c6a7e-5b7d-4f63-9a41-0d8c3e6b7a15",
    "whole_image_type": "CBR",
}
BACKUP_BODIES = pytest.mark.parametrize("body", [CSBS_BODY, CBR_BODY], ids=["csbs", "cbr"])


class Clock:
    """An injectable clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


def request_of(body: dict[str, Any]) -> CreateImageRequest:
    return CreateImageRequest.model_validate(body)


def submitting_job(body: dict[str, Any], *, key: str | None, created_at: datetime) -> Job:
    """The row a process leaves behind when it dies while IMS is being called."""
    request = request_of(body)
    return Job(
        request_id=uuid.uuid4().hex,
        idempotency_key=key,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="alice",
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=JobStatus.SUBMITTING,
        created_at=created_at,
        updated_at=created_at,
    )


@dataclass
class Bench:
    """The use case's world: a real SQLite store in tmp_path, a fake IMS and a still clock."""

    db_path: Path
    store: SqliteJobStore
    ims: FakeImsClient
    clock: Clock

    def submit(
        self,
        body: dict[str, Any],
        *,
        key: str | None,
        first_poll_after: timedelta = timedelta(seconds=42),
    ) -> CreateOutcome:
        return submit_create(
            request_of(body),
            idempotency_key=key,
            requested_by="alice",
            trace="trace-1",
            ims=self.ims,
            store=self.store,
            first_poll_after=first_poll_after,
            now=self.clock,
        )

    def rows(self) -> list[tuple[str, str | None, str]]:
        """Every job as (request_id, idempotency_key, status), read behind the store's back."""
        with closing(sqlite3.connect(self.db_path)) as connection:
            return connection.execute(
                "SELECT request_id, idempotency_key, status FROM jobs "
                "ORDER BY created_at, request_id"
            ).fetchall()

    def set_status(self, request_id: str, status: JobStatus) -> None:
        """What the tracker will do one day; the store has no method for it yet."""
        with closing(sqlite3.connect(self.db_path)) as connection, connection:
            updated = connection.execute(
                "UPDATE jobs SET status = ? WHERE request_id = ?", (status.value, request_id)
            ).rowcount
        assert updated == 1


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    db_path = tmp_path / "state.db"
    store = SqliteJobStore(str(db_path))
    yield Bench(db_path=db_path, store=store, ims=FakeImsClient(), clock=Clock(T0))
    store.close()


# --- success and replay ---------------------------------------------------------------------


def test_a_submission_is_recorded_as_submitted_with_the_ims_job_id_and_its_first_poll_when_asked(
    bench,
):
    bench.ims.script.append("ff80808288d41e1b018a4c4f5a2f0e2a")

    outcome = bench.submit(ECS_BODY, key="key-1")

    assert outcome.replayed is False
    job = outcome.job
    assert job.status is JobStatus.SUBMITTED
    assert job.ims_job_id == "ff80808288d41e1b018a4c4f5a2f0e2a"
    assert job.submitted_at == T0
    assert job.next_poll_at == T0 + timedelta(seconds=42)
    assert job.created_at == T0
    assert job.updated_at == T0
    assert job.idempotency_key == "key-1"
    assert job.requested_by == "alice"
    assert job.trace == "trace-1"
    assert (job.source_kind, job.source_id) == ("ecs", ECS_BODY["instance_id"])
    assert job.fail_reason is None
    assert bench.ims.submitted == [ECS_BODY]
    # The marker IMS can be asked about later is the job's own request id (docs/reconcile.md).
    assert bench.ims.markers == [job.request_id]
    assert bench.store.get(job.request_id) == job


def test_a_first_poll_after_zero_makes_the_new_job_due_at_once(bench):
    job = bench.submit(ECS_BODY, key=None, first_poll_after=timedelta(0)).job

    assert job.next_poll_at == job.submitted_at == T0


@pytest.mark.parametrize(("minimum", "maximum"), [(0, 0), (0, 300), (30, 300), (15, 15)])
def test_the_create_function_first_polls_after_the_configured_minimum_interval(
    tmp_path, minimum, maximum
):
    # README: WHOLEIMAGE_POLL_MIN_INTERVAL=0 and _MAX_INTERVAL=0 make every job due at every
    # tick; a fresh job waited a fixed 10 s before (issue 10).
    deps = make_dependencies(
        tmp_path, FakeImsClient(), poll_min_interval=minimum, poll_max_interval=maximum
    )
    try:
        job = submit(deps, request_of(ECS_BODY), idempotency_key=None, requested_by=None).job
    finally:
        deps.store.close()

    assert job.submitted_at is not None
    assert job.next_poll_at == job.submitted_at + timedelta(seconds=minimum)


def test_the_job_is_recorded_as_submitting_before_ims_is_called(bench):
    seen_during_the_call: list[list[tuple[str, str | None, str]]] = []
    bench.ims.on_submit = lambda: seen_during_the_call.append(bench.rows())

    outcome = bench.submit(ECS_BODY, key="key-1")

    assert seen_during_the_call == [[(outcome.job.request_id, "key-1", "SUBMITTING")]]


def test_a_repeat_with_the_same_key_replays_the_same_job_without_calling_ims_again(bench):
    first = bench.submit(ECS_BODY, key="key-1")
    bench.clock.advance(timedelta(hours=1))

    again = bench.submit(ECS_BODY, key="key-1")

    assert again.replayed is True
    assert again.job == first.job
    assert len(bench.ims.submitted) == 1
    assert len(bench.rows()) == 1


def test_a_repeat_whose_body_lists_the_same_fields_in_another_order_is_still_a_replay(bench):
    first = bench.submit(ECS_BODY, key="key-1")
    reordered = dict(reversed(list(ECS_BODY.items())))

    again = bench.submit(reordered, key="key-1")

    assert again.replayed is True
    assert again.job.request_id == first.job.request_id
    assert len(bench.ims.submitted) == 1


def test_the_same_key_with_a_different_body_is_refused_and_nothing_new_is_recorded(bench):
    first = bench.submit(ECS_BODY, key="key-1")

    with pytest.raises(IdempotencyKeyReusedError) as raised:
        bench.submit({**ECS_BODY, "name": "another-name"}, key="key-1")

    assert raised.value.http_status == 409
    assert first.job.request_id in raised.value.details[0]["message"]
    assert bench.rows() == [(first.job.request_id, "key-1", "SUBMITTED")]
    assert len(bench.ims.submitted) == 1


def test_requests_without_a_key_are_never_replays(bench):
    first = bench.submit(ECS_BODY, key=None)
    second = bench.submit(ECS_BODY, key=None)

    assert (first.replayed, second.replayed) == (False, False)
    assert first.job.request_id != second.job.request_id
    assert len(bench.ims.submitted) == 2
    assert len(bench.rows()) == 2


# --- a repeat that finds the first submission still SUBMITTING ----------------------------


def test_a_repeat_while_the_first_submission_is_in_flight_is_told_to_retry_shortly(bench):
    repeats: list[SubmissionInProgressError] = []

    def repeat_during_the_ims_call() -> None:
        bench.clock.advance(STALE_SUBMISSION - timedelta(seconds=1))
        try:
            bench.submit(ECS_BODY, key="key-1")
        except SubmissionInProgressError as exc:
            repeats.append(exc)

    bench.ims.on_submit = repeat_during_the_ims_call

    outcome = bench.submit(ECS_BODY, key="key-1")

    assert len(repeats) == 1
    assert repeats[0].http_status == 409
    assert outcome.job.status is JobStatus.SUBMITTED
    assert len(bench.ims.submitted) == 1


@pytest.mark.parametrize(
    "age",
    [timedelta(0), timedelta(minutes=1), STALE_SUBMISSION - timedelta(microseconds=1)],
    ids=["at-once", "a-minute-later", "just-before-stale"],
)
def test_a_repeat_finding_a_submitting_job_younger_than_stale_submission_is_in_progress(bench, age):
    left_behind = submitting_job(ECS_BODY, key="key-1", created_at=T0)
    bench.store.reserve(left_behind)
    bench.clock.advance(age)

    with pytest.raises(SubmissionInProgressError):
        bench.submit(ECS_BODY, key="key-1")

    assert bench.ims.submitted == []
    assert bench.rows() == [(left_behind.request_id, "key-1", "SUBMITTING")]


@pytest.mark.parametrize(
    "age", [STALE_SUBMISSION, timedelta(days=2)], ids=["exactly-stale", "days-later"]
)
def test_a_repeat_finding_a_stale_submitting_job_calls_it_uncertain_and_never_resubmits(bench, age):
    left_behind = submitting_job(ECS_BODY, key="key-1", created_at=T0)
    bench.store.reserve(left_behind)
    bench.clock.advance(age)

    outcome = bench.submit(ECS_BODY, key="key-1")

    assert outcome.replayed is True
    assert outcome.job.request_id == left_behind.request_id
    assert outcome.job.status is JobStatus.SUBMIT_UNCERTAIN
    assert outcome.job.fail_reason
    assert outcome.job.updated_at == T0 + age
    assert outcome.job.ims_job_id is None
    assert bench.ims.submitted == []
    assert bench.store.get(left_behind.request_id) == outcome.job

    # And it stays uncertain: a later repeat replays it, still without calling IMS.
    bench.clock.advance(timedelta(hours=1))
    later = bench.submit(ECS_BODY, key="key-1")
    assert later.replayed is True
    assert later.job == outcome.job
    assert bench.ims.submitted == []
    assert len(bench.rows()) == 1


# --- one backup, one image -------------------------------------------------------------------


@pytest.mark.slow
@BACKUP_BODIES
@pytest.mark.parametrize("status", sorted(BACKUP_BLOCKING), ids=str)
def test_a_backup_with_a_blocking_job_is_refused_before_ims_is_called(bench, body, status):
    first = bench.submit(body, key="key-1")
    bench.set_status(first.job.request_id, status)
    assert bench.ims.submitted == [body]

    for key in ("key-2", None):
        with pytest.raises(BackupInUseError) as raised:
            bench.submit({**body, "name": "second-image"}, key=key)
        assert raised.value.http_status == 409
        assert first.job.request_id in raised.value.details[0]["message"]

    assert bench.ims.submitted == [body]
    assert bench.rows() == [(first.job.request_id, "key-1", status.value)]


def test_the_blocking_states_are_outstanding_submitting_uncertain_and_success():
    assert {
        JobStatus.SUBMITTING,
        JobStatus.SUBMIT_UNCERTAIN,
        JobStatus.SUBMITTED,
        JobStatus.INIT,
        JobStatus.RUNNING,
        JobStatus.SUCCESS,
    } == BACKUP_BLOCKING


@BACKUP_BODIES
def test_a_backup_is_refused_while_its_first_job_is_still_being_submitted(bench, body):
    refusals: list[BackupInUseError] = []

    def second_request_during_the_ims_call() -> None:
        try:
            bench.submit(body, key="key-2")
        except BackupInUseError as exc:
            refusals.append(exc)

    bench.ims.on_submit = second_request_during_the_ims_call

    bench.submit(body, key="key-1")

    assert len(refusals) == 1
    assert len(bench.ims.submitted) == 1


@BACKUP_BODIES
@pytest.mark.parametrize("ended", [JobStatus.FAIL, JobStatus.TIMED_OUT], ids=str)
def test_a_backup_whose_only_job_failed_or_timed_out_may_be_used_again(bench, body, ended):
    first = bench.submit(body, key="key-1")
    bench.set_status(first.job.request_id, ended)
    bench.clock.advance(timedelta(hours=3))

    second = bench.submit(body, key="key-2")

    assert second.replayed is False
    assert second.job.status is JobStatus.SUBMITTED
    assert bench.ims.submitted == [body, body]
    assert bench.rows() == [
        (first.job.request_id, "key-1", ended.value),
        (second.job.request_id, "key-2", "SUBMITTED"),
    ]
    # The new job blocks the backup again.
    with pytest.raises(BackupInUseError):
        bench.submit(body, key="key-3")


def test_a_replay_of_a_backup_request_is_a_replay_not_a_backup_in_use(bench):
    first = bench.submit(CBR_BODY, key="key-1")

    again = bench.submit(CBR_BODY, key="key-1")

    assert again.replayed is True
    assert again.job == first.job


@pytest.mark.slow
@pytest.mark.parametrize("status", list(JobStatus), ids=str)
def test_ecs_sources_are_never_blocked_by_each_other(bench, status):
    first = bench.submit(ECS_BODY, key="key-1")
    bench.set_status(first.job.request_id, status)

    second = bench.submit(ECS_BODY, key="key-2")
    third = bench.submit(ECS_BODY, key=None)

    assert second.job.status is JobStatus.SUBMITTED
    assert third.job.status is JobStatus.SUBMITTED
    assert len(bench.ims.submitted) == 3


def test_an_ecs_source_is_not_blocked_while_another_job_for_it_is_being_submitted(bench):
    nested: list[CreateOutcome] = []
    calls: list[None] = []

    def second_request_during_the_ims_call() -> None:
        calls.append(None)
        if len(calls) == 1:  # only during the first call, not during the nested one
            nested.append(bench.submit(ECS_BODY, key="key-2"))

    bench.ims.on_submit = second_request_during_the_ims_call

    first = bench.submit(ECS_BODY, key="key-1")

    assert first.job.status is JobStatus.SUBMITTED
    assert nested[0].job.status is JobStatus.SUBMITTED
    assert len(bench.ims.submitted) == 2


# --- what IMS answers ------------------------------------------------------------------------


REFUSALS = [
    ImsRejectedError(
        "IMS rejected the request",
        http_status=400,
        upstream={"status": 400, "code": "IMG.0001", "message": "bad"},
    ),
    UpstreamError("IMS answered something unexpected"),
    UpstreamAuthError("IMS refused wholeimage's credentials (401); an operator must fix them"),
    UpstreamUnavailableError("IMS is throttling", retry_after=30),
]


@pytest.mark.slow
@BACKUP_BODIES
@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda exc: type(exc).__name__)
def test_a_submission_ims_definitely_refused_leaves_nothing_behind_so_a_retry_goes_through(
    bench, body, refusal
):
    reserved: list[str] = []
    bench.ims.on_submit = lambda: reserved.extend(request_id for request_id, _, _ in bench.rows())
    bench.ims.script.append(refusal)

    with pytest.raises(type(refusal)) as raised:
        bench.submit(body, key="key-1")

    assert raised.value is refusal
    assert len(reserved) == 1
    assert bench.store.get(reserved[0]) is None
    assert bench.rows() == []

    # The same key and the same backup go through on the retry.
    bench.ims.on_submit = None
    retry = bench.submit(body, key="key-1")
    assert retry.replayed is False
    assert retry.job.status is JobStatus.SUBMITTED
    assert bench.ims.submitted == [body, body]


@BACKUP_BODIES
@pytest.mark.parametrize(
    "lost",
    [
        UpstreamTimeoutError(
            "IMS did not answer after the request was sent; it may have been accepted",
            request_sent=True,
        ),
        SubmissionUncertainError("IMS answered 502 after the request was sent"),
        SubmissionUncertainError("IMS answered 200 without a readable job_id"),
    ],
    ids=["timeout", "5xx", "unreadable-200"],
)
def test_a_lost_answer_is_kept_as_uncertain_and_never_resubmitted(bench, body, lost):
    timeout = lost
    bench.ims.script.append(timeout)

    outcome = bench.submit(body, key="key-1")

    assert outcome.replayed is False
    assert outcome.job.status is JobStatus.SUBMIT_UNCERTAIN
    assert outcome.job.fail_reason == timeout.message
    assert outcome.job.ims_job_id is None
    assert bench.store.get(outcome.job.request_id) == outcome.job

    again = bench.submit(body, key="key-1")
    assert again.replayed is True
    assert again.job == outcome.job
    with pytest.raises(BackupInUseError):
        bench.submit(body, key="key-2")
    assert bench.ims.submitted == [body]
    assert len(bench.rows()) == 1


@pytest.mark.parametrize(
    "failure", [RuntimeError("boom"), KeyboardInterrupt()], ids=lambda exc: type(exc).__name__
)
def test_an_unexpected_failure_during_the_ims_call_is_reraised_and_the_job_kept_as_uncertain(
    bench, failure
):
    bench.ims.script.append(failure)

    with pytest.raises(type(failure)) as raised:
        bench.submit(CBR_BODY, key="key-1")

    assert raised.value is failure
    [(request_id, key, status)] = bench.rows()
    assert (key, status) == ("key-1", "SUBMIT_UNCERTAIN")
    kept = bench.store.get(request_id)
    assert kept is not None
    assert kept.fail_reason

    again = bench.submit(CBR_BODY, key="key-1")
    assert again.replayed is True
    assert again.job == kept
    assert bench.ims.submitted == [CBR_BODY]


# --- find_job --------------------------------------------------------------------------------


def test_find_job_finds_a_job_by_its_ims_job_id_and_by_its_request_id(bench):
    bench.ims.script.append("ff80808288d41e1b018a4c4f5a2f0e2a")
    job = bench.submit(ECS_BODY, key="key-1").job

    assert find_job(store=bench.store, ims_job_id="ff80808288d41e1b018a4c4f5a2f0e2a") == job
    assert find_job(store=bench.store, request_id=job.request_id) == job


def test_find_job_finds_a_job_still_being_submitted_by_its_request_id(bench):
    left_behind = submitting_job(ECS_BODY, key=None, created_at=T0)
    bench.store.reserve(left_behind)

    assert find_job(store=bench.store, request_id=left_behind.request_id) == left_behind


@pytest.mark.parametrize(
    "ids",
    [
        {"ims_job_id": "ff80808288d41e1b018a4c4f5a2f0e2b"},
        {"request_id": "0123456789abcdef0123456789abcdef"},
        {},
    ],
    ids=["unknown-ims-job-id", "unknown-request-id", "no-id-at-all"],
)
def test_find_job_raises_not_found_for_an_unknown_id(bench, ids):
    bench.ims.script.append("ff80808288d41e1b018a4c4f5a2f0e2a")
    bench.submit(ECS_BODY, key="key-1")

    with pytest.raises(NotFoundError) as raised:
        find_job(store=bench.store, **ids)

    assert raised.value.http_status == 404


def test_find_job_does_not_take_a_request_id_for_an_ims_job_id(bench):
    job = bench.submit(ECS_BODY, key="key-1").job

    with pytest.raises(NotFoundError):
        find_job(store=bench.store, ims_job_id=job.request_id)
