"""Managing lifecycle policies: what ``PUT``/``GET``/``DELETE /policies`` of the ``create``
function and the CLI's ``policy`` commands run (docs/policies.md §2).

A policy is validated (``wholeimage.policies``) and stored with the state kept beside it: whether
it is paused and why, its failures in a row, its next slot. Running slots is the engine's
(``wholeimage.lifecycle``); this module only decides the next slot a policy gets when it is
applied or resumed, always the first one after now, so a slot that fell before a policy existed,
or while it was disabled or paused, never runs late.

The ``create`` function serves these, so nothing here imports a chat channel, the outbox or the
poller (the import-linter contract on ``wholeimage.web.create``), and croniter is loaded only
when a schedule is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wholeimage.bootstrap import Dependencies
from wholeimage.errors import ConfigurationError, NotFoundError, RequestInvalidError
from wholeimage.policies import Policy, policy_from_document
from wholeimage.settings import Settings
from wholeimage.store.base import SqlJobStore
from wholeimage.store.policy_records import ImageDeletion, PolicyRecord, PolicyRun

OPERATOR_PAUSE_REASON = "paused by an operator"
# How much history ``show_policy`` includes: enough to see a pattern, small enough to read.
SHOWN_RUNS = 10
SHOWN_DELETIONS = 20


@dataclass(frozen=True)
class PolicyDetails:
    """A policy with its latest runs and deletions, newest first (``show_policy``)."""

    record: PolicyRecord
    runs: list[PolicyRun]
    deletions: list[ImageDeletion]


def policy_store(deps: Dependencies) -> SqlJobStore[Any]:
    """The store with its policy methods (``JobStore``, the port's type, does not declare them;
    both of wholeimage's stores have them, ``store.policy_store``).

    Raises:
        ConfigurationError: the store handed in keeps no policies.
    """
    store = deps.store
    if not isinstance(store, SqlJobStore):
        raise ConfigurationError("the state store of WHOLEIMAGE_STATE_URL keeps no policies")
    return store


# --- applying ------------------------------------------------------------------------------------


def validate_policy(payload: Any, settings: Settings) -> Policy:
    """The policy ``payload`` describes, under the rules of ``WHOLEIMAGE_CLOUD`` and with only
    channels this process has configured.

    Channel names are checked only where some channel is configured: the ``create`` function,
    which serves ``PUT /policies``, is deployed without the channel settings (infra/huaweicloud
    and infra/gcp give them to check and notify only), so there no name can be checked, and
    refusing them all would make ``channels`` unusable over HTTP.

    Raises:
        RequestInvalidError: every failing field, by JSON path.
        ConfigurationError: the configured channels are malformed.
    """
    policy = policy_from_document(payload, cloud=settings.cloud)
    if policy.channels:
        configured = [channel.name for channel in settings.notification_channels()]
        if configured:
            unknown = [
                {
                    "path": f"$.channels[{index}]",
                    "message": f"is not a configured channel; configured: {', '.join(configured)}",
                }
                for index, name in enumerate(policy.channels)
                if name not in configured
            ]
            if unknown:
                count = len(unknown)
                raise RequestInvalidError(
                    f"the policy is invalid: {count} problem{'s' if count != 1 else ''}",
                    details=unknown,
                )
    return policy


def store_policy(
    deps: Dependencies, policy: Policy, *, now: datetime | None = None
) -> tuple[PolicyRecord, bool]:
    """Store a validated policy; the record and whether it is new.

    A new policy's first slot is the first after ``now``. A replaced one keeps its next slot
    unless its schedule changed or it goes from disabled to enabled: then the first after
    ``now``. A pause stays: applying is not resuming.
    """
    moment = now or datetime.now(UTC)
    store = policy_store(deps)
    document = policy.document()
    existing = store.get_policy(policy.name)
    reschedule = existing is None or _reschedules(existing, policy)
    return store.put_policy(
        policy.name,
        document,
        enabled=policy.enabled,
        next_slot_at=policy.next_slot_after(moment) if reschedule else None,
        reschedule=reschedule,
        now=moment,
    )


def _reschedules(existing: PolicyRecord, policy: Policy) -> bool:
    """Whether replacing ``existing`` with ``policy`` moves its next slot."""
    before = existing.document.get("schedule")
    schedule_changed = not isinstance(before, dict) or policy.schedule.model_dump() != {
        "timezone": "UTC",
        **before,
    }
    enabled_again = policy.enabled and not existing.enabled
    # A stored policy without a next slot would never run: whatever replaces it gets one.
    return schedule_changed or enabled_again or existing.next_slot_at is None


def apply_policy(
    deps: Dependencies, payload: Any, *, now: datetime | None = None
) -> tuple[PolicyRecord, bool]:
    """Validate ``payload`` and store it as its policy; the record and whether it is new.

    Raises:
        RequestInvalidError: every failing field, by JSON path; nothing is stored.
    """
    return store_policy(deps, validate_policy(payload, deps.settings), now=now)


# --- reading -------------------------------------------------------------------------------------


def list_policies(deps: Dependencies) -> list[PolicyRecord]:
    """Every policy, by name."""
    return policy_store(deps).list_policies()


def show_policy(deps: Dependencies, name: str) -> PolicyDetails:
    """One policy with its latest runs and deletions.

    Raises:
        NotFoundError: there is no such policy.
    """
    store = policy_store(deps)
    return PolicyDetails(
        record=_existing(store, name),
        runs=store.policy_runs(name, limit=SHOWN_RUNS),
        deletions=store.list_deletions(policy=name, limit=SHOWN_DELETIONS),
    )


def _existing(store: SqlJobStore[Any], name: str) -> PolicyRecord:
    record = store.get_policy(name)
    if record is None:
        raise NotFoundError(f"there is no policy {name!r}")
    return record


# --- pausing, resuming, deleting -----------------------------------------------------------------


def pause_policy(deps: Dependencies, name: str, *, now: datetime | None = None) -> PolicyRecord:
    """Pause the policy: no slot of it runs until it is resumed. Pausing a paused policy changes
    nothing, so the reason it paused itself (failures) is not overwritten.

    Raises:
        NotFoundError: there is no such policy.
    """
    store = policy_store(deps)
    record = _existing(store, name)
    if record.paused:
        return record
    if not store.pause_policy(name, reason=OPERATOR_PAUSE_REASON, now=now or datetime.now(UTC)):
        raise NotFoundError(f"there is no policy {name!r}")  # deleted meanwhile
    return _existing(store, name)


def resume_policy(deps: Dependencies, name: str, *, now: datetime | None = None) -> PolicyRecord:
    """Resume a paused policy, its failures counted from 0 and its next slot the first after
    now: slots that fell while it was paused are not run. Resuming a policy that is not paused
    changes nothing (its due slot, if any, still runs).

    Raises:
        NotFoundError: there is no such policy.
    """
    moment = now or datetime.now(UTC)
    store = policy_store(deps)
    record = _existing(store, name)
    if not record.paused:
        return record
    # The document was validated when it was stored: read back, not checked again (the cloud's
    # rules may have changed since, which is for the next apply to say).
    policy = Policy.model_validate(record.document)
    if not store.resume_policy(name, next_slot_at=policy.next_slot_after(moment), now=moment):
        raise NotFoundError(f"there is no policy {name!r}")  # deleted meanwhile
    return _existing(store, name)


def delete_policy(deps: Dependencies, name: str) -> None:
    """Forget the policy; its images, runs and pending deletions stay tracked.

    Raises:
        NotFoundError: there is no such policy.
    """
    if not policy_store(deps).delete_policy(name):
        raise NotFoundError(f"there is no policy {name!r}")


# --- views ---------------------------------------------------------------------------------------


def _moment(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def policy_view(record: PolicyRecord) -> dict[str, Any]:
    """A policy as callers see it (``schemas/policy-view.schema.json``)."""
    return {
        "name": record.name,
        "document": record.document,
        "enabled": record.enabled,
        "paused": record.paused,
        "paused_reason": record.paused_reason,
        "failures": record.failures,
        "next_slot_at": _moment(record.next_slot_at),
        "last_slot_at": _moment(record.last_slot_at),
        "created_at": _moment(record.created_at),
        "updated_at": _moment(record.updated_at),
    }


def run_view(run: PolicyRun) -> dict[str, Any]:
    """One run of a policy as callers see it."""
    return {
        "run_id": run.run_id,
        "slot_at": _moment(run.slot_at),
        "state": run.state,
        "skipped": run.skipped,
        "skipped_first": _moment(run.skipped_first),
        "paused_reason": run.paused_reason,
        "created_at": _moment(run.created_at),
        "reported_at": _moment(run.reported_at),
    }


def deletion_view(deletion: ImageDeletion) -> dict[str, Any]:
    """One image retention rotates out, as callers see it."""
    return {
        "image_id": deletion.image_id,
        "image_name": deletion.image_name,
        "source_id": deletion.source_id,
        "run_id": deletion.run_id,
        "reason": deletion.reason,
        "delete_backup": deletion.delete_backup,
        "state": deletion.state,
        "attempts": deletion.attempts,
        "last_error": deletion.last_error,
        "created_at": _moment(deletion.created_at),
        "sent_at": _moment(deletion.sent_at),
        "ended_at": _moment(deletion.ended_at),
    }


def details_view(details: PolicyDetails) -> dict[str, Any]:
    """``policy_view`` with the latest runs and deletions (``show_policy``)."""
    return {
        **policy_view(details.record),
        "runs": [run_view(run) for run in details.runs],
        "deletions": [deletion_view(deletion) for deletion in details.deletions],
    }


def list_view(records: list[PolicyRecord]) -> dict[str, Any]:
    """The answer listing policies (``schemas/policy-list.schema.json``)."""
    return {"policies": [policy_view(record) for record in records]}
