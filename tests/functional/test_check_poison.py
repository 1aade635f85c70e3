"""One bad row never stops the rest: a job whose recorded IMS job id is not a plain token ends
with its own code and is never sent (no broken signature, no signed request to another path), and
a poll that raises for one job reschedules that job while every other job of the tick goes on.
Against the IMS emulator on both stores."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.functional.test_check import (
    ANY_SKEW,
    BOTH_STORES,
    FIRST_POLL,
    Clock,
    recorded,
    settings_for,
    submit,
    tick,
    wired,
)
from wholeimage.bootstrap import Dependencies
from wholeimage.check import UNPOLLABLE_CODE, run_check_sync
from wholeimage.httputil import RateLimiter
from wholeimage.ims.poller import JobPoller, PollClient, PollResult
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.service.tick import check_config, poller_for

# Ids IMS must never have given us, each of which broke a tick before (issue 9): a space, a NUL,
# non-ASCII, a query string, a path of its own, a line break, a percent sign, dot segments.
POISONED_IDS = [
    "has space",
    "nul\x00byte",
    "caf\u00e9",
    "a?b=c",
    "../../v3/auth/tokens",
    "line\r\nbreak",
    "100%",
    "..",
    "",
]
# PostgreSQL refuses a NUL in text, so a job with one cannot even be recorded there; the poller
# itself never sends one (the last test).
STORABLE_POISONED_IDS = [ims_job_id for ims_job_id in POISONED_IDS if "\x00" not in ims_job_id]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ims(clock: Clock) -> Iterator[ImsEmulator]:
    with ImsEmulator(
        EmulatorConfig(job_seconds=1, max_clock_skew_seconds=ANY_SKEW), clock=clock
    ) as emulator:
        yield emulator


def record_with_id(deps: Dependencies, ims_job_id: str, clock: Clock, index: int) -> Job:
    """A job as create records it, but with ``ims_job_id`` as IMS's job id."""
    now = clock.now()
    request = CreateImageRequest(
        name=f"poison-{index}", instance_id=f"00000000-0000-4000-8000-{index:012d}"
    )
    job = Job(
        request_id=f"{index:032x}",
        idempotency_key=None,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="tests",
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=JobStatus.SUBMITTING,
        created_at=now,
        updated_at=now,
    )
    deps.store.reserve(job)
    return deps.store.mark_submitted(
        job.request_id, ims_job_id=ims_job_id, now=now, next_poll_at=now
    )


@BOTH_STORES
def test_poisoned_job_ids_end_with_their_own_code_and_every_other_job_ends_too(store, ims, clock):
    with wired(settings_for(ims), store) as deps:
        good = submit(deps, 5, now=clock.now)
        poisoned = [
            record_with_id(deps, ims_job_id, clock, index)
            for index, ims_job_id in enumerate(STORABLE_POISONED_IDS, start=1)
        ]
        clock.advance(FIRST_POLL.total_seconds() + 5)

        summary = tick(deps, clock)

        assert summary.aborted is None
        for job in good:
            assert recorded(store, job).status is JobStatus.SUCCESS
        for job in poisoned:
            ended = recorded(store, job)
            assert ended.status is JobStatus.FAIL
            assert ended.error_code == UNPOLLABLE_CODE
        assert summary.ended == {"SUCCESS": 5, "FAIL": len(STORABLE_POISONED_IDS)}
        # Nothing but the good jobs' own queries reached IMS: no other path was ever signed.
        project = ims.config.project_id
        paths = {request.path for request in ims.requests if request.method == "GET"}
        assert paths == {f"/v1/{project}/jobs/{job.ims_job_id}" for job in good}


class RaisingFor:
    """A poller that raises for one job id, as a bug in reading one answer would."""

    def __init__(self, real: JobPoller, broken_job_id: str) -> None:
        self.real = real
        self.broken_job_id = broken_job_id
        self.limiter = real.limiter

    def new_client(self) -> PollClient:
        return self.real.new_client()

    async def query(self, client: PollClient, job_id: str, **kwargs: Any) -> PollResult:
        if job_id == self.broken_job_id:
            raise RuntimeError("a bug in reading this one answer")
        return await self.real.query(client, job_id, **kwargs)


@BOTH_STORES
def test_an_exception_polling_one_job_reschedules_it_and_never_stops_the_tick(store, ims, clock):
    with wired(settings_for(ims, poll_min_interval=30, poll_max_interval=30), store) as deps:
        jobs = submit(deps, 4, now=clock.now)
        broken = jobs[0]
        assert broken.ims_job_id is not None
        clock.advance(FIRST_POLL.total_seconds() + 5)

        summary = run_check_sync(
            store=store,
            poller=RaisingFor(poller_for(deps), broken.ims_job_id),
            config=check_config(deps.settings),
            now=clock.now,
        )

        assert summary.aborted is None
        assert summary.errors["internal"] == 1
        for job in jobs[1:]:
            assert recorded(store, job).status is JobStatus.SUCCESS
        again = recorded(store, broken)
        assert again.status is JobStatus.SUBMITTED  # not ended: it is asked again later
        assert again.next_poll_at is not None
        assert again.next_poll_at >= clock.now() + timedelta(seconds=29)

        # Once the bug is gone, the next tick due for it ends it as IMS says.
        clock.advance(60)
        tick(deps, clock)
        assert recorded(store, broken).status is JobStatus.SUCCESS


@pytest.mark.parametrize("ims_job_id", POISONED_IDS)
def test_the_poller_never_sends_a_query_for_an_id_that_is_not_a_plain_token(ims_job_id):
    class NeverCalled:
        async def get(self, url: str) -> Any:
            raise AssertionError(f"a query was sent: {url!r}")

        async def aclose(self) -> None:
            pass

    poller = JobPoller(
        project_id="0123456789abcdef0123456789abcdef",
        client_factory=NeverCalled,
        limiter=RateLimiter(0),
    )

    result = asyncio.run(poller.query(NeverCalled(), ims_job_id))

    assert result.outcome == "unpollable"
