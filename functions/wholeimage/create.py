"""The ``create`` use case: validated body in, IMS job submitted and recorded, answer out.

Order matters for "nothing lost, nothing twice": the job is *reserved* (recorded as
``SUBMITTING``) before IMS is called, so an idempotency key or a backup can never be submitted
twice, even by two processes at once; IMS's answer then moves it on. The request carries the
job's marker tag (its request id), so IMS itself can say later whether it made the image.

When IMS's answer is lost or unreadable the job becomes ``SUBMIT_UNCERTAIN`` and is answered
as it is, never resubmitted; ``check`` reconciles it by its marker (docs/reconcile.md). A
process that dies mid-call leaves ``SUBMITTING`` behind: ``check`` reconciles that too, and a
repeat after ``STALE_SUBMISSION`` already calls it ``SUBMIT_UNCERTAIN``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from wholeimage.errors import (
    IdempotencyKeyReusedError,
    ImsRejectedError,
    NotFoundError,
    SubmissionInProgressError,
    SubmissionUncertainError,
    UpstreamError,
)
from wholeimage.models import CreateImageRequest, Job, JobStatus

if TYPE_CHECKING:
    from wholeimage.ims.client import ImsClient
    from wholeimage.store.records import JobStore

log = logging.getLogger("wholeimage.create")

# Longer than any IMS call can take with its retries (timeout 30 s x 4 attempts + 20 s budget).
STALE_SUBMISSION = timedelta(minutes=5)


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class CreateOutcome:
    """What ``submit_create`` did: the job, and whether this call was a replay of an earlier one."""

    job: Job
    replayed: bool


def submit_create(
    request: CreateImageRequest,
    *,
    idempotency_key: str | None,
    requested_by: str | None,
    trace: str | None,
    ims: ImsClient,
    store: JobStore,
    first_poll_after: timedelta,
    now: Callable[[], datetime] = utc_now,
) -> CreateOutcome:
    """Reserve, submit to IMS, record; or replay what the idempotency key already did.

    ``first_poll_after`` is how long after IMS accepted it the new job is first due for
    ``check``: the poll schedule's shortest wait, so ``0`` makes it due at the next tick.

    Raises:
        IdempotencyKeyReusedError: the key was used before with another body.
        SubmissionInProgressError: the key's first request is still being submitted.
        BackupInUseError: the backup already has an outstanding or successful job.
        ImsRejectedError, UpstreamError: IMS certainly refused it; nothing stays recorded.
            When IMS may have taken it, nothing is raised: the job is ``SUBMIT_UNCERTAIN``.
    """
    started = now()
    candidate = Job(
        request_id=uuid.uuid4().hex,
        idempotency_key=idempotency_key,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by=requested_by,
        source_kind=request.source_kind,
        source_id=request.source_id,
        status=JobStatus.SUBMITTING,
        created_at=started,
        updated_at=started,
        trace=trace,
    )
    reservation = store.reserve(candidate)
    if not reservation.created:
        return CreateOutcome(job=_replay(reservation.job, candidate, store, started), replayed=True)

    job = reservation.job
    log_fields = {"request_id": job.request_id, "idempotency_key": idempotency_key, "trace": trace}
    try:
        ims_job_id = ims.create_whole_image(request.ims_body(marker=job.request_id))
    except SubmissionUncertainError as exc:
        uncertain = store.mark_uncertain(job.request_id, reason=exc.message, now=now())
        log.error("IMS submission outcome unknown; not resubmitted", extra=log_fields)
        return CreateOutcome(job=uncertain, replayed=False)
    except (ImsRejectedError, UpstreamError):
        # IMS certainly did not take it: leave nothing behind, so the caller may retry. Also when
        # check took this live call over meanwhile (SUBMIT_UNCERTAIN): the refusal ends the doubt.
        store.discard(job.request_id)
        raise
    except BaseException:
        # An unexpected failure: we cannot know whether IMS took it, so never forget the job.
        store.mark_uncertain(
            job.request_id, reason="submission interrupted by an internal error", now=now()
        )
        raise
    accepted = now()
    submitted = store.mark_submitted(
        job.request_id,
        ims_job_id=ims_job_id,
        now=accepted,
        next_poll_at=accepted + first_poll_after,
    )
    if submitted.status is JobStatus.SUBMITTED:
        log.info("IMS job submitted", extra={**log_fields, "job_id": ims_job_id})
    else:
        # check took the call over as abandoned (WHOLEIMAGE_RECONCILE_AFTER shorter than this
        # call): the job stays with reconciliation, which finds the image by its marker.
        log.warning(
            "IMS accepted the job after check had taken it over; reconciled by its marker",
            extra={**log_fields, "job_id": ims_job_id, "status": submitted.status.value},
        )
    return CreateOutcome(job=submitted, replayed=False)


def _replay(existing: Job, candidate: Job, store: JobStore, now: datetime) -> Job:
    if existing.request_fingerprint != candidate.request_fingerprint:
        raise IdempotencyKeyReusedError(
            "this idempotency key was already used with a different request body",
            details=[
                {"path": "$", "message": f"differs from the body of request {existing.request_id}"}
            ],
        )
    if existing.status is JobStatus.SUBMITTING:
        if now - existing.created_at < STALE_SUBMISSION:
            raise SubmissionInProgressError(
                "the first request with this idempotency key is still being submitted; retry shortly"
            )
        # Its process died mid-submission: IMS may or may not have the job. Say so, never resubmit.
        return store.mark_uncertain(
            existing.request_id,
            reason="submission was interrupted; IMS may have accepted it",
            now=now,
        )
    return existing


def find_job(
    *, store: JobStore, ims_job_id: str | None = None, request_id: str | None = None
) -> Job:
    """A tracked job by IMS job id or by our request id.

    Raises:
        NotFoundError: no such job is tracked.
    """
    job = None
    if ims_job_id is not None:
        job = store.get_by_ims_job_id(ims_job_id)
    elif request_id is not None:
        job = store.get(request_id)
    if job is None:
        raise NotFoundError("no tracked job has this id")
    return job
