"""The records of the lifecycle policies' part of the state store (``policy_store``).

State names are the values the ``state`` columns hold (docs/policies.md §4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wholeimage.store.records import from_epoch, to_epoch

Row = dict[str, Any]

# Item states: CREATING while its job runs, DONE once it succeeded and retention was decided,
# FAILED when the create was refused or its job did not succeed.
ITEM_CREATING, ITEM_DONE, ITEM_FAILED = "CREATING", "DONE", "FAILED"
# Run states: CREATING while its sources are being submitted, OPEN until every item and
# deletion ended, REPORTED once its message is in the outbox.
RUN_CREATING, RUN_OPEN, RUN_REPORTED = "CREATING", "OPEN", "REPORTED"
# Deletion states: PENDING (to send), SENT (sent or maybe sent: IMS is asked whether the image
# is gone), DELETED and FAILED (retries spent; reported).
DELETION_PENDING, DELETION_SENT, DELETION_DELETED, DELETION_FAILED = (
    "PENDING",
    "SENT",
    "DELETED",
    "FAILED",
)
DELETION_ENDED = (DELETION_DELETED, DELETION_FAILED)


@dataclass(frozen=True)
class PolicyRecord:
    """A stored policy: its document and the state kept beside it."""

    name: str
    document: dict[str, Any]
    enabled: bool
    paused: bool
    paused_reason: str | None
    failures: int
    next_slot_at: datetime | None
    last_slot_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> PolicyRecord:
        """Read a ``policies`` row."""
        return cls(
            name=row["name"],
            document=_document(row["document"]),
            enabled=bool(row["enabled"]),
            paused=bool(row["paused"]),
            paused_reason=row["paused_reason"],
            failures=int(row["failures"]),
            next_slot_at=from_epoch(row["next_slot_at"]),
            last_slot_at=from_epoch(row["last_slot_at"]),
            created_at=_moment(row["created_at"]),
            updated_at=_moment(row["updated_at"]),
        )


@dataclass(frozen=True)
class PolicyRun:
    """One slot of one policy."""

    run_id: str
    policy: str
    slot_at: datetime
    skipped: int
    skipped_first: datetime | None
    state: str
    paused_reason: str | None
    created_at: datetime
    reported_at: datetime | None = None
    failed: bool = False
    # The run's sources as (instance id, label) when it opened: what "not submitted" is
    # measured against, whatever the policy says later.
    sources: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_row(cls, row: Row) -> PolicyRun:
        """Read a ``policy_runs`` row."""
        return cls(
            run_id=row["run_id"],
            policy=row["policy"],
            slot_at=_moment(row["slot_at"]),
            skipped=int(row["skipped"]),
            skipped_first=from_epoch(row["skipped_first"]),
            state=row["state"],
            paused_reason=row["paused_reason"],
            created_at=_moment(row["created_at"]),
            reported_at=from_epoch(row["reported_at"]),
            failed=bool(row["failed"]),
            sources=_sources(row.get("sources")),
        )


@dataclass(frozen=True)
class PolicyItem:
    """What one source did in one run: its create job, and how it ended."""

    item_id: str
    run_id: str
    policy: str
    source_id: str
    request_id: str | None
    state: str
    image_name: str
    created_at: datetime
    updated_at: datetime
    image_id: str | None = None
    error_code: str | None = None
    detail: str | None = None
    job_status: str | None = None  # the job's status, when read with it (``ended_items``)
    checks: int = 0  # how often retention could not read IMS's list for it yet

    @classmethod
    def from_row(cls, row: Row) -> PolicyItem:
        """Read a ``policy_items`` row (with ``job_status`` when joined with its job)."""
        return cls(
            item_id=row["item_id"],
            run_id=row["run_id"],
            policy=row["policy"],
            source_id=row["source_id"],
            request_id=row["request_id"],
            state=row["state"],
            image_name=row["image_name"],
            created_at=_moment(row["created_at"]),
            updated_at=_moment(row["updated_at"]),
            image_id=row["image_id"],
            error_code=row["error_code"],
            detail=row["detail"],
            job_status=row.get("job_status"),
            checks=int(row.get("checks") or 0),
        )

    def to_row(self) -> Row:
        """The row of a new item."""
        return {
            "item_id": self.item_id,
            "run_id": self.run_id,
            "policy": self.policy,
            "source_id": self.source_id,
            "request_id": self.request_id,
            "state": self.state,
            "image_name": self.image_name,
            "image_id": self.image_id,
            "error_code": self.error_code,
            "detail": self.detail,
            "created_at": to_epoch(self.created_at),
            "updated_at": to_epoch(self.updated_at),
        }


@dataclass(frozen=True)
class ImageDeletion:
    """One image retention rotates out, tracked until IMS no longer lists it."""

    image_id: str
    policy: str
    source_id: str
    run_id: str
    image_name: str
    delete_backup: bool
    reason: str
    state: str
    next_attempt_at: datetime
    created_at: datetime
    attempts: int = 0
    sent_at: datetime | None = None
    last_error: str | None = None
    ended_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Row) -> ImageDeletion:
        """Read an ``image_deletions`` row."""
        return cls(
            image_id=row["image_id"],
            policy=row["policy"],
            source_id=row["source_id"],
            run_id=row["run_id"],
            image_name=row["image_name"],
            delete_backup=bool(row["delete_backup"]),
            reason=row["reason"],
            state=row["state"],
            next_attempt_at=_moment(row["next_attempt_at"]),
            created_at=_moment(row["created_at"]),
            attempts=int(row["attempts"]),
            sent_at=from_epoch(row["sent_at"]),
            last_error=row["last_error"],
            ended_at=from_epoch(row["ended_at"]),
        )

    def to_row(self) -> Row:
        """The row of a new deletion."""
        return {
            "image_id": self.image_id,
            "policy": self.policy,
            "source_id": self.source_id,
            "run_id": self.run_id,
            "image_name": self.image_name,
            "delete_backup": int(self.delete_backup),
            "reason": self.reason,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": to_epoch(self.next_attempt_at),
            "created_at": to_epoch(self.created_at),
        }


@dataclass(frozen=True)
class FailureCount:
    """What an item's end does to its policy's count of failed runs in a row.

    ``failed``: the item's run counts as failed; the first failed item of a run adds one to the
    count (and pauses the policy at ``pause_after`` with ``pause_reason``). A run without a
    failure sets the count back to 0 once all its sources were submitted and their items ended.
    """

    failed: bool
    pause_after: int
    pause_reason: str


def _document(text: str) -> dict[str, Any]:
    """A stored document; one that is not JSON reads as empty, which no ``Policy`` accepts, so
    the tick pauses that policy instead of failing on it (and on every policy claimed with it)."""
    try:
        document: dict[str, Any] = json.loads(text)
    except ValueError:
        return {}
    return document


def _sources(text: str | None) -> tuple[tuple[str, str], ...]:
    """A run's ``sources`` column: JSON ``[[instance id, label], ...]``."""
    try:
        listed = json.loads(text or "[]")
    except ValueError:
        return ()
    if not isinstance(listed, list):
        return ()
    return tuple(
        (str(pair[0]), str(pair[1])) for pair in listed if isinstance(pair, list) and len(pair) == 2
    )


def _moment(value: float) -> datetime:
    moment = from_epoch(value)
    assert moment is not None  # a NOT NULL column  # noqa: S101
    return moment
