"""What the ``notify`` function and the CLI's ``notify`` run: re-drive dead letters, queue a job
result handed in from outside (validated first), list dead letters, then deliver the outbox
(``wholeimage.service.outbox``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wholeimage.bootstrap import Dependencies
from wholeimage.errors import RequestInvalidError
from wholeimage.notify import NotifySummary, notifications_for
from wholeimage.results import JobResult
from wholeimage.service.outbox import channels, deliver_now
from wholeimage.store.records import Notification
from wholeimage.validation import JOB_RESULT_SCHEMA, validate

MAX_DEAD_LETTERS = 1000
DEFAULT_DEAD_LETTERS = 100


@dataclass(frozen=True)
class Redrive:
    """Which dead letters to make pending again: ``ids`` None means all of them."""

    ids: tuple[str, ...] | None

    @classmethod
    def parse(cls, text: str | None) -> Redrive | None:
        """``all`` or ``ID,ID,...`` (``?redrive=`` and ``--redrive``); None or empty: no re-drive."""
        if not text:
            return None
        if text == "all":
            return cls(ids=None)
        return cls(ids=tuple(part for part in text.split(",") if part))


@dataclass(frozen=True)
class DeliveryReport:
    """What one ``notify`` call did: re-drives, rows added for a result handed in, the run."""

    summary: NotifySummary
    redriven: int | None = None
    added: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The answer body of ``notify``."""
        answer: dict[str, Any] = {}
        if self.redriven is not None:
            answer["redriven"] = self.redriven
        if self.added is not None:
            answer["added"] = self.added
        return answer | self.summary.as_json()


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as callers see it: never the channel's URL."""

    id: str
    channel: str
    result_key: str
    attempts: int
    last_error: str | None
    created_at: datetime
    dead_at: datetime | None

    @classmethod
    def of(cls, row: Notification) -> DeadLetter:
        """The caller's view of an outbox row."""
        return cls(
            id=row.notification_id,
            channel=row.channel,
            result_key=row.result_key,
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at,
            dead_at=row.dead_at,
        )

    def as_json(self) -> dict[str, Any]:
        """Its JSON form, one entry of ``notify``'s ``dead_letters``."""
        return {
            "id": self.id,
            "channel": self.channel,
            "result_key": self.result_key,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "dead_at": self.dead_at.isoformat() if self.dead_at else None,
        }


def dead_letter_limit(text: str | None) -> int:
    """How many dead letters to list (``?limit=``): 1 to 1000, 100 when absent or empty.

    Raises:
        RequestInvalidError: not a whole number of at least 1.
    """
    if not text:
        return DEFAULT_DEAD_LETTERS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise RequestInvalidError(
            "?limit= must be a whole number of at least 1",
            details=[{"path": "query:limit", "message": "a whole number from 1 to 1000"}],
        )
    return min(limit, MAX_DEAD_LETTERS)


def dead_letters(deps: Dependencies, *, limit: int = DEFAULT_DEAD_LETTERS) -> list[DeadLetter]:
    """The dead letters, the latest to die first, at most ``limit``."""
    return [DeadLetter.of(row) for row in deps.store.dead_letters(limit=limit)]


def outbox_counts(deps: Dependencies) -> dict[str, int]:
    """How many outbox rows are in each state."""
    return deps.store.notification_counts()


def deliver(
    deps: Dependencies, *, result: Any | None = None, redrive: Redrive | None = None
) -> DeliveryReport:
    """Re-drive dead letters, queue a job result handed in from outside, then deliver.

    ``result`` is checked against ``schemas/job-result.schema.json`` before anything changes, so a
    refused body re-drives nothing.

    Raises:
        RequestInvalidError: ``result`` is not a job result (every failing field, by JSON path).
    """
    if result is not None:
        validate(JOB_RESULT_SCHEMA, result)
    now = datetime.now(UTC)
    redriven = None
    if redrive is not None:
        redriven = deps.store.redrive(
            list(redrive.ids) if redrive.ids is not None else None, now=now
        )
    added = None
    if result is not None:
        rows = notifications_for(JobResult.from_json(result), channels(deps), now=now)
        added = deps.store.add_notifications(rows)
    return DeliveryReport(summary=deliver_now(deps), redriven=redriven, added=added)
