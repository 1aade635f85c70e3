"""The state store's tables and indexes, described once; ``dialect`` renders them per engine.

``MIGRATIONS`` is the schema's history: migration N creates what its entry lists, each engine
records how far a database got (SQLite's ``user_version``, PostgreSQL's ``wholeimage_schema``)
and applies only the entries past that. An entry never changes once released: a database at
version N already has what entries 1..N describe.

To add an index, append one entry holding the ``Index``::

    (Index("jobs_trace", "jobs", ("trace",)),),

A new column would need a migration kind of its own (``ALTER TABLE``); there is none yet, as no
column was ever added.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wholeimage.store.records import (
    BACKUP_BLOCKING_SQL,
    BACKUP_KINDS_SQL,
    OUTSTANDING_SQL,
    UNRESOLVED_SQL,
)


class Type(Enum):
    """A column's logical type; each dialect names it in its own words."""

    TEXT = "text"
    INTEGER = "integer"
    REAL = "real"  # a float: times are epoch seconds (``records.to_epoch``)


@dataclass(frozen=True)
class Column:
    """One column: its name, its logical type and its constraints."""

    name: str
    type: Type
    not_null: bool = False
    primary_key: bool = False
    unique: bool = False
    default: str | None = None  # an SQL literal


@dataclass(frozen=True)
class Table:
    """One table: its columns in order, and unique constraints over several columns."""

    name: str
    columns: tuple[Column, ...]
    unique: tuple[tuple[str, ...], ...] = ()

    def column_names(self) -> tuple[str, ...]:
        """The names of its columns, in order."""
        return tuple(column.name for column in self.columns)


@dataclass(frozen=True)
class Index:
    """One index; ``where`` makes it partial (an SQL condition both engines read alike)."""

    name: str
    table: str
    columns: tuple[str, ...]
    unique: bool = False
    where: str | None = None


def _text(
    name: str, *, not_null: bool = False, primary_key: bool = False, unique: bool = False
) -> Column:
    return Column(name, Type.TEXT, not_null=not_null, primary_key=primary_key, unique=unique)


def _real(name: str, *, not_null: bool = False) -> Column:
    return Column(name, Type.REAL, not_null=not_null)


def _count(name: str) -> Column:
    return Column(name, Type.INTEGER, not_null=True, default="0")


JOBS = Table(
    "jobs",
    (
        _text("request_id", primary_key=True),
        _text("idempotency_key", unique=True),
        _text("request_fingerprint", not_null=True),
        _text("request_json", not_null=True),
        _text("requested_by"),
        _text("source_kind", not_null=True),
        _text("source_id", not_null=True),
        _text("status", not_null=True),
        _text("ims_job_id", unique=True),
        _text("image_id"),
        _real("process_percent"),
        _text("error_code"),
        _text("fail_reason"),
        _real("created_at", not_null=True),
        _real("updated_at", not_null=True),
        _real("submitted_at"),
        _real("ended_at"),
        _count("poll_attempts"),
        _real("next_poll_at"),
        _real("deadline_at"),
        _text("lease_owner"),
        _real("lease_expires_at"),
        _text("trace"),
    ),
)

NOTIFICATIONS = Table(
    "notifications",
    (
        _text("notification_id", primary_key=True),
        _text("result_key", not_null=True),
        _text("channel", not_null=True),
        _text("result_json", not_null=True),
        _text("state", not_null=True),
        _count("attempts"),
        _real("created_at", not_null=True),
        _real("next_attempt_at", not_null=True),
        _text("lease_owner"),
        _real("lease_expires_at"),
        _real("delivered_at"),
        _text("message_id"),
        _text("last_error"),
        _real("dead_at"),
    ),
    unique=(("result_key", "channel"),),
)


# Lifecycle policies (docs/policies.md): the policy documents and their state, each slot's run,
# the run's item per source (its create job), and the images retention deletes.
POLICIES = Table(
    "policies",
    (
        _text("name", primary_key=True),
        _text("document", not_null=True),
        Column("enabled", Type.INTEGER, not_null=True, default="1"),
        Column("paused", Type.INTEGER, not_null=True, default="0"),
        _text("paused_reason"),
        _count("failures"),
        _real("next_slot_at"),
        _real("last_slot_at"),
        _text("lease_owner"),
        _real("lease_expires_at"),
        _real("created_at", not_null=True),
        _real("updated_at", not_null=True),
    ),
)

POLICY_RUNS = Table(
    "policy_runs",
    (
        _text("run_id", primary_key=True),
        _text("policy", not_null=True),
        _real("slot_at", not_null=True),
        _count("skipped"),
        _real("skipped_first"),
        _text("state", not_null=True),
        _count("failed"),
        _text("sources", not_null=True),
        _text("paused_reason"),
        _real("created_at", not_null=True),
        _real("reported_at"),
    ),
)

POLICY_ITEMS = Table(
    "policy_items",
    (
        _text("item_id", primary_key=True),
        _text("run_id", not_null=True),
        _text("policy", not_null=True),
        _text("source_id", not_null=True),
        _text("request_id"),
        _text("state", not_null=True),
        _text("image_name", not_null=True),
        _text("image_id"),
        _text("error_code"),
        _text("detail"),
        _count("checks"),
        _real("next_check_at"),
        _real("created_at", not_null=True),
        _real("updated_at", not_null=True),
    ),
)

IMAGE_DELETIONS = Table(
    "image_deletions",
    (
        _text("image_id", primary_key=True),
        _text("policy", not_null=True),
        _text("source_id", not_null=True),
        _text("run_id", not_null=True),
        _text("image_name", not_null=True),
        Column("delete_backup", Type.INTEGER, not_null=True),
        _text("reason", not_null=True),
        _text("state", not_null=True),
        _count("attempts"),
        _real("next_attempt_at", not_null=True),
        _real("sent_at"),
        _text("lease_owner"),
        _real("lease_expires_at"),
        _text("last_error"),
        _real("created_at", not_null=True),
        _real("ended_at"),
    ),
)


@dataclass(frozen=True)
class Statement:
    """A data change a migration makes, in SQL both engines read alike."""

    sql: str


# What one migration does, in order: tables, the indexes over them, data changes.
Migration = tuple[Table | Index | Statement, ...]

# The error code of jobs left unresolved by a version that sent no marker tag: IMS cannot be
# asked about them, so reconciliation leaves them to an operator (docs/reconcile.md §6).
NO_MARKER_CODE = "WHOLEIMAGE.NO_MARKER"

MIGRATIONS: tuple[Migration, ...] = (
    (
        JOBS,
        # One backup, one image: at most one job per backup in a blocking state, even under a race.
        Index(
            "jobs_backup_once",
            "jobs",
            ("source_id",),
            unique=True,
            where=f"source_kind IN ({BACKUP_KINDS_SQL}) AND status IN ({BACKUP_BLOCKING_SQL})",
        ),
        # Due jobs only: a partial index over outstanding rows, ordered by next poll time.
        Index("jobs_due", "jobs", ("next_poll_at",), where=f"status IN ({OUTSTANDING_SQL})"),
    ),
    (
        NOTIFICATIONS,
        Index(
            "notifications_due", "notifications", ("next_attempt_at",), where="state = 'PENDING'"
        ),
        Index("notifications_dead", "notifications", ("dead_at",), where="state = 'DEAD'"),
    ),
    # `list` reads the newest jobs first.
    (Index("jobs_created", "jobs", ("created_at",)),),
    # `check` reconciles the few jobs whose submission outcome is unknown; those already
    # unresolved were submitted without a marker, so no lookup could prove anything about them.
    (
        Index("jobs_unresolved", "jobs", ("updated_at",), where=f"status IN ({UNRESOLVED_SQL})"),
        Statement(
            f"UPDATE jobs SET error_code = '{NO_MARKER_CODE}' WHERE status IN ({UNRESOLVED_SQL})"
        ),
    ),
    # Lifecycle policies: a tick finds due policies, open items and due deletions through
    # partial indexes, so a thousand policies with nothing due cost one index probe each.
    (
        POLICIES,
        Index("policies_due", "policies", ("next_slot_at",), where="enabled = 1 AND paused = 0"),
        POLICY_RUNS,
        Index("policy_runs_open", "policy_runs", ("created_at",), where="state <> 'REPORTED'"),
        POLICY_ITEMS,
        Index("policy_items_run", "policy_items", ("run_id",)),
        Index("policy_items_open", "policy_items", ("request_id",), where="state = 'CREATING'"),
        IMAGE_DELETIONS,
        Index(
            "image_deletions_due",
            "image_deletions",
            ("next_attempt_at",),
            where="state IN ('PENDING', 'SENT')",
        ),
        Index("image_deletions_run", "image_deletions", ("run_id",)),
    ),
)
