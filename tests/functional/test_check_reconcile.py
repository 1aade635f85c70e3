"""A ``check`` tick reconciling uncertain submissions, on both stores (docs/reconcile.md §3).

The tick runs for real (``run_check_sync`` over the store of conftest's ``store`` fixture, an
outbox writing notification rows); IMS's image list is ``FakeImsClient``; the job poller is
never asked anything, as no job here has an IMS job id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from tests.fakes import FakeImsClient
from wholeimage.check import CheckConfig, run_check_sync
from wholeimage.errors import UpstreamUnavailableError
from wholeimage.httputil import RateLimiter
from wholeimage.ims.client import ImageSummary
from wholeimage.ims.poller import JobPoller
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.notify import outbox_for
from wholeimage.reconcile import UNCONFIRMED_CODE, Lookup, ReconcileConfig, lookup_by_marker
from wholeimage.results import Channel
from wholeimage.store.records import JobStore

pytestmark = pytest.mark.usefixtures("store_kind")

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CONFIG = CheckConfig(reconcile=ReconcileConfig(after=timedelta(minutes=10)))
CHANNELS = [Channel(name="ops", format="slack", url=SecretStr("file:/dev/null"))]


def never_polled() -> httpx.AsyncClient:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"nothing here may be polled: {request.url}")

    return httpx.AsyncClient(transport=httpx.MockTransport(refuse))


POLLER = JobPoller(project_id="0" * 32, client_factory=never_polled, limiter=RateLimiter(0))


def uncertain(store: JobStore, name: str) -> Job:
    request = CreateImageRequest.model_validate(
        {"name": name, "backup_id": str(uuid.uuid4()), "whole_image_type": "CBR"}
    )
    job = Job(
        request_id=uuid.uuid4().hex,
        idempotency_key=f"key-{name}",
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="ci",
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=JobStatus.SUBMITTING,
        created_at=T0,
        updated_at=T0,
    )
    assert store.reserve(job).created
    return store.mark_uncertain(job.request_id, reason="IMS answered 502", now=T0)


def tick(store: JobStore, ims: FakeImsClient, at: timedelta, lookup=None):
    return run_check_sync(
        store=store,
        poller=POLLER,
        config=CONFIG,
        now=lambda: T0 + at,
        outbox=outbox_for(CHANNELS),
        lookup=lookup or (lambda job: lookup_by_marker(ims, job)),
    )


def active(image_id: str) -> list[ImageSummary]:
    return [ImageSummary(image_id=image_id, name="x", status="active")]


def test_a_tick_ends_what_ims_lists_and_leaves_the_rest_asking(store):
    made, saving, none = (uncertain(store, name) for name in ("made", "saving", "none"))
    ims = FakeImsClient(
        images={
            made.request_id: active("img-made"),
            saving.request_id: [ImageSummary(image_id="img-saving", name="x", status="saving")],
        }
    )

    first = tick(store, ims, timedelta(minutes=10))

    assert first.reconciled == 3
    assert dict(first.ended) == {"SUCCESS": 1}
    assert sorted(ims.lookups) == sorted(job.request_id for job in (made, saving, none))
    assert store.get(made.request_id).status is JobStatus.SUCCESS
    assert store.get(made.request_id).image_id == "img-made"
    assert store.get(saving.request_id).image_id == "img-saving"
    assert store.get(none.request_id).status is JobStatus.SUBMIT_UNCERTAIN
    assert store.notification_counts() == {"PENDING": 1}

    # The image appears, the window closes: each ends once, and is heard of once.
    ims.images[saving.request_id] = active("img-saving")
    last = tick(store, ims, timedelta(hours=3))
    assert dict(last.ended) == {"SUCCESS": 1, "UNCONFIRMED": 1}
    ended_none = store.get(none.request_id)
    assert (ended_none.status, ended_none.error_code) == (JobStatus.UNCONFIRMED, UNCONFIRMED_CODE)
    assert store.notification_counts() == {"PENDING": 3}

    assert tick(store, ims, timedelta(hours=30)).reconciled == 0
    assert store.notification_counts() == {"PENDING": 3}


def test_one_lookup_that_raises_stays_with_its_job_and_the_others_go_on(store):
    broken, fine = uncertain(store, "broken"), uncertain(store, "fine")
    ims = FakeImsClient(images={fine.request_id: active("img-fine")})

    def lookup(job: Job) -> Lookup:
        if job.request_id == broken.request_id:
            raise RuntimeError("a bug in one lookup")
        return lookup_by_marker(ims, job)

    summary = tick(store, ims, timedelta(minutes=10), lookup=lookup)

    assert summary.aborted is None
    assert summary.errors["internal"] == 1
    assert store.get(fine.request_id).status is JobStatus.SUCCESS
    assert store.get(broken.request_id).status is JobStatus.SUBMIT_UNCERTAIN


def test_an_ims_that_cannot_be_asked_ends_nothing_even_long_after_the_window(store):
    job = uncertain(store, "unreachable")
    ims = FakeImsClient(
        lookup_script=[UpstreamUnavailableError("IMS is throttling", retry_after=60)]
    )

    summary = tick(store, ims, timedelta(days=2))

    assert summary.errors["reconcile_failed"] == 1
    assert dict(summary.ended) == {}
    recorded = store.get(job.request_id)
    assert recorded.status is JobStatus.SUBMIT_UNCERTAIN
    # The backup stays held until IMS can say whether the image exists.
    assert recorded.next_poll_at is not None
    assert recorded.next_poll_at >= T0 + timedelta(days=2, seconds=60)
    assert store.notification_counts() == {}


class RefusingStore:
    """The store, except that recording an update for ``poison`` fails, as a database refusing
    one row's values would; everything else passes through."""

    def __init__(self, inner: JobStore, poison: str) -> None:
        self.inner = inner
        self.poison = poison

    def record_polls(self, updates, *, owner, outbox=None):
        if any(update.request_id == self.poison for update in updates):
            raise RuntimeError("the database refused a value")
        return self.inner.record_polls(updates, owner=owner, outbox=outbox)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_one_update_the_store_refuses_does_not_lose_the_others_of_its_batch(store):
    jobs = [uncertain(store, name) for name in ("a", "poison", "c")]
    ims = FakeImsClient(images={job.request_id: active(f"img-{job.request_id}") for job in jobs})
    refusing = RefusingStore(store, poison=jobs[1].request_id)

    summary = tick(refusing, ims, timedelta(minutes=10))

    assert summary.errors["store"] == 1
    assert dict(summary.ended) == {"SUCCESS": 2}
    assert [store.get(job.request_id).status for job in jobs] == [
        JobStatus.SUCCESS,
        JobStatus.SUBMIT_UNCERTAIN,
        JobStatus.SUCCESS,
    ]
    assert store.notification_counts() == {"PENDING": 2}


def test_the_tick_counts_what_is_still_unresolved_after_it(store):
    made, waiting = uncertain(store, "made"), uncertain(store, "waiting")
    ims = FakeImsClient(images={made.request_id: active("img-made")})

    summary = tick(store, ims, timedelta(minutes=10))

    assert summary.unresolved == 1
    assert summary.as_json()["unresolved"] == 1
    assert store.get(waiting.request_id).status is JobStatus.SUBMIT_UNCERTAIN


def test_reconciliation_spends_at_most_half_the_budget_and_hands_back_the_rest_due(store):
    jobs = [uncertain(store, f"slow-{n}") for n in range(3)]
    ims = FakeImsClient()
    clock = {"now": 0.0}

    def slow_lookup(job: Job) -> Lookup:
        clock["now"] += 40.0  # a slow image list: 40 s a lookup against a 120 s budget
        return lookup_by_marker(ims, job)

    summary = run_check_sync(
        store=store,
        poller=POLLER,
        config=CONFIG,
        now=lambda: T0 + timedelta(minutes=10),
        monotonic=lambda: clock["now"],
        lookup=slow_lookup,
    )

    assert summary.reconciled == 2
    assert len(ims.lookups) == 2
    [handed_back] = [store.get(job.request_id) for job in jobs if job.request_id not in ims.lookups]
    assert handed_back.status is JobStatus.SUBMIT_UNCERTAIN
    assert handed_back.fail_reason == "IMS answered 502"
    assert handed_back.next_poll_at == T0 + timedelta(minutes=10)  # due again at once
