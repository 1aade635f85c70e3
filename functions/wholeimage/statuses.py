"""A tracked job's statuses and the groups the code and operators think in.

Standard library only, so the CLI's parser can name them without loading pydantic.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A tracked job's status: IMS's four plus ours where IMS has no word for it."""

    SUBMITTING = "SUBMITTING"  # recorded, IMS call in flight (or the process died during it)
    # IMS's answer was lost (timeout, 5xx, unreadable 200, process death): never resubmitted;
    # ``check`` asks IMS for the image by the request's marker tag until it knows.
    SUBMIT_UNCERTAIN = "SUBMIT_UNCERTAIN"
    SUBMITTED = "SUBMITTED"  # IMS accepted it and gave a job id; not polled yet
    INIT = "INIT"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"
    TIMED_OUT = "TIMED_OUT"  # past its deadline without an IMS verdict
    # Uncertain past the reconcile window, and IMS lists no image with the request's marker.
    UNCONFIRMED = "UNCONFIRMED"


OUTSTANDING = frozenset({JobStatus.SUBMITTED, JobStatus.INIT, JobStatus.RUNNING})
ENDED = frozenset({JobStatus.SUCCESS, JobStatus.FAIL, JobStatus.TIMED_OUT, JobStatus.UNCONFIRMED})
# Whether IMS took these is unknown: ``check`` reconciles them by marker (docs/reconcile.md).
UNRESOLVED = frozenset({JobStatus.SUBMITTING, JobStatus.SUBMIT_UNCERTAIN})
# A backup with a job in one of these states may not be used again (the seed: one backup, one image).
BACKUP_BLOCKING = frozenset(
    {JobStatus.SUBMITTING, JobStatus.SUBMIT_UNCERTAIN, JobStatus.SUCCESS} | OUTSTANDING
)
