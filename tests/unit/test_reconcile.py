"""``wholeimage.reconcile``: what one marker lookup does to one unresolved job (docs/reconcile.md)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.fakes import FakeImsClient
from wholeimage.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailableError,
)
from wholeimage.ims.client import ImageSummary
from wholeimage.models import MARKER_TAG_KEY, CreateImageRequest, Job, JobStatus
from wholeimage.poll_backoff import PollBackoff
from wholeimage.reconcile import (
    IMAGE_DELETED_CODE,
    IMAGE_KILLED_CODE,
    RECONCILE_TIMED_OUT_CODE,
    UNCONFIRMED_CODE,
    Lookup,
    ReconcileConfig,
    decide_reconcile,
    hand_back,
    lookup_by_marker,
)

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CONFIG = ReconcileConfig(after=timedelta(minutes=10), window=timedelta(hours=3))
DEADLINE = timedelta(hours=3)
BACKOFF = PollBackoff(15.0, 300.0)
IMAGE_ID = "c1a4b2f3-5d6e-4f70-8a9b-0c1d2e3f4a5b"


def uncertain_job(*, image_id: str | None = None) -> Job:
    request = CreateImageRequest.model_validate(
        {"name": "web01-full", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}
    )
    return Job(
        request_id=uuid.uuid4().hex,
        idempotency_key="nightly-1",
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="ci",
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=JobStatus.SUBMIT_UNCERTAIN,
        image_id=image_id,
        fail_reason="IMS answered 502 after the request was sent",
        created_at=T0,
        updated_at=T0,
    )


def image(status: str, image_id: str = IMAGE_ID) -> ImageSummary:
    return ImageSummary(image_id=image_id, name="web01-full", status=status)


def decide(job: Job, lookup: Lookup, at: timedelta):
    return decide_reconcile(
        job,
        lookup,
        now=T0 + at,
        config=CONFIG,
        backoff=BACKOFF,
        job_deadline=DEADLINE,
        rng=random.Random(0),
    )


def test_an_active_image_under_the_marker_ends_the_job_success_with_that_image():
    job = uncertain_job()

    update = decide(job, Lookup("found", images=(image("active"),)), timedelta(minutes=11))

    assert update.status is JobStatus.SUCCESS
    assert update.image_id == IMAGE_ID
    assert update.ended_at == T0 + timedelta(minutes=11)
    assert update.error_code is None


@pytest.mark.parametrize(
    ("status", "code"), [("killed", IMAGE_KILLED_CODE), ("deleted", IMAGE_DELETED_CODE)]
)
def test_a_killed_or_deleted_image_ends_the_job_fail_with_our_code(status, code):
    update = decide(uncertain_job(), Lookup("found", images=(image(status),)), timedelta(hours=1))

    assert update.status is JobStatus.FAIL
    assert update.error_code == code
    assert update.image_id == IMAGE_ID
    assert IMAGE_ID in (update.fail_reason or "")


@pytest.mark.parametrize("status", ["queued", "saving"])
def test_an_image_still_being_made_keeps_the_job_uncertain_with_its_id_and_its_reason(status):
    job = uncertain_job()

    update = decide(job, Lookup("found", images=(image(status),)), timedelta(minutes=20))

    assert update.status is JobStatus.SUBMIT_UNCERTAIN
    assert update.ended_at is None
    assert update.image_id == IMAGE_ID
    assert update.fail_reason == job.fail_reason
    assert update.next_poll_at is not None
    assert update.next_poll_at > T0 + timedelta(minutes=20)


def test_an_image_still_being_made_at_the_job_deadline_times_out():
    update = decide(uncertain_job(), Lookup("found", images=(image("saving"),)), DEADLINE)

    assert update.status is JobStatus.TIMED_OUT
    assert update.error_code == RECONCILE_TIMED_OUT_CODE
    assert update.image_id == IMAGE_ID


def test_no_image_inside_the_window_keeps_asking():
    update = decide(uncertain_job(), Lookup("found"), CONFIG.window - timedelta(seconds=1))

    assert update.status is JobStatus.SUBMIT_UNCERTAIN
    assert update.ended_at is None


def test_no_image_once_the_window_closed_ends_unconfirmed_naming_the_marker():
    job = uncertain_job()

    update = decide(job, Lookup("found"), CONFIG.window)

    assert update.status is JobStatus.UNCONFIRMED
    assert update.error_code == UNCONFIRMED_CODE
    assert f"{MARKER_TAG_KEY}={job.request_id}" in (update.fail_reason or "")


@pytest.mark.parametrize("at", [timedelta(minutes=11), timedelta(days=30)])
def test_a_failed_lookup_never_ends_a_job_however_late(at):
    job = uncertain_job(image_id=IMAGE_ID)

    update = decide(job, Lookup("failed", detail="upstream_error"), at)

    assert update.status is JobStatus.SUBMIT_UNCERTAIN
    assert update.ended_at is None
    assert update.image_id == IMAGE_ID  # what an earlier lookup found is kept


def test_a_failed_lookup_with_retry_after_waits_at_least_that_long():
    update = decide(uncertain_job(), Lookup("failed", retry_after=900.0), timedelta(minutes=11))

    assert update.next_poll_at is not None
    assert update.next_poll_at >= T0 + timedelta(minutes=11, seconds=900)


def test_of_several_images_under_one_marker_the_most_advanced_decides():
    images = (image("killed", "img-a"), image("active", "img-b"), image("saving", "img-c"))

    update = decide(uncertain_job(), Lookup("found", images=images), timedelta(hours=1))

    assert (update.status, update.image_id) == (JobStatus.SUCCESS, "img-b")


# --- lookup_by_marker ----------------------------------------------------------------------


def test_lookup_asks_ims_for_the_jobs_marker_and_returns_what_it_lists():
    job = uncertain_job()
    ims = FakeImsClient(images={job.request_id: [image("saving")]})

    found = lookup_by_marker(ims, job)

    assert ims.lookups == [job.request_id]
    assert found == Lookup("found", images=(image("saving"),))


@pytest.mark.parametrize(
    ("error", "auth", "retry_after"),
    [
        (UpstreamUnavailableError("throttled", retry_after=30), False, 30.0),
        (UpstreamAuthError("credentials refused"), True, None),
        (UpstreamError("IMS's image list answer is not JSON"), False, None),
    ],
)
def test_lookup_turns_each_ims_failure_into_a_failed_lookup(error, auth, retry_after):
    ims = FakeImsClient(lookup_script=[error])

    found = lookup_by_marker(ims, uncertain_job())

    assert found.outcome == "failed"
    assert found.auth is auth
    assert found.retry_after == retry_after
    assert found.images == ()


# --- the marker in the body sent to IMS ------------------------------------------------------

ECS = {"name": "web01-full", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"image_tags": [{"key": MARKER_TAG_KEY, "value": "abc"}]}),
        (
            {"image_tags": [{"key": "owner", "value": "ops"}]},
            {
                "image_tags": [
                    {"key": "owner", "value": "ops"},
                    {"key": MARKER_TAG_KEY, "value": "abc"},
                ]
            },
        ),
        ({"tags": ["owner.ops"]}, {"tags": ["owner.ops", f"{MARKER_TAG_KEY}.abc"]}),
    ],
    ids=["no-tags", "image-tags", "old-style-tags"],
)
def test_the_marker_joins_the_tags_in_the_form_the_caller_used(extra, expected):
    # tags and image_tags exclude each other at IMS, so the marker never adds the other form.
    request = CreateImageRequest.model_validate({**ECS, **extra})

    assert request.ims_body(marker="abc") == {**ECS, **expected}
    assert request.ims_body() == {**ECS, **extra}


def test_the_marker_is_not_part_of_the_fingerprint_so_a_repeat_is_still_a_repeat():
    request = CreateImageRequest.model_validate(ECS)
    fingerprint = request.fingerprint()

    request.ims_body(marker="abc")

    assert (
        request.fingerprint() == fingerprint == CreateImageRequest.model_validate(ECS).fingerprint()
    )


def test_an_id_in_upper_case_is_the_same_source_as_in_lower_case():
    # One backup in two spellings must stay one backup (one backup, one image).
    backup = "2F1C6A7E-5B7D-4F63-9A41-0D8C3E6B7A15"
    upper = CreateImageRequest.model_validate(
        {"name": "x", "backup_id": backup, "whole_image_type": "CBR"}
    )
    lower = CreateImageRequest.model_validate(
        {"name": "x", "backup_id": backup.lower(), "whole_image_type": "CBR"}
    )

    assert upper.source_id == lower.source_id == backup.lower()
    assert upper.fingerprint() == lower.fingerprint()
    assert upper.ims_body()["backup_id"] == backup.lower()


def tagged(image_id: str, *tags: str) -> ImageSummary:
    return ImageSummary(image_id=image_id, name="web01-full", status="active", tags=tags)


def test_an_image_whose_listed_tags_lack_the_marker_is_not_the_jobs():
    # IMS's tag filter ignored (another version, a proxy dropping the query): a foreign image
    # must never end the job SUCCESS.
    job = uncertain_job()
    ims = FakeImsClient(images={job.request_id: [tagged("img-foreign", "owner=ops")]})

    assert lookup_by_marker(ims, job) == Lookup("found")


@pytest.mark.parametrize(
    "marker_form", ["wholeimage_request={id}", "wholeimage_request.{id}"], ids=["new", "old"]
)
def test_an_image_listing_the_marker_in_either_tag_form_is_the_jobs(marker_form):
    job = uncertain_job()
    mine = tagged("img-mine", "owner=ops", marker_form.format(id=job.request_id))
    ims = FakeImsClient(images={job.request_id: [mine, tagged("img-foreign")]})

    assert lookup_by_marker(ims, job) == Lookup("found", images=(mine,))


def test_several_images_for_one_marker_conclude_nothing():
    job = uncertain_job()
    ims = FakeImsClient(
        images={job.request_id: [image("active", "img-a"), image("saving", "img-b")]}
    )

    found = lookup_by_marker(ims, job)

    assert found.outcome == "failed"
    assert "2 images" in (found.detail or "")


def test_a_job_handed_back_unasked_is_due_at_once_with_its_reason_and_image_kept():
    job = uncertain_job(image_id=IMAGE_ID)

    update = hand_back(job, now=T0 + timedelta(minutes=11))

    assert update.status is JobStatus.SUBMIT_UNCERTAIN
    assert update.next_poll_at == T0 + timedelta(minutes=11)
    assert (update.fail_reason, update.image_id, update.queried) == (
        job.fail_reason,
        IMAGE_ID,
        False,
    )
