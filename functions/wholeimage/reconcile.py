"""Reconciliation: what became of a submission whose IMS answer was lost (docs/reconcile.md).

Every create request carries the marker tag ``wholeimage_request=<request id>``
(``models.MARKER_TAG_KEY``). A job whose outcome is unknown (``SUBMIT_UNCERTAIN``, or
``SUBMITTING`` left by a process that died) is looked up by that tag in IMS's image list
(``GET /v2/cloudimages``, docs/ims-api.md §2.5) and then:

- an ``active`` image ends it ``SUCCESS`` with that image; ``killed`` or ``deleted`` ends it
  ``FAIL`` with our code; ``queued``/``saving`` keeps it uncertain with the image id noted,
  asked again later, and ``TIMED_OUT`` at the job deadline like any job;
- no image, while the reconcile window is open: asked again later (IMS may not list it yet);
- no image once the window has closed: ``UNCONFIRMED``, with its own code. Only an answer
  from IMS proves that: a failed query never ends a job, so the backup stays held until IMS
  can be asked.

``decide_reconcile`` is the pure decision; ``lookup_by_marker`` asks IMS through the port.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from wholeimage.errors import UpstreamAuthError, UpstreamError, UpstreamUnavailableError
from wholeimage.models import MARKER_TAG_KEY, Job, JobStatus
from wholeimage.store.records import PollUpdate

if TYPE_CHECKING:
    from wholeimage.ims.client import ImageSummary, ImsClient
    from wholeimage.poll_backoff import PollBackoff

log = logging.getLogger("wholeimage.reconcile")

UNCONFIRMED_CODE = "WHOLEIMAGE.SUBMISSION_UNCONFIRMED"
IMAGE_KILLED_CODE = "WHOLEIMAGE.IMAGE_KILLED"
IMAGE_DELETED_CODE = "WHOLEIMAGE.IMAGE_DELETED"
RECONCILE_TIMED_OUT_CODE = "WHOLEIMAGE.TIMED_OUT"

# Which of several images with one marker speaks for the job (there should be one: IMS was
# called once per request); the most advanced wins.
_PREFERENCE = {"active": 0, "saving": 1, "queued": 2, "killed": 3, "deleted": 4}


@dataclass(frozen=True)
class ReconcileConfig:
    """When and for how long uncertain submissions are asked about (``WHOLEIMAGE_RECONCILE_*``)."""

    after: timedelta = timedelta(minutes=10)
    window: timedelta = timedelta(hours=3)
    batch: int = 32


@dataclass(frozen=True)
class Lookup:
    """What IMS said about one marker: the images (``found``, maybe none), or why it could not."""

    outcome: Literal["found", "failed"]
    images: tuple[ImageSummary, ...] = ()
    detail: str | None = None
    retry_after: float | None = None
    auth: bool = False


def lookup_by_marker(ims: ImsClient, job: Job) -> Lookup:
    """Ask IMS for the full-ECS images carrying ``job``'s marker tag; never raises for IMS."""
    try:
        images = ims.find_whole_images(tag_key=MARKER_TAG_KEY, tag_value=job.request_id)
    except UpstreamUnavailableError as exc:
        return Lookup("failed", detail=exc.code, retry_after=float(exc.retry_after))
    except UpstreamAuthError as exc:
        return Lookup("failed", detail=exc.code, auth=True)
    except UpstreamError as exc:
        return Lookup("failed", detail=f"{exc.code}: {exc.message}")
    return Lookup("found", images=tuple(images))


def decide_reconcile(
    job: Job,
    lookup: Lookup,
    *,
    now: datetime,
    config: ReconcileConfig,
    backoff: PollBackoff,
    job_deadline: timedelta,
    rng: random.Random,
) -> PollUpdate:
    """The pure decision: what one marker lookup does to one unresolved job."""
    next_poll = backoff.next_poll_at(submitted_at=job.created_at, now=now, rng=rng)
    if lookup.outcome == "failed":
        if lookup.retry_after is not None:
            next_poll = max(next_poll, now + timedelta(seconds=lookup.retry_after))
        return _still_uncertain(job, now=now, next_poll=next_poll, image_id=job.image_id)
    if not lookup.images:
        if now - job.created_at >= config.window:
            return PollUpdate.end(
                job,
                status=JobStatus.UNCONFIRMED,
                at=now,
                error_code=UNCONFIRMED_CODE,
                fail_reason=(
                    f"IMS lists no image tagged {MARKER_TAG_KEY}={job.request_id} "
                    f"{config.window} after the submission, whose answer was lost; taken as "
                    "not made, and the backup is free again"
                ),
            )
        return _still_uncertain(job, now=now, next_poll=next_poll, image_id=None)
    if len(lookup.images) > 1:
        log.warning(
            "several images carry one request's marker",
            extra={"request_id": job.request_id, "images": [i.image_id for i in lookup.images]},
        )
    image = min(lookup.images, key=lambda found: _PREFERENCE.get(found.status, 9))
    return _after_image(job, image, now=now, next_poll=next_poll, job_deadline=job_deadline)


def _after_image(
    job: Job, image: ImageSummary, *, now: datetime, next_poll: datetime, job_deadline: timedelta
) -> PollUpdate:
    """IMS lists the request's image: its status is the verdict, or the job waits on."""
    if image.status == "active":
        return PollUpdate.end(
            job, status=JobStatus.SUCCESS, at=now, image_id=image.image_id, process_percent=1.0
        )
    if image.status in ("killed", "deleted"):
        return PollUpdate.end(
            job,
            status=JobStatus.FAIL,
            at=now,
            image_id=image.image_id,
            error_code=IMAGE_KILLED_CODE if image.status == "killed" else IMAGE_DELETED_CODE,
            fail_reason=f"IMS lists this request's image {image.image_id} as {image.status}",
        )
    if now >= job.created_at + job_deadline:
        return PollUpdate.end(
            job,
            status=JobStatus.TIMED_OUT,
            at=now,
            image_id=image.image_id,
            error_code=RECONCILE_TIMED_OUT_CODE,
            fail_reason=f"no verdict within {job_deadline}; IMS lists the image as {image.status}",
        )
    return _still_uncertain(job, now=now, next_poll=next_poll, image_id=image.image_id)


def _still_uncertain(
    job: Job, *, now: datetime, next_poll: datetime, image_id: str | None
) -> PollUpdate:
    # Keeps the reason it became uncertain: the caller still sees why.
    return PollUpdate(
        job.request_id,
        JobStatus.SUBMIT_UNCERTAIN,
        now,
        next_poll,
        process_percent=job.process_percent,
        image_id=image_id,
        fail_reason=job.fail_reason,
    )
