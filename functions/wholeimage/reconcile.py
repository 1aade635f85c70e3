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
from dataclasses import dataclass, replace
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

# Which of several images speaks for the job, should a lookup find more than one.
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
    """Ask IMS for the full-ECS images carrying ``job``'s marker tag; never raises for IMS.

    IMS's tag filter is checked, not trusted: an image whose listed tags lack the marker is
    not this job's, and more than one image for one marker (one request makes one call) means
    the filter was not applied, so nothing is concluded from that answer.
    """
    try:
        images = ims.find_whole_images(
            tag_key=MARKER_TAG_KEY,
            tag_value=job.request_id,
            enterprise_project_id=job.request.enterprise_project_id,
        )
    except UpstreamUnavailableError as exc:
        return Lookup("failed", detail=exc.code, retry_after=float(exc.retry_after))
    except UpstreamAuthError as exc:
        return Lookup("failed", detail=exc.code, auth=True)
    except UpstreamError as exc:
        return Lookup("failed", detail=f"{exc.code}: {exc.message}")
    marked = tuple(image for image in images if _carries_marker(image, job.request_id))
    if len(marked) > 1:
        log.warning(
            "IMS lists several images for one request's marker; its tag filter may be ignored",
            extra={"request_id": job.request_id, "images": [i.image_id for i in marked]},
        )
        return Lookup("failed", detail=f"IMS lists {len(marked)} images for one marker")
    return Lookup("found", images=marked)


def _carries_marker(image: ImageSummary, request_id: str) -> bool:
    """Whether the image's listed tags hold the marker (as ``k=v``, or old-style ``k.v``);
    an image listed without its tags is taken on the filter's word."""
    if image.tags is None:
        return True
    return any(
        tag in (f"{MARKER_TAG_KEY}={request_id}", f"{MARKER_TAG_KEY}.{request_id}")
        for tag in image.tags
    )


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
    # ``lookup_by_marker`` never finds more than one; should another lookup, the most
    # advanced image decides.
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


def hand_back(job: Job, *, now: datetime) -> PollUpdate:
    """A claimed job handed back unasked (the tick ran out of time): due again at once, its
    reason and any image id kept."""
    return replace(
        _still_uncertain(job, now=now, next_poll=now, image_id=job.image_id), queried=False
    )


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
