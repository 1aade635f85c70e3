"""The lifecycle policies' part of the state store, written once over ``SqlJobStore``'s primitives.

Contract (each method is one transaction; docs/policies.md §4 tells the whole story):

- ``put_policy`` stores a policy document (new, or replacing one of the same name) and, when
  asked, its next slot; ``get_policy``, ``list_policies``, ``delete_policy`` as named;
  ``pause_policy`` / ``resume_policy`` set the pause kept beside the document.
- ``claim_due_policies`` leases enabled, unpaused policies whose next slot is due, earliest
  first; concurrent claims never return the same policy. ``release_policy`` hands one back,
  moving its next slot on, only while the caller holds the lease.
- ``open_run`` records a slot's run once; ``add_item`` records what one source did in it once
  (a create refused for certain counts as a failure at once); ``ended_items`` lists the items
  whose create job has ended; ``close_item`` records that item's end once, with the deletions
  retention decided and the policy's failure count (which may pause it), in one transaction.
- ``claim_deletions`` leases due deletions as ``claim_due_policies`` leases policies;
  ``settle_deletion`` records one attempt's outcome only while the lease is held.
- ``unreported_runs``, ``run_items``, ``run_deletions`` and ``mark_run_reported`` are how a
  run's single message is written: ``reported`` changes once.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from wholeimage.statuses import ENDED
from wholeimage.store.dialect import Dialect
from wholeimage.store.policy_records import (
    DELETION_ENDED,
    ITEM_CREATING,
    RUN_CREATING,
    RUN_OPEN,
    RUN_REPORTED,
    FailureCount,
    ImageDeletion,
    PolicyItem,
    PolicyRecord,
    PolicyRun,
)
from wholeimage.store.records import from_epoch, status_list, to_epoch

Handle = TypeVar("Handle")
Row = dict[str, Any]

ENDED_SQL = status_list(ENDED)

_LEASABLE = "(lease_expires_at IS NULL OR lease_expires_at < :now)"
_DUE_POLICIES = f"enabled = 1 AND paused = 0 AND next_slot_at <= :now AND {_LEASABLE}"
_DUE_DELETIONS = f"state IN ('PENDING', 'SENT') AND next_attempt_at <= :now AND {_LEASABLE}"
# A run whose sources were all submitted and whose items all ended without a failure breaks
# its policy's row of failed runs (when that happens, not when its deletions end and it is
# reported: a later run may have failed meanwhile, or may fail before).
_RESET_FAILURES = (
    "UPDATE policies SET failures = 0 WHERE name = (SELECT r.policy FROM policy_runs r "
    f"WHERE r.run_id = :run_id AND r.failed = 0 AND r.state <> '{RUN_CREATING}' AND NOT EXISTS "
    f"(SELECT 1 FROM policy_items i WHERE i.run_id = r.run_id AND i.state = '{ITEM_CREATING}'))"
)


class PolicyStoreMixin(Generic[Handle]):
    """The policy methods of ``SqlJobStore`` (which supplies the primitives below)."""

    dialect: ClassVar[Dialect]

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Handle]: ...

    @abstractmethod
    def _read(self) -> AbstractContextManager[Handle]: ...

    @abstractmethod
    def _run(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> int: ...

    @abstractmethod
    def _one(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> Row | None: ...

    @abstractmethod
    def _all(self, handle: Handle, sql: str, params: Mapping[str, Any]) -> list[Row]: ...

    # --- policies ----------------------------------------------------------------------------

    def put_policy(
        self,
        name: str,
        document: dict[str, Any],
        *,
        enabled: bool,
        next_slot_at: datetime | None,
        reschedule: bool,
        now: datetime,
    ) -> tuple[PolicyRecord, bool]:
        """Store ``document`` under ``name``; the record and whether it is new.

        A new policy gets ``next_slot_at``; a replaced one keeps its own unless ``reschedule``
        (its schedule changed, or it was disabled and is enabled again).
        """
        params = {
            "name": name,
            "document": json.dumps(document, sort_keys=True, ensure_ascii=False),
            "enabled": int(enabled),
            "next_slot_at": to_epoch(next_slot_at),
            "reschedule": int(reschedule),
            "now": to_epoch(now),
        }
        with self._transaction() as handle:
            updated = self._run(
                handle,
                "UPDATE policies SET document = :document, enabled = :enabled, updated_at = :now, "
                "next_slot_at = CASE WHEN :reschedule = 1 THEN :next_slot_at ELSE next_slot_at END "
                "WHERE name = :name",
                params,
            )
            if not updated:
                sql = self.dialect.insert(
                    "policies",
                    ("name", "document", "enabled", "next_slot_at", "created_at", "updated_at"),
                    ignore_duplicates=True,
                )
                inserted = self._run(
                    handle,
                    sql,
                    {**params, "created_at": params["now"], "updated_at": params["now"]},
                )
                if not inserted:  # created meanwhile by another apply: replace it
                    self._run(
                        handle,
                        "UPDATE policies SET document = :document, enabled = :enabled, "
                        "updated_at = :now, next_slot_at = :next_slot_at WHERE name = :name",
                        params,
                    )
            row = self._one(handle, "SELECT * FROM policies WHERE name = :name", {"name": name})
        assert row is not None  # written in this transaction  # noqa: S101
        return PolicyRecord.from_row(row), not updated

    def get_policy(self, name: str) -> PolicyRecord | None:
        """The policy called ``name``."""
        with self._read() as handle:
            row = self._one(handle, "SELECT * FROM policies WHERE name = :name", {"name": name})
        return PolicyRecord.from_row(row) if row is not None else None

    def list_policies(self) -> list[PolicyRecord]:
        """Every policy, by name."""
        with self._read() as handle:
            rows = self._all(
                handle, f"SELECT * FROM policies ORDER BY {self.dialect.in_byte_order('name')}", {}
            )
        return [PolicyRecord.from_row(row) for row in rows]

    def delete_policy(self, name: str) -> bool:
        """Forget the policy (its runs, items and deletions stay, so none goes untracked)."""
        with self._transaction() as handle:
            return self._run(handle, "DELETE FROM policies WHERE name = :name", {"name": name}) == 1

    def pause_policy(self, name: str, *, reason: str, now: datetime) -> bool:
        """Pause the policy with ``reason``; False when there is no such policy."""
        with self._transaction() as handle:
            return (
                self._run(
                    handle,
                    "UPDATE policies SET paused = 1, paused_reason = :reason, updated_at = :now "
                    "WHERE name = :name",
                    {"name": name, "reason": reason, "now": to_epoch(now)},
                )
                == 1
            )

    def resume_policy(self, name: str, *, next_slot_at: datetime | None, now: datetime) -> bool:
        """Unpause the policy, its failure count at 0 and its next slot ``next_slot_at``."""
        with self._transaction() as handle:
            return (
                self._run(
                    handle,
                    "UPDATE policies SET paused = 0, paused_reason = NULL, failures = 0, "
                    "next_slot_at = :next_slot_at, updated_at = :now WHERE name = :name",
                    {"name": name, "next_slot_at": to_epoch(next_slot_at), "now": to_epoch(now)},
                )
                == 1
            )

    def claim_due_policies(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[PolicyRecord]:
        """Lease up to ``limit`` due policies, earliest slot first (see the module docstring)."""
        rows = self._lease_rows(
            "policies",
            "name",
            _DUE_POLICIES,
            "next_slot_at",
            now=now,
            owner=owner,
            lease_until=lease_until,
            limit=limit,
        )
        return [PolicyRecord.from_row(row) for row in rows]

    def _lease_rows(
        self,
        table: str,
        key: str,
        due: str,
        order: str,
        *,
        now: datetime,
        owner: str,
        lease_until: datetime,
        limit: int,
    ) -> list[Row]:
        """Lease up to ``limit`` rows of ``table`` meeting ``due``, by ``order`` then ``key``.

        One conditional update a row, re-checking ``due``: of two concurrent claimers one wins
        (in PostgreSQL the loser's update waits for the winner's row lock, then skips).
        """
        params = {"now": to_epoch(now), "owner": owner, "lease_until": to_epoch(lease_until)}
        claimed: list[Row] = []
        with self._transaction() as handle:
            rows = self._all(
                handle,
                f"SELECT {key} FROM {table} WHERE {due} "
                f"ORDER BY {order}, {self.dialect.in_byte_order(key)} LIMIT :limit",
                {**params, "limit": limit},
            )
            for row in rows:
                leased = self._run(
                    handle,
                    f"UPDATE {table} SET lease_owner = :owner, lease_expires_at = :lease_until "
                    f"WHERE {key} = :key AND {due}",
                    {**params, "key": row[key]},
                )
                if leased == 1:
                    found = self._one(
                        handle, f"SELECT * FROM {table} WHERE {key} = :key", {"key": row[key]}
                    )
                    if found is not None:
                        claimed.append(found)
        return claimed

    def release_policy(
        self,
        name: str,
        *,
        owner: str,
        next_slot_at: datetime | None,
        last_slot_at: datetime | None,
        now: datetime,
        hold_until: datetime | None = None,
    ) -> bool:
        """Hand a leased policy back with its next slot; False when the lease was lost.

        ``hold_until`` keeps it from being claimed again before then (IMS asked us to wait),
        while ``next_slot_at`` stays at the unfinished slot.
        """
        with self._transaction() as handle:
            return (
                self._run(
                    handle,
                    "UPDATE policies SET next_slot_at = :next_slot_at, "
                    "last_slot_at = COALESCE(:last_slot_at, last_slot_at), "
                    "lease_owner = CASE WHEN :hold = 1 THEN lease_owner ELSE NULL END, "
                    "lease_expires_at = :hold_until, updated_at = :now "
                    "WHERE name = :name AND lease_owner = :owner",
                    {
                        "name": name,
                        "owner": owner,
                        "next_slot_at": to_epoch(next_slot_at),
                        "last_slot_at": to_epoch(last_slot_at),
                        "hold_until": to_epoch(hold_until),
                        # A flag, not ``:hold_until IS NULL``: PostgreSQL cannot type a bare NULL.
                        "hold": int(hold_until is not None),
                        "now": to_epoch(now),
                    },
                )
                == 1
            )

    def next_policy_slot_at(self) -> datetime | None:
        """When the earliest enabled, unpaused policy is next due."""
        with self._read() as handle:
            row = self._one(
                handle,
                "SELECT MIN(next_slot_at) AS due FROM policies WHERE enabled = 1 AND paused = 0",
                {},
            )
        return from_epoch(row["due"]) if row else None

    # --- runs and items ----------------------------------------------------------------------

    def open_run(self, run: PolicyRun) -> bool:
        """Record ``run`` (state ``CREATING``) unless it exists; earlier runs of its policy
        still creating are closed for creation (their slot has passed). True when new."""
        row = {
            "run_id": run.run_id,
            "policy": run.policy,
            "slot_at": to_epoch(run.slot_at),
            "skipped": run.skipped,
            "skipped_first": to_epoch(run.skipped_first),
            "state": RUN_CREATING,
            "sources": json.dumps([list(pair) for pair in run.sources]),
            "created_at": to_epoch(run.created_at),
        }
        with self._transaction() as handle:
            added = self._run(
                handle, self.dialect.insert("policy_runs", tuple(row), ignore_duplicates=True), row
            )
            self._run(
                handle,
                "UPDATE policy_runs SET state = :open WHERE policy = :policy AND state = :creating "
                "AND slot_at < :slot_at",
                {
                    "open": RUN_OPEN,
                    "creating": RUN_CREATING,
                    "policy": run.policy,
                    "slot_at": row["slot_at"],
                },
            )
        return added == 1

    def close_run_creation(self, run_id: str) -> bool:
        """Every source of the run was submitted: the run waits for its items' ends."""
        with self._transaction() as handle:
            closed = (
                self._run(
                    handle,
                    "UPDATE policy_runs SET state = :open WHERE run_id = :run_id AND state = :creating",
                    {"open": RUN_OPEN, "creating": RUN_CREATING, "run_id": run_id},
                )
                == 1
            )
            if closed:  # its items may all have ended already
                self._run(handle, _RESET_FAILURES, {"run_id": run_id})
            return closed

    def get_run(self, run_id: str) -> PolicyRun | None:
        """One run."""
        with self._read() as handle:
            row = self._one(
                handle, "SELECT * FROM policy_runs WHERE run_id = :run_id", {"run_id": run_id}
            )
        return PolicyRun.from_row(row) if row is not None else None

    def add_item(
        self, item: PolicyItem, *, failure: FailureCount | None = None, now: datetime
    ) -> tuple[bool, bool]:
        """Record ``item`` unless its (run, source) has one; an item ``FAILED`` from the start
        counts ``failure`` in the same transaction. Returns (new, paused by this failure)."""
        with self._transaction() as handle:
            row = item.to_row()
            added = self._run(
                handle, self.dialect.insert("policy_items", tuple(row), ignore_duplicates=True), row
            )
            paused = False
            if added and failure is not None:
                paused = self._count_failure(handle, item, failure, now)
        return added == 1, paused

    def get_item(self, item_id: str) -> PolicyItem | None:
        """One item."""
        with self._read() as handle:
            row = self._one(
                handle, "SELECT * FROM policy_items WHERE item_id = :item_id", {"item_id": item_id}
            )
        return PolicyItem.from_row(row) if row is not None else None

    def ended_items(self, *, now: datetime, limit: int) -> list[PolicyItem]:
        """Items still ``CREATING`` whose create job has ended and which are not waiting to
        ask IMS again (``defer_item``), oldest first: one that waits never holds others up."""
        with self._read() as handle:
            rows = self._all(
                handle,
                "SELECT i.*, j.status AS job_status, j.image_id AS job_image_id, "
                "j.error_code AS job_error_code, j.fail_reason AS job_fail_reason "
                "FROM policy_items i JOIN jobs j ON j.request_id = i.request_id "
                f"WHERE i.state = '{ITEM_CREATING}' AND j.status IN ({ENDED_SQL}) "
                "AND (i.next_check_at IS NULL OR i.next_check_at <= :now) "
                f"ORDER BY i.created_at, {self.dialect.in_byte_order('i.item_id')} LIMIT :limit",
                {"limit": limit, "now": to_epoch(now)},
            )
        items = []
        for row in rows:
            item = PolicyItem.from_row(row)
            items.append(
                PolicyItem(
                    **{
                        **item.__dict__,
                        "image_id": row["job_image_id"],
                        "error_code": row["job_error_code"],
                        "detail": row["job_fail_reason"],
                    }
                )
            )
        return items

    def defer_item(self, item: PolicyItem, *, until: datetime, detail: str, now: datetime) -> bool:
        """Retention could not run for a ``CREATING`` item yet: count it, ask again ``until``."""
        with self._transaction() as handle:
            return (
                self._run(
                    handle,
                    "UPDATE policy_items SET checks = checks + 1, next_check_at = :until, "
                    "detail = :detail, updated_at = :now "
                    f"WHERE item_id = :item_id AND state = '{ITEM_CREATING}'",
                    {
                        "until": to_epoch(until),
                        "detail": detail,
                        "now": to_epoch(now),
                        "item_id": item.item_id,
                    },
                )
                == 1
            )

    def close_item(
        self,
        item: PolicyItem,
        *,
        state: str,
        deletions: list[ImageDeletion],
        failure: FailureCount,
        now: datetime,
    ) -> tuple[bool, bool]:
        """Record the end of a ``CREATING`` item once, with the deletions retention decided
        and its policy's failure count. Returns (applied, paused by this failure)."""
        with self._transaction() as handle:
            applied = self._run(
                handle,
                "UPDATE policy_items SET state = :state, image_id = :image_id, "
                "error_code = :error_code, detail = :detail, updated_at = :now "
                f"WHERE item_id = :item_id AND state = '{ITEM_CREATING}'",
                {
                    "state": state,
                    "image_id": item.image_id,
                    "error_code": item.error_code,
                    "detail": item.detail,
                    "now": to_epoch(now),
                    "item_id": item.item_id,
                },
            )
            if applied != 1:
                return False, False
            for deletion in deletions:
                row = deletion.to_row()
                self._run(
                    handle,
                    self.dialect.insert("image_deletions", tuple(row), ignore_duplicates=True),
                    row,
                )
                # One that failed before is tried again, in this run (whose message says how
                # it ended): a failed deletion is never dropped in silence.
                self._run(
                    handle,
                    "UPDATE image_deletions SET state = 'PENDING', attempts = 0, "
                    "run_id = :run_id, reason = :reason, next_attempt_at = :next_attempt_at, "
                    "last_error = NULL, sent_at = NULL, ended_at = NULL, lease_owner = NULL, "
                    "lease_expires_at = NULL WHERE image_id = :image_id AND state = 'FAILED'",
                    {
                        "run_id": row["run_id"],
                        "reason": row["reason"],
                        "next_attempt_at": row["next_attempt_at"],
                        "image_id": row["image_id"],
                    },
                )
            paused = self._count_failure(handle, item, failure, now)
            if not failure.failed:
                self._run(handle, _RESET_FAILURES, {"run_id": item.run_id})
        return True, paused

    def _count_failure(
        self, handle: Handle, item: PolicyItem, failure: FailureCount, now: datetime
    ) -> bool:
        """Count the item's run as failed, once a run; True when this pauses the policy."""
        if not failure.failed:
            return False
        first = self._run(
            handle,
            "UPDATE policy_runs SET failed = 1 WHERE run_id = :run_id AND failed = 0",
            {"run_id": item.run_id},
        )
        if not first:
            return False
        self._run(
            handle,
            "UPDATE policies SET failures = failures + 1 WHERE name = :name",
            {"name": item.policy},
        )
        return (
            self._run(
                handle,
                "UPDATE policies SET paused = 1, paused_reason = :reason, updated_at = :now "
                "WHERE name = :name AND paused = 0 AND failures >= :limit",
                {
                    "name": item.policy,
                    "reason": failure.pause_reason,
                    "limit": failure.pause_after,
                    "now": to_epoch(now),
                },
            )
            == 1
        )

    def unreported_runs(self, *, limit: int) -> list[PolicyRun]:
        """Runs whose sources were all submitted, whose items and deletions have all ended, and
        whose message is not written yet."""
        with self._read() as handle:
            rows = self._all(
                handle,
                f"SELECT * FROM policy_runs r WHERE r.state = '{RUN_OPEN}' "
                # Only runs that can be reported now: one still waiting never holds others up.
                "AND NOT EXISTS (SELECT 1 FROM policy_items i WHERE i.run_id = r.run_id "
                f"AND i.state = '{ITEM_CREATING}') "
                "AND NOT EXISTS (SELECT 1 FROM image_deletions d WHERE d.run_id = r.run_id "
                "AND d.state IN ('PENDING', 'SENT')) "
                f"ORDER BY r.created_at, {self.dialect.in_byte_order('r.run_id')} LIMIT :limit",
                {"limit": limit},
            )
        return [PolicyRun.from_row(row) for row in rows]

    def run_items(self, run_id: str) -> list[PolicyItem]:
        """The items of one run, by source."""
        with self._read() as handle:
            rows = self._all(
                handle,
                "SELECT * FROM policy_items WHERE run_id = :run_id "
                f"ORDER BY {self.dialect.in_byte_order('source_id')}",
                {"run_id": run_id},
            )
        return [PolicyItem.from_row(row) for row in rows]

    def run_deletions(self, run_id: str) -> list[ImageDeletion]:
        """The deletions one run's retention decided."""
        with self._read() as handle:
            rows = self._all(
                handle,
                "SELECT * FROM image_deletions WHERE run_id = :run_id "
                f"ORDER BY {self.dialect.in_byte_order('image_id')}",
                {"run_id": run_id},
            )
        return [ImageDeletion.from_row(row) for row in rows]

    def note_run_paused(self, run_id: str, *, reason: str) -> None:
        """The policy paused itself during this run: its message says so."""
        with self._transaction() as handle:
            self._run(
                handle,
                "UPDATE policy_runs SET paused_reason = :reason WHERE run_id = :run_id",
                {"run_id": run_id, "reason": reason},
            )

    def mark_run_reported(self, run_id: str, *, now: datetime) -> bool:
        """The run's message is in the outbox: True the first time."""
        with self._transaction() as handle:
            reported = (
                self._run(
                    handle,
                    "UPDATE policy_runs SET state = :reported, reported_at = :now "
                    "WHERE run_id = :run_id AND state = :open",
                    {
                        "reported": RUN_REPORTED,
                        "open": RUN_OPEN,
                        "run_id": run_id,
                        "now": to_epoch(now),
                    },
                )
                == 1
            )
            return reported

    def policy_runs(self, policy: str, *, limit: int = 20) -> list[PolicyRun]:
        """A policy's latest runs, newest first."""
        with self._read() as handle:
            rows = self._all(
                handle,
                "SELECT * FROM policy_runs WHERE policy = :policy ORDER BY slot_at DESC LIMIT :limit",
                {"policy": policy, "limit": limit},
            )
        return [PolicyRun.from_row(row) for row in rows]

    # --- deletions ---------------------------------------------------------------------------

    def claim_deletions(
        self, *, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[ImageDeletion]:
        """Lease up to ``limit`` due deletions, earliest first."""
        rows = self._lease_rows(
            "image_deletions",
            "image_id",
            _DUE_DELETIONS,
            "next_attempt_at",
            now=now,
            owner=owner,
            lease_until=lease_until,
            limit=limit,
        )
        return [ImageDeletion.from_row(row) for row in rows]

    def settle_deletion(
        self,
        image_id: str,
        *,
        owner: str,
        state: str,
        attempted: bool,
        next_attempt_at: datetime,
        last_error: str | None,
        now: datetime,
    ) -> bool:
        """Record one attempt's outcome, only while ``owner`` holds the lease."""
        ended = to_epoch(now) if state in DELETION_ENDED else None
        with self._transaction() as handle:
            return (
                self._run(
                    handle,
                    "UPDATE image_deletions SET state = :state, attempts = attempts + :attempted, "
                    "next_attempt_at = :next_attempt_at, last_error = :last_error, "
                    "sent_at = CASE WHEN :attempted = 1 THEN :now ELSE sent_at END, "
                    "ended_at = :ended_at, lease_owner = NULL, lease_expires_at = NULL "
                    "WHERE image_id = :image_id AND lease_owner = :owner "
                    "AND state IN ('PENDING', 'SENT')",
                    {
                        "state": state,
                        "attempted": int(attempted),
                        "next_attempt_at": to_epoch(next_attempt_at),
                        "last_error": last_error,
                        "now": to_epoch(now),
                        "ended_at": ended,
                        "image_id": image_id,
                        "owner": owner,
                    },
                )
                == 1
            )

    def list_deletions(self, *, policy: str | None = None, limit: int = 100) -> list[ImageDeletion]:
        """Deletions, newest first, of one policy or all."""
        where = "WHERE policy = :policy " if policy is not None else ""
        with self._read() as handle:
            rows = self._all(
                handle,
                f"SELECT * FROM image_deletions {where}ORDER BY created_at DESC LIMIT :limit",
                {"policy": policy, "limit": limit},
            )
        return [ImageDeletion.from_row(row) for row in rows]
