"""A policy run's one message: what was created, what was rotated out, what failed (pure).

It is a ``JobResult`` whose source is the policy (``source.kind`` ``policy``), so every channel,
the digest and the rate limits carry it as they carry a job's verdict; its key is the run's, so
the outbox holds it once per channel (docs/policies.md §6).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from wholeimage.policies import Policy
from wholeimage.results import JobResult, Verdict, notification_key
from wholeimage.store.policy_records import (
    DELETION_DELETED,
    DELETION_FAILED,
    ITEM_DONE,
    ImageDeletion,
    PolicyItem,
    PolicyRun,
)

RUN_FAILED_CODE = "WHOLEIMAGE.POLICY_RUN_FAILED"
PAUSED_CODE = "WHOLEIMAGE.POLICY_PAUSED"
# How many names a message lists per kind before it counts the rest.
_LISTED = 10
MAX_TEXT = 4000


def _listed(entries: list[str]) -> str:
    shown = "; ".join(entries[:_LISTED])
    if len(entries) > _LISTED:
        shown += f"; and {len(entries) - _LISTED} more"
    return shown


def run_summary(
    run: PolicyRun,
    items: list[PolicyItem],
    deletions: list[ImageDeletion],
    *,
    missing: list[str],
    paused_reason: str | None,
) -> tuple[Verdict, str]:
    """The run's verdict and its text: SUCCESS only when every source made its image and every
    rotated image is gone."""
    created = [f"{i.image_name} ({i.image_id or 'no id'})" for i in items if i.state == ITEM_DONE]
    unretained = [f"{i.image_name}: {i.detail}" for i in items if i.state == ITEM_DONE and i.detail]
    failed = [
        f"{i.image_name}: {i.error_code or 'failed'}" + (f" {i.detail}" if i.detail else "")
        for i in items
        if i.state != ITEM_DONE
    ]
    deleted = [f"{d.image_name} ({d.image_id})" for d in deletions if d.state == DELETION_DELETED]
    undeleted = [
        f"{d.image_name} ({d.image_id}): {d.last_error or 'not deleted'}"
        for d in deletions
        if d.state == DELETION_FAILED
    ]
    parts = [f"Created {len(created)}" + (f": {_listed(created)}" if created else "")]
    parts.append(f"rotated out {len(deleted)}" + (f": {_listed(deleted)}" if deleted else ""))
    if failed:
        parts.append(f"failed {len(failed)}: {_listed(failed)}")
    if missing:
        parts.append(f"not submitted before the next slot {len(missing)}: {_listed(missing)}")
    if undeleted:
        parts.append(f"could not delete {len(undeleted)}: {_listed(undeleted)}")
    if unretained:
        parts.append(f"retention did not run for {len(unretained)}: {_listed(unretained)}")
    if run.skipped:
        first = f" from {run.skipped_first:%Y-%m-%d %H:%M} UTC" if run.skipped_first else ""
        parts.append(
            f"{run.skipped} earlier slot{'s' if run.skipped != 1 else ''}{first} skipped: "
            "nothing ran then, and only the latest slot is made"
        )
    if paused_reason:
        parts.append(f"the policy paused itself: {paused_reason}")
    verdict: Verdict = "SUCCESS" if not (failed or missing or undeleted or unretained) else "FAIL"
    text = ". ".join(parts) + "."
    # job-result.schema.json holds at most 4096 characters of it.
    return verdict, text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def run_result(
    policy: Policy | None,
    run: PolicyRun,
    items: list[PolicyItem],
    deletions: list[ImageDeletion],
    *,
    paused_reason: str | None,
    now: datetime,
    console: str | None = None,
    region: str | None = None,
) -> JobResult:
    """The run's message as a ``JobResult`` (``policy`` None: it was deleted meanwhile)."""
    seen = {item.source_id for item in items}
    # The run's own sources (a source added to the policy later was never this run's).
    sources = run.sources or (
        tuple((s.instance_id, s.shown) for s in policy.sources) if policy is not None else ()
    )
    missing = [label for instance_id, label in sources if instance_id not in seen]
    verdict, text = run_summary(run, items, deletions, missing=missing, paused_reason=paused_reason)
    zone = policy.schedule.timezone if policy is not None else "UTC"
    local = run.slot_at.astimezone(ZoneInfo(zone))
    code = PAUSED_CODE if paused_reason else (RUN_FAILED_CODE if verdict != "SUCCESS" else None)
    return JobResult(
        key=notification_key(run.run_id, verdict),
        request_id=run.run_id,
        job_id=None,
        status=verdict,
        image_name=f"policy {run.policy}, slot {local:%Y-%m-%d %H:%M} {zone}"[:128],
        image_id=None,
        source_kind="policy",
        source_id=run.policy,
        requested_by=f"policy:{run.policy}",
        error_code=code,
        fail_reason=text,
        submitted_at=run.created_at,
        ended_at=now,
        console_url=console,
        region=region,
    )
