"""The ``check`` use case: ``decide``, the job poller's classification, ticks end to end against the
IMS emulator on both stores, overlapping ticks (threads, processes, a killed process) and the
served ``check`` function.

The emulator and the ticks share one fake clock (``Clock``), so a job goes through INIT, RUNNING
and SUCCESS without sleeping; real time passes only where concurrency must be real (emulator
latency, overlapping ticks, a child process killed mid-poll). Child processes are started with
the "spawn" context; their entry points are the top-level ``child_*`` functions below.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from functions_framework import create_app

from ims_emulator import EmulatorConfig, Fault, ImsEmulator
from tests.fakes import make_settings
from tests.system.test_served import function_env, serve
from wholeimage.bootstrap import Dependencies, open_store, set_dependencies
from wholeimage.check import (
    JOB_NOT_FOUND_CODE,
    NOT_FOUND_GRACE,
    TIMED_OUT_CODE,
    UNREACHABLE_GRACE,
    CheckConfig,
    CheckSummary,
    decide,
    run_check_sync,
)
from wholeimage.create import submit_create
from wholeimage.httputil import RateLimiter
from wholeimage.ims.auth import StaticTokenAuth
from wholeimage.ims.client import HttpImsClient
from wholeimage.ims.job_report import parse_job_report
from wholeimage.ims.keepalive import KeepAlivePollClient
from wholeimage.ims.poller import JobPoller, PollOutcome, PollResult
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.poll_backoff import PollBackoff
from wholeimage.service.ports import ims_client
from wholeimage.service.tick import check_config, poller_for
from wholeimage.settings import Settings
from wholeimage.store.records import JobStore, PollUpdate
from wholeimage.store.sqlite import SqliteJobStore

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
PROJECT_ID = EmulatorConfig().project_id
AK, SK = EmulatorConfig().ak, EmulatorConfig().sk
INSTANCE_ID = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"
T0 = datetime(2025, 3, 14, 9, 0, 0, tzinfo=UTC)
# How long after its submission a job is first due in these tests: the create function passes
# WHOLEIMAGE_POLL_MIN_INTERVAL (service.jobs.submit); 10 s lets a test place ticks around it.
FIRST_POLL = timedelta(seconds=10)
# The fake clock starts far from real time; AK/SK signatures carry real time, so the emulator
# must not refuse them as expired.
START = 1_750_000_000.0
ANY_SKEW = 1e10
WAIT_SECONDS = 30.0
API_TOKEN = "check-test-token-0123456789"
SCHEDULER_HEADERS = {
    "X-CloudScheduler-JobName": "wholeimage-check",
    "X-CloudScheduler-ScheduleTime": "2025-03-14T09:27:00.000Z",
    "User-Agent": "Google-Cloud-Scheduler",
}


# === decide ====================================================================================


def tracked_job(
    status: JobStatus = JobStatus.RUNNING,
    *,
    submitted_at: datetime | None = T0,
    deadline_at: datetime | None = None,
    process_percent: float | None = 0.3,
) -> Job:
    request = CreateImageRequest(name="web01-full", instance_id=INSTANCE_ID)
    created = T0 - timedelta(seconds=1)
    return Job(
        request_id="request-1",
        idempotency_key=None,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by=None,
        source_kind="ecs",
        source_id=INSTANCE_ID,
        status=status,
        ims_job_id="a" * 32,
        process_percent=process_percent,
        created_at=created,
        updated_at=created,
        submitted_at=submitted_at,
        next_poll_at=T0 + FIRST_POLL,
        deadline_at=deadline_at,
    )


def reported(status: str | None, **fields: Any) -> PollResult:
    body: dict[str, Any] = {"status": status, "job_id": "a" * 32, **fields}
    return PollResult("report", report=parse_job_report(body))


CONFIG = CheckConfig()  # 15 s .. 300 s, deadline 3 h
DEADLINE = T0 + CONFIG.job_deadline


def decided(
    result: PollResult, *, after: timedelta, job: Job | None = None, config: CheckConfig = CONFIG
) -> PollUpdate:
    return decide(job or tracked_job(), result, now=T0 + after, config=config, rng=random.Random(0))


def seconds_until_next_poll(update: PollUpdate, after: timedelta) -> float:
    assert update.next_poll_at is not None
    return (update.next_poll_at - (T0 + after)).total_seconds()


def test_success_ends_the_job_with_its_image_id_and_full_progress():
    update = decided(
        reported("SUCCESS", entities={"image_id": "img-1", "process_percent": 0.9}),
        after=timedelta(minutes=20),
    )
    assert update.status is JobStatus.SUCCESS
    assert update.image_id == "img-1"
    assert update.process_percent == 1.0
    assert update.ended_at == update.at == T0 + timedelta(minutes=20)
    assert update.next_poll_at is None
    assert (update.error_code, update.fail_reason) == (None, None)
    assert update.queried is True


def test_a_success_answer_with_a_stray_error_code_records_no_error():
    update = decided(
        reported("success", error_code="IMG.0014", entities={"image_id": "img-1"}),
        after=timedelta(minutes=5),
    )
    assert update.status is JobStatus.SUCCESS
    assert update.error_code is None


def test_fail_ends_the_job_with_imss_error_code_and_fail_reason():
    update = decided(
        reported(
            "FAIL",
            error_code="IMG.0014",
            fail_reason="underlying task failed",
            entities={"process_percent": 0.4},
        ),
        after=timedelta(minutes=20),
    )
    assert update.status is JobStatus.FAIL
    assert update.error_code == "IMG.0014"
    assert update.fail_reason == "underlying task failed"
    assert update.process_percent == 0.4
    assert update.image_id is None
    assert update.ended_at == T0 + timedelta(minutes=20)


@pytest.mark.parametrize(
    ("raw", "status"), [("INIT", JobStatus.INIT), ("RUNNING", JobStatus.RUNNING)]
)
def test_init_and_running_keep_the_job_outstanding_with_its_progress(raw: str, status: JobStatus):
    after = timedelta(seconds=100)
    update = decided(reported(raw, entities={"process_percent": "0.24"}), after=after)
    assert update.status is status
    assert update.process_percent == 0.24
    assert update.ended_at is None
    # The next poll follows the schedule: the job's age (100 s), ±10 %.
    assert 90 <= seconds_until_next_poll(update, after) <= 110


@pytest.mark.parametrize("raw", ["DONE", "SUCCEEDED", "", None])
def test_an_unknown_or_missing_status_keeps_the_job_outstanding_as_it_was(raw: str | None):
    job = tracked_job(JobStatus.RUNNING, process_percent=0.5)
    update = decided(
        reported(raw, entities={"image_id": "img-1"}), after=timedelta(minutes=3), job=job
    )
    assert update.status is JobStatus.RUNNING
    assert update.ended_at is None
    assert update.next_poll_at is not None


def test_a_missing_status_on_a_submitted_job_stays_submitted():
    job = tracked_job(JobStatus.SUBMITTED, process_percent=None)
    update = decided(reported(None), after=timedelta(seconds=30), job=job)
    assert update.status is JobStatus.SUBMITTED
    assert update.ended_at is None


def test_past_its_deadline_a_job_without_a_verdict_times_out_after_this_last_query():
    after = CONFIG.job_deadline
    update = decided(reported("RUNNING", entities={"process_percent": 0.8}), after=after)
    assert update.status is JobStatus.TIMED_OUT
    assert update.error_code == TIMED_OUT_CODE
    assert update.fail_reason is not None
    assert "RUNNING" in update.fail_reason
    assert update.process_percent == 0.8
    assert update.ended_at == DEADLINE


def test_past_its_deadline_an_unknown_status_times_out_naming_what_ims_said():
    update = decided(reported("WEIRD"), after=CONFIG.job_deadline + timedelta(minutes=1))
    assert update.status is JobStatus.TIMED_OUT
    assert update.fail_reason is not None
    assert "WEIRD" in update.fail_reason


def test_past_its_deadline_a_verdict_still_wins():
    update = decided(
        reported("SUCCESS", entities={"image_id": "img-late"}), after=CONFIG.job_deadline * 2
    )
    assert update.status is JobStatus.SUCCESS
    assert update.image_id == "img-late"


def test_a_deadline_recorded_on_the_job_wins_over_the_configured_one():
    job = tracked_job(deadline_at=T0 + timedelta(minutes=10))
    assert decided(reported("RUNNING"), after=timedelta(minutes=9), job=job).status is (
        JobStatus.RUNNING
    )
    assert decided(reported("RUNNING"), after=timedelta(minutes=10), job=job).status is (
        JobStatus.TIMED_OUT
    )


def test_a_job_without_a_submission_time_counts_from_its_creation():
    job = tracked_job(submitted_at=None)
    update = decided(reported("RUNNING"), after=CONFIG.job_deadline, job=job)
    assert update.status is JobStatus.TIMED_OUT


def test_not_found_within_the_grace_period_reschedules_the_job():
    after = NOT_FOUND_GRACE - timedelta(seconds=1)
    update = decided(PollResult("not_found", detail="404 IMG.0023"), after=after)
    assert update.status is JobStatus.RUNNING
    assert update.ended_at is None
    assert update.process_percent == 0.3
    assert seconds_until_next_poll(update, after) > 0


def test_not_found_after_the_grace_period_fails_the_job():
    update = decided(PollResult("not_found", detail="404 IMG.0023"), after=NOT_FOUND_GRACE)
    assert update.status is JobStatus.FAIL
    assert update.error_code == JOB_NOT_FOUND_CODE == "WHOLEIMAGE.JOB_NOT_FOUND"
    assert update.fail_reason is not None
    assert "a" * 32 in update.fail_reason
    assert "IMG.0023" in update.fail_reason
    assert update.ended_at == T0 + NOT_FOUND_GRACE


FAILED_QUERIES: list[PollOutcome] = ["transient", "throttled", "rejected", "auth"]


@pytest.mark.parametrize("outcome", FAILED_QUERIES)
@pytest.mark.parametrize(
    "after",
    [timedelta(seconds=20), timedelta(hours=1), CONFIG.job_deadline - timedelta(seconds=1)],
    ids=["young", "old", "just-before-deadline"],
)
def test_a_failed_query_never_fails_the_job_before_its_deadline(
    outcome: PollOutcome, after: timedelta
):
    job = tracked_job(JobStatus.INIT, process_percent=0.1)
    update = decided(PollResult(outcome, detail="x"), after=after, job=job)
    assert update.status is JobStatus.INIT
    assert update.process_percent == 0.1
    assert update.ended_at is None
    assert update.error_code is None
    assert seconds_until_next_poll(update, after) >= CONFIG.backoff.min_interval


@pytest.mark.parametrize("outcome", ["transient", "throttled"])
def test_retry_after_is_respected_in_the_next_poll(outcome: PollOutcome):
    after = timedelta(seconds=20)
    update = decided(PollResult(outcome, retry_after=600), after=after)
    assert seconds_until_next_poll(update, after) == 600


def test_a_short_retry_after_does_not_bring_the_schedule_forward():
    after = timedelta(minutes=2)
    update = decided(PollResult("throttled", retry_after=1), after=after)
    assert 108 <= seconds_until_next_poll(update, after) <= 132


@pytest.mark.parametrize("outcome", FAILED_QUERIES)
def test_between_the_deadline_and_the_unreachable_grace_a_failed_query_retries_soon(
    outcome: PollOutcome,
):
    after = CONFIG.job_deadline + UNREACHABLE_GRACE - timedelta(seconds=1)
    update = decided(PollResult(outcome), after=after)
    assert update.status is JobStatus.RUNNING
    assert seconds_until_next_poll(update, after) == CONFIG.backoff.min_interval


def test_past_the_deadline_retry_after_is_still_respected():
    after = CONFIG.job_deadline + timedelta(minutes=1)
    update = decided(PollResult("throttled", retry_after=120), after=after)
    assert update.status is JobStatus.RUNNING
    assert seconds_until_next_poll(update, after) == 120


def test_past_the_deadline_a_zero_schedule_still_waits_a_second():
    config = CheckConfig(backoff=PollBackoff(0, 0))
    after = config.job_deadline + timedelta(minutes=1)
    update = decided(PollResult("transient"), after=after, config=config)
    assert seconds_until_next_poll(update, after) == 1


@pytest.mark.parametrize("outcome", ["auth", "rejected"])
def test_our_own_wrong_credentials_or_endpoint_never_time_a_job_out(outcome: PollOutcome):
    # IMS may well have finished the job: once the configuration is fixed, polling finds out.
    after = CONFIG.job_deadline + UNREACHABLE_GRACE + timedelta(days=1)
    update = decided(PollResult(outcome, detail="401 APIGW.0301"), after=after)
    assert update.status is JobStatus.RUNNING
    assert update.ended_at is None


@pytest.mark.parametrize("outcome", ["transient", "throttled"])
def test_past_the_deadline_plus_the_unreachable_grace_failing_queries_time_the_job_out(
    outcome: PollOutcome,
):
    update = decided(
        PollResult(outcome, detail="503 IMG.0061"), after=CONFIG.job_deadline + UNREACHABLE_GRACE
    )
    assert update.status is JobStatus.TIMED_OUT
    assert update.error_code == TIMED_OUT_CODE
    assert update.fail_reason is not None
    assert "503 IMG.0061" in update.fail_reason


def test_not_found_past_the_deadline_is_a_failure_not_a_time_out():
    update = decided(PollResult("not_found"), after=CONFIG.job_deadline + UNREACHABLE_GRACE)
    assert update.status is JobStatus.FAIL
    assert update.error_code == JOB_NOT_FOUND_CODE


# === JobPoller classification ==================================================================

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def poll_once(
    handler: Handler, limiter: RateLimiter | None = None
) -> tuple[PollResult, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    async def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return await handler(request)

    poller = JobPoller(
        project_id=PROJECT_ID,
        client_factory=lambda: httpx.AsyncClient(
            transport=httpx.MockTransport(recording), base_url="https://ims.example.com"
        ),
        limiter=limiter or RateLimiter(0),
        default_backoff=30.0,
    )

    async def query() -> PollResult:
        client = poller.new_client()
        try:
            return await poller.query(client, "b" * 32)
        finally:
            await client.aclose()

    return asyncio.run(query()), seen


def answering(
    status: int, body: Any = None, headers: dict[str, str] | None = None, content: bytes = b""
) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        if body is not None:
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, content=content, headers=headers)

    return handler


def raising(error: type[httpx.TransportError]) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    return handler


def ims_error(code: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": f"{code} happened"}}


def test_a_200_job_answer_is_a_report_from_the_project_job_path():
    result, seen = poll_once(
        answering(200, {"status": "RUNNING", "entities": {"process_percent": 0.5}})
    )
    assert result.outcome == "report"
    assert result.report is not None
    assert result.report.status is JobStatus.RUNNING
    assert result.report.process_percent == 0.5
    assert [(r.method, r.url.path) for r in seen] == [("GET", f"/v1/{PROJECT_ID}/jobs/{'b' * 32}")]


@pytest.mark.parametrize(
    "handler",
    [
        answering(200, content=b"<html>gateway</html>"),
        answering(200, ["not", "an", "object"]),
        answering(200, "SUCCESS"),
        answering(200, content=b"null"),
    ],
    ids=["not-json", "json-array", "json-string", "json-null"],
)
def test_a_200_without_a_json_object_is_transient_never_a_report(handler: Handler):
    result, _ = poll_once(handler)
    assert result.outcome == "transient"
    assert result.report is None


def test_a_404_is_not_found_with_imss_code():
    result, _ = poll_once(answering(404, ims_error("IMG.0023")))
    assert result.outcome == "not_found"
    assert result.detail is not None
    assert "IMG.0023" in result.detail


def test_a_404_from_the_gateway_is_a_wrong_endpoint_not_a_lost_job():
    body = {"error_msg": "no such API", "error_code": "APIGW.0101", "request_id": "r"}
    result, _ = poll_once(answering(404, body))
    assert result.outcome == "rejected"


def test_a_query_that_would_wait_past_the_budget_is_not_sent():
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    limiter.pause(60)
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "RUNNING"})

    poller = JobPoller(
        project_id=PROJECT_ID,
        client_factory=lambda: httpx.AsyncClient(
            transport=httpx.MockTransport(handler), base_url="https://ims.test"
        ),
        limiter=limiter,
    )

    async def query() -> PollResult:
        client = poller.new_client()
        try:
            return await poller.query(client, "b" * 32, max_wait=5)
        finally:
            await client.aclose()

    result = asyncio.run(query())
    assert result.outcome == "not_sent"
    assert seen == []


def test_a_429_with_retry_after_is_throttled_and_pauses_every_worker():
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    body = {"error_msg": "throttled", "error_code": "APIGW.0308", "request_id": "r"}
    result, _ = poll_once(answering(429, body, {"Retry-After": "7"}), limiter)
    assert result.outcome == "throttled"
    assert result.retry_after == 7
    assert result.detail is not None
    assert "APIGW.0308" in result.detail
    assert limiter.pauses == 1
    assert limiter.delay_needed() == 7


def test_a_429_without_retry_after_waits_the_default_backoff():
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    result, _ = poll_once(answering(429, content=b""), limiter)
    assert result.outcome == "throttled"
    assert result.retry_after == 30
    assert limiter.delay_needed() == 30


def test_ims_flow_control_img_0060_is_throttled_and_pauses_the_limiter():
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    result, _ = poll_once(answering(400, ims_error("IMG.0060")), limiter)
    assert result.outcome == "throttled"
    assert result.retry_after == 30
    assert limiter.pauses == 1
    assert limiter.delay_needed() == 30


def test_flow_control_with_retry_after_uses_it():
    limiter = RateLimiter(20, clock=FakeClock())
    result, _ = poll_once(answering(400, ims_error("IMG.0060"), {"Retry-After": "3"}), limiter)
    assert (result.outcome, result.retry_after) == ("throttled", 3)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_transient_and_does_not_pause_anyone(status: int):
    limiter = RateLimiter(20, clock=FakeClock())
    result, _ = poll_once(answering(status, ims_error("IMG.0061")), limiter)
    assert result.outcome == "transient"
    assert result.retry_after is None
    assert limiter.pauses == 0


def test_a_503_with_retry_after_is_transient_and_says_when_to_retry():
    result, _ = poll_once(answering(503, content=b"", headers={"Retry-After": "12"}))
    assert (result.outcome, result.retry_after) == ("transient", 12)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.PoolTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
    ],
)
def test_timeouts_and_connection_failures_are_transient(error: type[httpx.TransportError]):
    result, _ = poll_once(raising(error))
    assert result.outcome == "transient"
    assert result.detail == error.__name__


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth(status: int):
    body = {"error_msg": "Incorrect IAM authentication information", "error_code": "APIGW.0301"}
    result, _ = poll_once(answering(status, body))
    assert result.outcome == "auth"
    assert result.detail is not None
    assert result.detail.startswith(str(status))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, ims_error("IMG.0030")),
        (400, ims_error("IMG.0001")),
        (405, None),
        (409, ims_error("IMG.0010")),
        (422, None),
    ],
)
def test_any_other_4xx_is_rejected(status: int, body: Any):
    result, _ = poll_once(answering(status, body, content=b"nope"))
    assert result.outcome == "rejected"
    assert result.retry_after is None


# === run_check end to end against the emulator (both stores) ===================================


class Clock:
    """Epoch seconds the test moves: the emulator's clock and, as ``now``, the ticks'."""

    def __init__(self, start: float = START) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ims(clock: Clock) -> Iterator[ImsEmulator]:
    config = EmulatorConfig(job_seconds=600, max_clock_skew_seconds=ANY_SKEW)
    with ImsEmulator(config, clock=clock) as emulator:
        yield emulator


# conftest's ``state_url`` asks for ``store_kind`` dynamically; naming it parametrizes the test
# over SQLite and PostgreSQL.
BOTH_STORES = pytest.mark.usefixtures("store_kind")


def settings_for(ims: ImsEmulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ims_endpoint": ims.url,
        "access_key": ims.config.ak,
        "secret_key": ims.config.sk,
        "poll_min_interval": 0,
        "poll_max_interval": 0,
    }
    values.update(overrides)
    return make_settings(**values)


def close_ims(deps: Dependencies) -> None:
    if isinstance(deps.ims, HttpImsClient):
        deps.ims._http.close()


@contextmanager
def wired(settings: Settings, store: JobStore) -> Iterator[Dependencies]:
    """Real dependencies over ``store``; the IMS client is closed afterwards (the store is not)."""
    deps = Dependencies(settings=settings, store=store)
    try:
        yield deps
    finally:
        close_ims(deps)


def submit(
    deps: Dependencies,
    count: int = 1,
    *,
    now: Callable[[], datetime],
    name: str = "img",
    first_poll_after: timedelta = FIRST_POLL,
) -> list[Job]:
    """Submit ``count`` jobs through the create use case and the real IMS client, first due
    ``first_poll_after`` later (the create function passes WHOLEIMAGE_POLL_MIN_INTERVAL)."""
    return [
        submit_create(
            CreateImageRequest(name=f"{name}-{index}", instance_id=str(uuid.uuid4())),
            idempotency_key=None,
            requested_by="tests",
            trace=None,
            ims=ims_client(deps),
            store=deps.store,
            first_poll_after=first_poll_after,
            now=now,
        ).job
        for index in range(count)
    ]


def tick(
    deps: Dependencies, clock: Clock, config: CheckConfig | None = None, **kwargs: Any
) -> CheckSummary:
    return run_check_sync(
        store=deps.store,
        poller=poller_for(deps),
        config=config or check_config(deps.settings),
        now=clock.now,
        **kwargs,
    )


def job_queries(ims: ImsEmulator) -> Counter[str]:
    """IMS job queries received, by job id."""
    return Counter(r.path.rsplit("/", 1)[-1] for r in ims.requests if r.route == "job")


def recorded(store: JobStore, job: Job) -> Job:
    found = store.get(job.request_id)
    assert found is not None
    return found


@pytest.mark.slow
@BOTH_STORES
def test_a_job_is_followed_through_init_and_running_to_success_with_its_image_id(store, ims, clock):
    with wired(settings_for(ims), store) as deps:
        [job] = submit(deps, now=clock.now)
        assert job.ims_job_id is not None
        clock.advance(20)

        first = tick(deps, clock)
        assert (first.polled, dict(first.ended), first.still_outstanding) == (1, {}, 1)
        assert recorded(store, job).status is JobStatus.INIT
        assert recorded(store, job).process_percent == 0.0

        clock.advance(280)
        tick(deps, clock)
        running = recorded(store, job)
        assert running.status is JobStatus.RUNNING
        assert running.process_percent is not None
        assert 0 < running.process_percent < 1

        clock.advance(300)
        last = tick(deps, clock)
        assert (last.polled, dict(last.ended), last.still_outstanding) == (1, {"SUCCESS": 1}, 0)
        assert last.next_due_at is None
        done = recorded(store, job)
        assert done.status is JobStatus.SUCCESS
        assert done.image_id == ims.jobs[job.ims_job_id].image_id
        assert done.process_percent == 1.0
        assert done.ended_at == clock.now()
        assert (done.error_code, done.fail_reason, done.next_poll_at) == (None, None, None)
        assert done.poll_attempts == 3

        clock.advance(60)
        assert tick(deps, clock).polled == 0
    assert job_queries(ims) == {job.ims_job_id: 3}


@pytest.mark.slow
@BOTH_STORES
def test_a_failed_job_records_imss_error_code_and_fail_reason(store, ims, clock):
    ims.config.fail_sources = {"doomed-0"}
    with wired(settings_for(ims), store) as deps:
        [doomed] = submit(deps, now=clock.now, name="doomed")
        [finished] = submit(deps, now=clock.now, name="finished")
        assert finished.ims_job_id is not None
        clock.advance(20)
        ims.finish_job(
            finished.ims_job_id,
            "FAIL",
            error_code="IMG.0137",
            fail_reason="Failed to obtain the ECS information.",
        )
        clock.advance(600)

        summary = tick(deps, clock)

    assert dict(summary.ended) == {"FAIL": 2}
    assert dict(summary.errors) == {}
    by_emulator = recorded(store, doomed)
    assert by_emulator.status is JobStatus.FAIL
    assert by_emulator.error_code == ims.config.fail_error_code == "IMG.0014"
    assert by_emulator.fail_reason == ims.config.fail_reason
    assert by_emulator.image_id is None
    by_admin = recorded(store, finished)
    assert by_admin.status is JobStatus.FAIL
    assert by_admin.error_code == "IMG.0137"
    assert by_admin.fail_reason == "Failed to obtain the ECS information."
    assert by_admin.ended_at == clock.now()


@pytest.mark.slow
@BOTH_STORES
def test_a_failed_job_whose_reason_only_its_entities_and_sub_jobs_carry_records_that_reason(
    store, ims, clock
):
    # The job model has four places for an error (docs/ims-api.md §2.1); only the top level
    # was read, so such a FAIL was recorded without a word of why.
    ims.config.fail_sources = {"doomed-0"}
    ims.config.job_overrides = {
        "error_code": None,
        "fail_reason": None,
        "entities": {
            "error_code": "IMG.0126",
            "error": "The ECS status does not allow a full-ECS image.",
            "sub_jobs_result": [{"job_id": "sub-1", "status": "FAIL", "fail_reason": "stopped"}],
        },
    }
    with wired(settings_for(ims), store) as deps:
        [doomed] = submit(deps, now=clock.now, name="doomed")
        clock.advance(600)

        assert dict(tick(deps, clock).ended) == {"FAIL": 1}

    ended = recorded(store, doomed)
    assert ended.error_code == "IMG.0126"
    assert ended.fail_reason == (
        "The ECS status does not allow a full-ECS image. | sub-job sub-1: stopped"
    )


@pytest.mark.slow
@BOTH_STORES
def test_the_summary_counts_what_the_tick_did(store, ims, clock):
    settings = settings_for(ims, poll_min_interval=15, poll_max_interval=300, check_concurrency=1)
    with wired(settings, store) as deps:
        # Submitted one second apart, so one worker polls them in this order.
        [unlucky] = submit(deps, now=clock.now, name="unlucky")
        clock.advance(1)
        [succeeds] = submit(deps, now=clock.now, name="succeeds")
        clock.advance(1)
        [fails] = submit(deps, now=clock.now, name="fails")
        clock.advance(1)
        [runs] = submit(deps, now=clock.now, name="runs")
        clock.advance(17)
        [later] = submit(deps, now=clock.now, name="later")
        assert succeeds.ims_job_id is not None
        assert fails.ims_job_id is not None
        ims.finish_job(succeeds.ims_job_id)
        ims.finish_job(fails.ims_job_id, "FAIL")
        ims.inject("job", Fault(status=503))

        summary = tick(deps, clock)

    assert summary.polled == 4
    assert dict(summary.ended) == {"SUCCESS": 1, "FAIL": 1}
    assert dict(summary.errors) == {"transient": 1}
    assert summary.still_outstanding == 3
    assert (summary.budget_exhausted, summary.aborted, summary.lost_leases) == (False, None, 0)
    assert job_queries(ims) == {
        job.ims_job_id: 1 for job in (unlucky, succeeds, fails, runs) if job.ims_job_id
    }
    assert recorded(store, unlucky).status is JobStatus.SUBMITTED
    assert recorded(store, runs).status is JobStatus.INIT
    due = [recorded(store, job).next_poll_at for job in (unlucky, runs, later)]
    assert summary.next_due_at is not None
    assert summary.next_due_at == min(d for d in due if d is not None)
    assert summary.next_due_at > clock.now()
    answer = json.loads(json.dumps(summary.as_json()))
    assert answer["ended"] == {"SUCCESS": 1, "FAIL": 1}
    assert answer["errors"] == {"transient": 1}
    assert answer["next_due_at"] == summary.next_due_at.isoformat()
    assert answer["owner"] == summary.owner
    assert answer["owner"].startswith("check-")


@pytest.mark.slow
@BOTH_STORES
def test_only_due_jobs_are_polled(store, ims, clock):
    with wired(settings_for(ims), store) as deps:
        early = submit(deps, 3, now=clock.now, name="early")
        clock.advance(100)
        late = submit(deps, 2, now=clock.now, name="late")
        clock.advance(FIRST_POLL.total_seconds() - 1)

        first = tick(deps, clock)
        assert first.polled == 3
        assert set(job_queries(ims)) == {job.ims_job_id for job in early}

        clock.advance(1)
        second = tick(deps, clock)
    assert second.polled == 5
    assert job_queries(ims) == {
        **{job.ims_job_id: 2 for job in early},
        **{job.ims_job_id: 1 for job in late},
    }


@pytest.mark.slow
@BOTH_STORES
def test_one_tick_queries_a_job_at_most_once_even_when_it_is_due_again_at_once(store, ims, clock):
    # min = max = 0 makes every outstanding job due at every tick, not many times in one.
    settings = settings_for(ims, check_concurrency=2)
    with wired(settings, store) as deps:
        jobs = submit(deps, 20, now=clock.now)
        clock.advance(20)
        config = replace(check_config(settings), batch_size=4, time_budget=10)

        summary = tick(deps, clock, config)

    assert summary.polled == 20
    assert summary.budget_exhausted is False
    assert job_queries(ims) == {job.ims_job_id: 1 for job in jobs}
    assert all(recorded(store, job).poll_attempts == 1 for job in jobs)
    assert all(recorded(store, job).status is JobStatus.INIT for job in jobs)


@pytest.mark.slow
@BOTH_STORES
def test_a_job_past_its_deadline_is_queried_once_more_and_timed_out(store, ims, clock):
    ims.config.job_seconds = 10 * 3600
    with wired(settings_for(ims, job_deadline=3600), store) as deps:
        [job] = submit(deps, now=clock.now)
        clock.advance(20)
        tick(deps, clock)
        clock.advance(3600)

        summary = tick(deps, clock)

    assert dict(summary.ended) == {"TIMED_OUT": 1}
    assert job_queries(ims) == {job.ims_job_id: 2}
    timed_out = recorded(store, job)
    assert timed_out.status is JobStatus.TIMED_OUT
    assert timed_out.error_code == TIMED_OUT_CODE
    assert timed_out.fail_reason is not None
    assert "RUNNING" in timed_out.fail_reason
    assert timed_out.ended_at == clock.now()


@pytest.mark.slow
@BOTH_STORES
def test_throttling_is_counted_and_reschedules_jobs_without_failing_them(store, ims, clock):
    ims.config.job_seconds = 0
    with wired(settings_for(ims), store) as deps:
        jobs = submit(deps, 3, now=clock.now)
        clock.advance(20)
        ims.inject(
            "job", Fault.throttled(retry_after=120), Fault.ims_error("IMG.0060", "flow control")
        )

        summary = tick(deps, clock)
        assert poller_for(deps).limiter.pauses >= 1

    assert summary.polled == 3
    assert dict(summary.errors) == {"throttled": 2}
    assert dict(summary.ended) == {"SUCCESS": 1}
    assert summary.still_outstanding == 2
    # Faults go to the queries in the order they arrived.
    arrived = [r.path.rsplit("/", 1)[-1] for r in ims.requests if r.route == "job"]
    by_ims_id = {job.ims_job_id: job for job in jobs}
    throttled, flow_controlled = (recorded(store, by_ims_id[i]) for i in arrived[:2])
    for job in (throttled, flow_controlled):
        assert job.status is JobStatus.SUBMITTED
        assert (job.ended_at, job.error_code, job.fail_reason) == (None, None, None)
        assert job.poll_attempts == 1
    assert throttled.next_poll_at is not None
    assert flow_controlled.next_poll_at is not None
    assert throttled.next_poll_at >= clock.now() + timedelta(seconds=120)
    assert flow_controlled.next_poll_at >= clock.now() + timedelta(seconds=30)

    clock.advance(121)
    with wired(settings_for(ims), store) as fresh:  # a new limiter: the old one is paused
        after = tick(fresh, clock)
    assert dict(after.ended) == {"SUCCESS": 2}
    assert after.still_outstanding == 0


@pytest.mark.slow
@BOTH_STORES
def test_an_emulator_speaking_the_old_time_format_is_followed_to_the_end(store, ims, clock):
    ims.config.old_time_format = True
    with wired(settings_for(ims), store) as deps:
        [job] = submit(deps, now=clock.now)
        assert job.ims_job_id is not None
        old_format = re.compile(r"^\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}:\d{3}$")
        assert old_format.match(ims.job_view(job.ims_job_id)["begin_time"])
        statuses = []
        for seconds in (20, 280, 300):
            clock.advance(seconds)
            tick(deps, clock)
            statuses.append(recorded(store, job).status)
    assert statuses == [JobStatus.INIT, JobStatus.RUNNING, JobStatus.SUCCESS]
    assert old_format.match(ims.job_view(job.ims_job_id)["end_time"])
    assert recorded(store, job).image_id == ims.jobs[job.ims_job_id].image_id


@pytest.mark.slow
@BOTH_STORES
def test_wrong_credentials_abort_the_tick_and_fail_no_job(store, ims, clock):
    with wired(settings_for(ims), store) as good:
        jobs = submit(good, 5, now=clock.now)
        clock.advance(20)
        bad_settings = settings_for(ims, secret_key="wrong-secret-key", check_concurrency=2)
        with wired(bad_settings, store) as bad:
            summary = tick(bad, clock)

        assert summary.aborted is not None
        assert "credentials" in summary.aborted
        assert "APIGW.0301" in summary.aborted
        assert "wrong-secret-key" not in json.dumps(summary.as_json())
        assert 1 <= summary.polled <= 2
        assert dict(summary.errors) == {"auth": summary.polled}
        assert dict(summary.ended) == {}
        assert summary.still_outstanding == 5
        assert ims.calls["job"] == summary.polled
        for job in jobs:
            kept = recorded(store, job)
            assert kept.status is JobStatus.SUBMITTED
            assert (kept.ended_at, kept.error_code) == (None, None)

        # Nothing stays leased: a tick with the right key takes every job at once.
        assert tick(good, clock).polled == 5


@pytest.mark.slow
@BOTH_STORES
def test_a_poller_that_cannot_build_its_clients_aborts_the_tick_and_loses_nothing(
    store, ims, clock
):
    with wired(settings_for(ims), store) as deps:
        jobs = submit(deps, 3, now=clock.now)
        clock.advance(20)

        def no_client() -> httpx.AsyncClient:
            raise RuntimeError("IAM is down")

        broken = JobPoller(
            project_id=ims.config.project_id, client_factory=no_client, limiter=RateLimiter(0)
        )
        summary = run_check_sync(
            store=store,
            poller=broken,
            config=check_config(deps.settings),
            now=clock.now,
        )
        assert summary.aborted is not None
        assert "IAM is down" in summary.aborted
        assert summary.polled == 0
        # Every claimed job was handed back unleased and due: the next good tick takes them all.
        assert tick(deps, clock).polled == 3
        assert all(recorded(store, job).poll_attempts == 1 for job in jobs)


class SpyStore:
    """A ``JobStore`` that records what a tick claimed and recorded, passing everything on."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.claimed: list[Job] = []
        self.recorded: list[PollUpdate] = []

    def reserve(self, job: Job) -> Any:
        return self.inner.reserve(job)

    def mark_submitted(
        self, request_id: str, *, ims_job_id: str, now: datetime, next_poll_at: datetime
    ) -> Job:
        return self.inner.mark_submitted(
            request_id, ims_job_id=ims_job_id, now=now, next_poll_at=next_poll_at
        )

    def mark_uncertain(self, request_id: str, *, reason: str, now: datetime) -> Job:
        return self.inner.mark_uncertain(request_id, reason=reason, now=now)

    def discard(self, request_id: str) -> None:
        self.inner.discard(request_id)

    def get(self, request_id: str) -> Job | None:
        return self.inner.get(request_id)

    def get_by_ims_job_id(self, ims_job_id: str) -> Job | None:
        return self.inner.get_by_ims_job_id(ims_job_id)

    def claim_due(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Job]:
        jobs = self.inner.claim_due(now=now, owner=owner, lease_until=lease_until, limit=limit)
        self.claimed.extend(jobs)
        return jobs

    def record_polls(
        self, updates: list[PollUpdate], *, owner: str, outbox=None
    ) -> list[PollUpdate]:
        applied = self.inner.record_polls(updates, owner=owner, outbox=outbox)
        self.recorded.extend(applied)
        return applied

    def count_outstanding(self) -> int:
        return self.inner.count_outstanding()

    def count_unresolved(self) -> int:
        return self.inner.count_unresolved()

    def claim_unresolved(self, **kwargs: Any) -> list[Job]:
        return self.inner.claim_unresolved(**kwargs)

    def next_due_at(self) -> datetime | None:
        return self.inner.next_due_at()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
@BOTH_STORES
def test_the_time_budget_stops_claiming_and_hands_back_what_was_not_started(store, ims, clock):
    total = 30
    ims.config.job_seconds = 0
    settings = settings_for(ims, ims_rate_limit=0)
    with wired(settings, store) as deps:
        jobs = submit(deps, total, now=clock.now)
        first_due = {job.request_id: job.next_poll_at for job in jobs}
        clock.advance(20)
        ims.config.latency_ms = 50
        spy = SpyStore(store)
        config = replace(check_config(settings), time_budget=0.2, concurrency=2, batch_size=8)

        first = run_check_sync(store=spy, poller=poller_for(deps), config=config, now=clock.now)

        assert first.budget_exhausted is True
        assert 0 < first.polled < total
        assert dict(first.ended) == {"SUCCESS": first.polled}
        assert first.still_outstanding == total - first.polled
        # It stopped claiming: some jobs were never claimed at all.
        assert len(spy.claimed) < total
        # What it claimed but did not start went back unqueried.
        handed_back = {u.request_id for u in spy.recorded if not u.queried}
        assert handed_back
        assert handed_back <= {job.request_id for job in spy.claimed}
        queried_ims_ids = set(job_queries(ims))
        for job in jobs:
            kept = recorded(store, job)
            if kept.status is JobStatus.SUCCESS:
                assert kept.poll_attempts == 1
                continue
            assert job.ims_job_id not in queried_ims_ids
            assert kept.status is JobStatus.SUBMITTED
            assert kept.poll_attempts == 0
            assert kept.next_poll_at == first_due[job.request_id]
            assert kept.next_poll_at is not None
            assert kept.next_poll_at <= clock.now()

        ims.config.latency_ms = 0
        second = tick(deps, clock, replace(config, time_budget=60))

    assert second.budget_exhausted is False
    assert second.polled == total - first.polled
    assert dict(second.ended) == {"SUCCESS": total - first.polled}
    assert second.still_outstanding == 0
    assert job_queries(ims) == {job.ims_job_id: 1 for job in jobs}


# === overlapping ticks: threads, processes, a killed process (both stores) =====================

OVERLAP_JOBS = 300
OVERLAP_CONFIG = CheckConfig(
    backoff=PollBackoff(0, 0),
    time_budget=WAIT_SECONDS,
    concurrency=8,
    batch_size=20,
    lease=timedelta(minutes=5),
)


def overlap_settings(ims_url: str) -> Settings:
    return make_settings(
        ims_endpoint=ims_url,
        access_key=AK,
        secret_key=SK,
        poll_min_interval=0,
        poll_max_interval=0,
        ims_rate_limit=0,
    )


def due_jobs(store: JobStore, ims: ImsEmulator, clock: Clock, count: int) -> list[Job]:
    """``count`` jobs due now, each ending at its first query."""
    ims.config.job_seconds = 0
    with wired(settings_for(ims), store) as deps:
        jobs = submit(deps, count, now=clock.now)
    clock.advance(20)
    return jobs


def assert_each_job_queried_and_ended_once(
    ims: ImsEmulator, store: JobStore, jobs: list[Job], summaries: list[dict[str, Any]]
) -> None:
    assert job_queries(ims) == {job.ims_job_id: 1 for job in jobs}
    assert sum(summary["polled"] for summary in summaries) == len(jobs)
    assert sum(summary["ended"].get("SUCCESS", 0) for summary in summaries) == len(jobs)
    assert sum(sum(summary["ended"].values()) for summary in summaries) == len(jobs)
    assert sum(summary["lost_leases"] for summary in summaries) == 0
    assert store.count_outstanding() == 0
    for job in jobs:
        done = recorded(store, job)
        assert done.ims_job_id is not None
        assert done.status is JobStatus.SUCCESS
        assert done.image_id == ims.jobs[done.ims_job_id].image_id
        assert done.poll_attempts == 1


@pytest.mark.slow
@BOTH_STORES
def test_four_overlapping_ticks_in_threads_query_and_end_every_job_exactly_once(
    state_url, store, ims, clock
):
    jobs = due_jobs(store, ims, clock, OVERLAP_JOBS)
    ims.config.latency_ms = 20
    threads = 4
    barrier = threading.Barrier(threads)

    def one_tick(index: int) -> dict[str, Any]:
        own = open_store(state_url)
        try:
            with wired(overlap_settings(ims.url), own) as deps:
                poller = poller_for(deps)
                barrier.wait(timeout=WAIT_SECONDS)
                summary = run_check_sync(
                    store=own,
                    poller=poller,
                    config=OVERLAP_CONFIG,
                    now=clock.now,
                    owner=f"thread-{index}",
                )
                return summary.as_json()
        finally:
            own.close()

    with ThreadPoolExecutor(threads) as pool:
        summaries = list(pool.map(one_tick, range(threads)))

    assert_each_job_queried_and_ended_once(ims, store, jobs, summaries)
    assert sum(1 for summary in summaries if summary["polled"]) >= 2  # they did overlap


def child_tick(
    ims_url: str,
    state_url: str,
    now_epoch: float,
    owner: str,
    barrier: Barrier,
    results: Queue[dict[str, Any]],
) -> None:
    """One tick in a child process, started together with the others by ``barrier``."""
    store = open_store(state_url)
    try:
        poller = poller_for(Dependencies(settings=overlap_settings(ims_url), store=store))
        barrier.wait(timeout=WAIT_SECONDS)
        summary = run_check_sync(
            store=store,
            poller=poller,
            config=OVERLAP_CONFIG,
            now=lambda: datetime.fromtimestamp(now_epoch, UTC),
            owner=owner,
        )
        results.put(summary.as_json())
    except BaseException as exc:
        results.put({"crashed": repr(exc)})
    finally:
        store.close()


def child_tick_until_killed(ims_url: str, state_url: str, now_epoch: float, lease: float) -> None:
    """A tick whose queries hang until the parent kills this process."""
    store = open_store(state_url)
    poller = poller_for(Dependencies(settings=overlap_settings(ims_url), store=store))
    run_check_sync(
        store=store,
        poller=poller,
        config=replace(OVERLAP_CONFIG, lease=timedelta(seconds=lease)),
        now=lambda: datetime.fromtimestamp(now_epoch, UTC),
        owner="doomed",
    )


@pytest.mark.slow
@BOTH_STORES
def test_three_overlapping_ticks_in_processes_query_and_end_every_job_exactly_once(
    spawn, state_url, store, ims, clock
):
    jobs = due_jobs(store, ims, clock, OVERLAP_JOBS)
    ims.config.latency_ms = 20
    processes = 3
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results: Queue[dict[str, Any]] = context.Queue()
    children = [
        spawn(child_tick, ims.url, state_url, clock(), f"process-{index}", barrier, results)
        for index in range(processes)
    ]

    summaries = [results.get(timeout=WAIT_SECONDS) for _ in children]
    for child in children:
        child.join(timeout=WAIT_SECONDS)
        assert child.exitcode == 0
    results.close()
    results.join_thread()

    assert not [summary for summary in summaries if "crashed" in summary], summaries
    assert len({summary["owner"] for summary in summaries}) == processes
    assert_each_job_queried_and_ended_once(ims, store, jobs, summaries)


@pytest.mark.slow
@BOTH_STORES
def test_a_tick_killed_mid_poll_loses_nothing_and_its_jobs_wait_for_the_lease_to_expire(
    spawn, state_url, store, ims, clock
):
    count = 6
    lease = 300.0
    jobs = due_jobs(store, ims, clock, count)
    ims.inject("job", *[Fault(delay=WAIT_SECONDS)] * count)

    child = spawn(child_tick_until_killed, ims.url, state_url, clock(), lease)
    give_up = time.monotonic() + WAIT_SECONDS
    while ims.calls.get("job", 0) < count:  # every poll in flight, held by the emulator
        assert child.is_alive()
        assert time.monotonic() < give_up, ims.calls
        time.sleep(0.01)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=WAIT_SECONDS)
    assert child.exitcode == -signal.SIGKILL

    # Nothing lost, nothing ended: the claimed jobs are outstanding as before.
    assert store.count_outstanding() == count
    for job in jobs:
        kept = recorded(store, job)
        assert kept.status is JobStatus.SUBMITTED
        assert (kept.ended_at, kept.poll_attempts) == (None, 0)

    with wired(settings_for(ims), store) as deps:
        # The dead tick's leases live on: a tick now takes none of its jobs.
        now = tick(deps, clock, OVERLAP_CONFIG)
        assert (now.polled, now.still_outstanding) == (0, count)
        assert ims.calls["job"] == count

        # Once they expire, the next tick takes and finishes them.
        clock.advance(lease + 1)
        later = tick(deps, clock, OVERLAP_CONFIG)

    assert later.polled == count
    assert dict(later.ended) == {"SUCCESS": count}
    assert later.still_outstanding == 0
    assert job_queries(ims) == {job.ims_job_id: 2 for job in jobs}


# === the served check function =================================================================


@pytest.fixture
def live_ims() -> Iterator[ImsEmulator]:
    """An emulator on real time (functions-framework's ``check`` reads the real clock)."""
    with ImsEmulator(EmulatorConfig(job_seconds=0)) as emulator:
        yield emulator


def a_minute_ago() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=1)


@pytest.fixture
def check_app(
    tmp_path: Path, live_ims: ImsEmulator
) -> Iterator[Callable[..., tuple[FlaskClient, Dependencies]]]:
    """Make the ``check`` app with real dependencies (SQLite, the emulator) and settings."""
    made: list[Dependencies] = []

    def make(**overrides: Any) -> tuple[FlaskClient, Dependencies]:
        deps = Dependencies(
            settings=settings_for(live_ims, **overrides),
            store=SqliteJobStore(str(tmp_path / "check.db")),
        )
        made.append(deps)
        set_dependencies(deps)
        return create_app("check", MAIN).test_client(), deps

    yield make
    set_dependencies(None)
    for deps in made:
        close_ims(deps)
        deps.store.close()


def pubsub_push_body() -> bytes:
    message = {
        "data": base64.b64encode(b"tick").decode(),
        "messageId": "1234567890",
        "publishTime": "2025-03-14T09:27:00.000Z",
    }
    return json.dumps(
        {"message": message, "subscription": "projects/p/subscriptions/wholeimage-check"}
    ).encode()


def tick_event() -> CloudEvent:
    return CloudEvent(
        {"type": "google.cloud.scheduler.job.v1.executed", "source": "//scheduler/check"},
        {"tick": True},
    )


TRIGGERS: dict[str, tuple[str, bytes, dict[str, str]]] = {
    "cloud-scheduler-empty-body": ("POST", b"", SCHEDULER_HEADERS),
    "empty-json-body": ("POST", b"", {"Content-Type": "application/json"}),
    "pubsub-push": ("POST", pubsub_push_body(), {"Content-Type": "application/json"}),
    "get": ("GET", b"", {}),
}


def cloudevent_trigger(mode: Callable[[CloudEvent], tuple[dict[str, str], bytes]]) -> Any:
    headers, body = mode(tick_event())
    return ("POST", body, headers)


TRIGGERS["cloudevent-structured"] = cloudevent_trigger(to_structured)
TRIGGERS["cloudevent-binary"] = cloudevent_trigger(to_binary)


@pytest.mark.slow
@pytest.mark.parametrize("trigger", sorted(TRIGGERS))
def test_any_trigger_runs_one_tick_and_answers_its_json_summary(check_app, live_ims, trigger):
    client, deps = check_app()
    jobs = submit(deps, 3, now=a_minute_ago)
    method, body, headers = TRIGGERS[trigger]

    response = client.open("/", method=method, data=body, headers=headers)

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    answer = response.get_json()
    assert answer["polled"] == 3
    assert answer["ended"] == {"SUCCESS": 3}
    assert answer["errors"] == {}
    assert answer["still_outstanding"] == 0
    assert answer["next_due_at"] is None
    assert (answer["budget_exhausted"], answer["aborted"]) == (False, None)
    assert answer["owner"].startswith("check-")
    assert all(recorded(deps.store, job).status is JobStatus.SUCCESS for job in jobs)


def test_a_tick_with_nothing_due_answers_an_empty_summary(check_app, live_ims):
    client, _ = check_app()
    response = client.post("/", headers=SCHEDULER_HEADERS)
    assert response.status_code == 200
    assert response.get_json()["polled"] == 0
    assert live_ims.calls.get("job", 0) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-Api-Token": "wrong"}, {"Authorization": API_TOKEN}],
    ids=["none", "wrong-bearer", "wrong-x-api-token", "no-scheme"],
)
def test_with_an_api_token_configured_a_call_without_it_is_401_and_polls_nothing(
    check_app, live_ims, headers
):
    client, deps = check_app(api_token=API_TOKEN)
    [job] = submit(deps, now=a_minute_ago)

    response = client.post("/", headers={**SCHEDULER_HEADERS, **headers})

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert live_ims.calls.get("job", 0) == 0
    assert recorded(deps.store, job).status is JobStatus.SUBMITTED


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [{"X-Api-Token": API_TOKEN}, {"Authorization": f"Bearer {API_TOKEN}"}],
    ids=["x-api-token", "bearer"],
)
def test_with_an_api_token_configured_the_token_is_accepted(check_app, live_ims, headers):
    client, deps = check_app(api_token=API_TOKEN)
    submit(deps, now=a_minute_ago)
    response = client.post("/", headers={**SCHEDULER_HEADERS, **headers})
    assert response.status_code == 200
    assert response.get_json()["ended"] == {"SUCCESS": 1}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_and_poll_nothing(check_app, live_ims, method):
    client, deps = check_app()
    submit(deps, now=a_minute_ago)
    response = client.open("/", method=method, data=b"{}")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST, GET"
    assert live_ims.calls.get("job", 0) == 0


@pytest.mark.slow
def test_the_check_function_served_by_functions_framework_polls_due_jobs(live_ims, tmp_path):
    env = function_env(
        live_ims,
        tmp_path,
        WHOLEIMAGE_API_TOKEN=API_TOKEN,  # the readiness probe's GET is refused: no early tick
        WHOLEIMAGE_POLL_MIN_INTERVAL="0",
        WHOLEIMAGE_POLL_MAX_INTERVAL="0",
    )
    served = serve("check", env, tmp_path / "check.log")
    store = open_store(env["WHOLEIMAGE_STATE_URL"])
    try:
        with wired(settings_for(live_ims), store) as deps:
            jobs = submit(deps, 3, now=a_minute_ago)
        response = httpx.post(
            served.url, headers={**SCHEDULER_HEADERS, "X-Api-Token": API_TOKEN}, timeout=30
        )
        assert response.status_code == 200, served.log()
        answer = response.json()
        assert answer["polled"] == 3
        assert answer["ended"] == {"SUCCESS": 3}
        assert answer["still_outstanding"] == 0
        for job in jobs:
            done = recorded(store, job)
            assert done.ims_job_id is not None
            assert done.status is JobStatus.SUCCESS
            assert done.image_id == live_ims.jobs[done.ims_job_id].image_id
        assert job_queries(live_ims) == {job.ims_job_id: 1 for job in jobs}
    finally:
        served.process.terminate()
        served.process.wait(timeout=10)
        store.close()
    assert "check tick done" in served.log()
    assert "wholeimage-check" in served.log()  # the scheduler job, logged with the call


@pytest.mark.slow
def test_the_keep_alive_poll_client_maps_transport_failures_to_httpx_errors(ims):
    # Given a port nobody listens on, and an emulator that answers too slowly
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    ims.inject("job", Fault(delay=2.0))

    async def attempt(base_url: str, timeout: float) -> BaseException | httpx.Response:
        client = KeepAlivePollClient(
            base_url=base_url,
            auth=StaticTokenAuth("t"),
            timeout=timeout,
            ssl_context=None,
            user_agent="test",
        )
        try:
            return await client.get(f"/v1/{ims.config.project_id}/jobs/{'c' * 32}")
        except httpx.TransportError as exc:
            return exc
        finally:
            await client.aclose()

    # Then each failure is an httpx error the poller classifies as transient
    assert isinstance(
        asyncio.run(attempt(f"http://127.0.0.1:{closed_port}", 2.0)), httpx.ConnectError
    )
    assert isinstance(asyncio.run(attempt(ims.url, 0.3)), httpx.TimeoutException)
    answer = asyncio.run(attempt(ims.url, 5.0))
    assert isinstance(answer, httpx.Response)
    assert answer.status_code == 401  # the emulator answered: it knows no token "t"


class ScriptedServer:
    """A raw HTTP/1.1 server: each connection answers ``per_connection`` requests, then closes."""

    def __init__(
        self, per_connection: int, *, chunked: bool = False, close_header: bool = False
    ) -> None:
        self.per_connection = per_connection
        self.chunked = chunked
        self.close_header = close_header
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        for _ in range(self.per_connection):
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            body = b'{"status": "RUNNING"}'
            if self.chunked:
                answer = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + f"{len(body):x}\r\n".encode()
                    + body
                    + b"\r\n0\r\n\r\n"
                )
            else:
                extra = b"Connection: close\r\n" if self.close_header else b""
                answer = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + extra
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            writer.write(answer)
            await writer.drain()
        writer.close()


def query_through(server: ScriptedServer, count: int) -> list[int]:
    async def run() -> list[int]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        client = KeepAlivePollClient(
            base_url=f"http://127.0.0.1:{port}",
            auth=StaticTokenAuth("t"),
            timeout=5,
            ssl_context=None,
            user_agent="test",
        )
        statuses = []
        try:
            for index in range(count):
                statuses.append((await client.get(f"/v1/p/jobs/{index}")).status_code)
                await asyncio.sleep(0.01)  # let a closing server's FIN arrive first
        finally:
            await client.aclose()
            listener.close()
            await listener.wait_closed()
        return statuses

    return asyncio.run(run())


def test_the_keep_alive_poll_client_reuses_one_connection():
    server = ScriptedServer(per_connection=5)
    assert query_through(server, 5) == [200] * 5
    assert server.connections == 1
    assert all(
        b"Host: 127.0.0.1:" in head and b"X-Auth-Token: t" in head for head in server.requests
    )


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_query_sent_again():
    server = ScriptedServer(per_connection=2)
    assert query_through(server, 5) == [200] * 5
    assert server.connections == 3
    assert len(server.requests) == 5  # every query answered once: none lost, none doubled


def test_chunked_answers_and_connection_close_are_understood():
    assert query_through(ScriptedServer(per_connection=3, chunked=True), 3) == [200] * 3
    closing = ScriptedServer(per_connection=1, close_header=True)
    assert query_through(closing, 3) == [200] * 3
    assert closing.connections == 3
