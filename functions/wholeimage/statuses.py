"""A tracked job's statuses and the groups the code and operators think in.

Standard library only, so the CLI's parser can name them without loading pydantic.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A tracked job's status: IMS's four plus ours where IMS has no word for it."""

    SUBMITTING = "SUBMITTING"  # recorded, IMS call in flight (or the process died during it)
    SUBMIT_UNCERTAIN = "SUBMIT_UNCERTAIN"  # IMS call timed out after it was sent: never resubmitted
    SUBMITTED = "SUBMITTED"  # IMS accepted it and gave a job id; not polled yet
    INIT = "INIT"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"
    TIMED_OUT = "TIMED_OUT"  # past its deadline without an IMS verdict


OUTSTANDING = frozenset({JobStatus.SUBMITTED, JobStatus.INIT, JobStatus.RUNNING})
ENDED = frozenset({JobStatus.SUCCESS, JobStatus.FAIL, JobStatus.TIMED_OUT})
# A backup with a job in one of these states may not be used again (the seed: one backup, one image).
BACKUP_BLOCKING = frozenset(
    {JobStatus.SUBMITTING, JobStatus.SUBMIT_UNCERTAIN, JobStatus.SUCCESS} | OUTSTANDING
)
