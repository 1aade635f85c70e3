"""Submitting, reading and listing jobs: what the ``create`` function and the CLI's ``submit``,
``status`` and ``list`` run."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from wholeimage.bootstrap import Dependencies
from wholeimage.create import find_job, submit_create
from wholeimage.errors import NotFoundError, RequestInvalidError
from wholeimage.jsonbody import member_path
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.service.ports import ims_client
from wholeimage.validation import CREATE_REQUEST_SCHEMA, validate

_MESSAGES = {
    JobStatus.SUBMITTED: "IMS accepted the request; the job is tracked until it ends.",
    JobStatus.SUBMIT_UNCERTAIN: (
        "IMS's answer was lost after the request was sent: it may or may not have made the image. "
        "The job is recorded and never resubmitted; wholeimage asks IMS for the image by this "
        "request's marker tag and tracks it to a verdict. Do not retry with a new idempotency key."
    ),
}
_REPLAYED = (
    "Replayed: this idempotency key was used before with the same body; this is that job "
    "(no second IMS job)."
)


@dataclass(frozen=True)
class Submission:
    """What a submission did: the job as it now is, and whether the call replayed an earlier one."""

    job: Job
    replayed: bool

    @property
    def message(self) -> str:
        """What to tell the caller about it, the same words on every edge."""
        if self.replayed:
            return _REPLAYED
        return _MESSAGES.get(self.job.status, "The job is tracked.")


# What the model refuses after the schema accepted it, said as a rule (never pydantic's text).
_MODEL_RULES = {
    "int_parsing_size": "an integer this large must be written without a fraction or an exponent"
}
_MODEL_RULE = "is not a value this field can hold"


def create_request(payload: Any, *, cloud: str) -> CreateImageRequest:
    """The create body as our model, once ``schemas/create-request.schema.json`` accepts it
    under the rules of ``cloud`` (``WHOLEIMAGE_CLOUD``: the clouds document some differently).

    Raises:
        RequestInvalidError: every failing field, by JSON path.
    """
    validate(CREATE_REQUEST_SCHEMA, payload, cloud=cloud)
    try:
        return CreateImageRequest.model_validate(payload)
    except ValidationError as exc:
        # The schema's "integer" is any number without a fraction (1e20), where the model reads
        # a float as an integer only below 2**63; whatever else it refuses is named the same way.
        details = sorted(
            (
                {
                    "path": _json_path(error["loc"]),
                    "message": _MODEL_RULES.get(error["type"], _MODEL_RULE),
                }
                for error in exc.errors()
            ),
            key=lambda detail: detail["path"],
        )
        count = len(details)
        raise RequestInvalidError(
            f"the request body is invalid: {count} problem{'s' if count != 1 else ''}",
            details=details,
        ) from None


def _json_path(location: tuple[int | str, ...]) -> str:
    path = "$"
    for member in location:
        path = member_path(path, member)
    return path


def submit(
    deps: Dependencies,
    request: CreateImageRequest,
    *,
    idempotency_key: str | None,
    requested_by: str | None,
    trace: str | None = None,
) -> Submission:
    """Submit ``request`` to IMS and record the job, or replay what its idempotency key did."""
    outcome = submit_create(
        request,
        idempotency_key=idempotency_key,
        requested_by=requested_by,
        trace=trace,
        ims=ims_client(deps),
        store=deps.store,
        # A new job's age is 0, so the schedule's shortest wait applies (poll_backoff):
        # WHOLEIMAGE_POLL_MIN_INTERVAL=0 makes it due at the next tick.
        first_poll_after=timedelta(seconds=deps.settings.poll_min_interval),
    )
    return Submission(job=outcome.job, replayed=outcome.replayed)


def read_job(
    deps: Dependencies, *, ims_job_id: str | None = None, request_id: str | None = None
) -> Job:
    """A tracked job by IMS job id or by our request id.

    Raises:
        NotFoundError: no such job is tracked.
    """
    return find_job(store=deps.store, ims_job_id=ims_job_id, request_id=request_id)


def find_by_any_id(deps: Dependencies, job_id: str) -> Job:
    """A tracked job by an id that may be either an IMS job id or our request id (the CLI's).

    Raises:
        NotFoundError: neither kind of id names a tracked job.
    """
    job = deps.store.get_by_ims_job_id(job_id) or deps.store.get(job_id)
    if job is None:
        raise NotFoundError(f"no tracked job has the IMS job id or request id {job_id!r}")
    return job


def list_jobs(
    deps: Dependencies,
    *,
    statuses: Collection[JobStatus] | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[Job]:
    """Tracked jobs, newest first."""
    return deps.store.list_jobs(statuses=statuses or None, since=since, limit=limit)
