"""The policies' part of a ``check`` tick: run due slots, rotate images out, report each run.

After the job polls, with what is left of the tick's budget, in this order (docs/policies.md §4):

1. **Ended items.** An item whose create job ended ``SUCCESS`` gets its retention: IMS's list
   of the policy's images (by its tag, read back, ``retention``) decides which of that source's
   images go, recorded as deletions with the item's end, in one transaction. Any other end is a
   failure: ``pause_after_failures`` of them in a row pause the policy. A failed or timed-out
   create never triggers retention. When the list cannot be read, the item waits for the next
   tick: retention is retried, never skipped.
2. **Deletions.** Each due deletion is sent (``DELETE /v2/images/{id}``) or, once sent or maybe
   sent, confirmed by asking IMS whether the image is still listed: IMS's 204 carries no job, and
   a lost answer is asked about, never assumed. Certain refusals are retried
   ``deletion_attempts`` times, then the deletion ends ``FAILED`` and the run's message says so.
3. **Due policies.** A policy whose next slot is due is leased and its latest due slot run: each
   source becomes a create through ``submit`` (the use case an HTTP request takes) with the key
   ``policy:<name>:<instance id>:<slot>``, so overlapping ticks, retried schedulers and restarts
   make one image per slot and source. Earlier missed slots are counted, not replayed. When the
   budget ends mid-policy, or IMS throttles, the policy stays due and the next tick goes on
   where this one stopped (the sources already submitted replay their job, no IMS call).
4. **Reports.** A run whose items and deletions have all ended gets its one message per channel
   (``report``); the row is marked reported after the outbox holds it, and the outbox ignores a
   second copy, so a crash in between repeats nothing.

Each item, deletion and policy is handled on its own: one that fails is logged, counted and
left for the next tick, and the others go on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from wholeimage.errors import (
    ImageNotFoundError,
    SubmissionInProgressError,
    SubmissionUncertainError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailableError,
    WholeImageError,
)
from wholeimage.ims.client import ImageSummary, ImsClient
from wholeimage.ims.job_report import storable
from wholeimage.lifecycle.report import run_result
from wholeimage.lifecycle.retention import decide_retention, policy_images
from wholeimage.logs import redact
from wholeimage.models import POLICY_TAG_KEY, CreateImageRequest, Job, JobStatus
from wholeimage.policies import Policy, PolicySource
from wholeimage.results import JobResult
from wholeimage.store.base import SqlJobStore
from wholeimage.store.policy_records import (
    DELETION_DELETED,
    DELETION_FAILED,
    DELETION_PENDING,
    DELETION_SENT,
    ITEM_CREATING,
    ITEM_DONE,
    ITEM_FAILED,
    RUN_CREATING,
    FailureCount,
    ImageDeletion,
    PolicyItem,
    PolicyRun,
)
from wholeimage.store.records import Notification

log = logging.getLogger("wholeimage.lifecycle")

# How many missed slots a run counts at most (a minutely policy paused for a year).
MAX_COUNTED_SKIPS = 10_000
REFUSED_CODE = "WHOLEIMAGE.CREATE_REFUSED"
MAX_RETENTION_WAIT = timedelta(hours=6)
# What an upstream text may take of a stored row or a message.
_SAID_CHARS = 500


# Submit one create through the create use case; returns the job (new or replayed).
Submit = Callable[[CreateImageRequest, str, str], Job]
# The outbox rows of one run's message: the result, and the policy's channel names (None: all).
RunOutbox = Callable[[JobResult, Sequence[str] | None], list[Notification]]


@dataclass(frozen=True)
class LifecycleConfig:
    """How the policies' part of a tick behaves."""

    time_budget: float = 60.0  # seconds
    lease: timedelta = timedelta(minutes=5)
    batch: int = 100
    deletion_attempts: int = 3
    retry_delay: timedelta = timedelta(minutes=5)  # after a certain refusal, times the attempts
    confirm_after: timedelta = timedelta(seconds=30)  # between "is it gone?" questions
    resend_after: timedelta = timedelta(minutes=30)  # still listed this long after a 204: resend
    throttled_retry: timedelta = timedelta(minutes=1)
    retention_checks: int = 8  # asks of IMS's list (5 min doubling, at most 6 h apart) per item


@dataclass
class LifecycleSummary:
    """What the policies' part of one tick did; part of ``check``'s answer."""

    policies_run: int = 0
    slots_skipped: int = 0
    creates: Counter[str] = field(default_factory=Counter)
    items_ended: Counter[str] = field(default_factory=Counter)
    deletions: Counter[str] = field(default_factory=Counter)
    runs_reported: int = 0
    paused: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    budget_exhausted: bool = False

    def as_json(self) -> dict[str, Any]:
        """The ``policies`` member of ``check``'s answer."""
        return {
            "policies_run": self.policies_run,
            "slots_skipped": self.slots_skipped,
            "creates": dict(self.creates),
            "items_ended": dict(self.items_ended),
            "deletions": dict(self.deletions),
            "runs_reported": self.runs_reported,
            "paused": list(self.paused),
            "errors": dict(self.errors),
            "budget_exhausted": self.budget_exhausted,
        }


class _Phase:
    def __init__(
        self,
        *,
        store: SqlJobStore[Any],
        ims: ImsClient,
        submit: Submit,
        outbox: RunOutbox | None,
        config: LifecycleConfig,
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
        owner: str,
    ) -> None:
        self.store = store
        self.ims = ims
        self.submit = submit
        self.outbox = outbox
        self.config = config
        self.now = now
        self.monotonic = monotonic
        self.owner = owner
        self.stop_at = monotonic() + config.time_budget
        self.summary = LifecycleSummary()
        self.policies: dict[str, Policy | None] = {}
        self.runs: dict[str, PolicyRun | None] = {}  # read once a tick, as policies are

    def wait_after(self, exc: UpstreamError) -> timedelta:
        """How long to leave IMS alone after ``exc``: ``throttled_retry``, or longer when IMS
        said so (``Retry-After``)."""
        if isinstance(exc, UpstreamUnavailableError):
            return max(self.config.throttled_retry, timedelta(seconds=exc.retry_after))
        return self.config.throttled_retry

    def out_of_time(self) -> bool:
        if self.monotonic() >= self.stop_at:
            self.summary.budget_exhausted = True
            return True
        return False

    def policy(self, name: str) -> Policy | None:
        """The stored policy called ``name``, read once per tick; None when gone or unreadable."""
        if name not in self.policies:
            record = self.store.get_policy(name)
            parsed = None
            if record is not None:
                try:
                    parsed = Policy.model_validate(record.document)
                    # The model does not check the schedule (apply does): one croniter or
                    # zoneinfo cannot read would fail every tick, so it counts as unreadable.
                    slot = parsed.next_slot_after(self.now())
                    for source in parsed.sources:
                        parsed.create_request(source, slot)  # the template and the body
                except Exception:  # ValidationError, croniter's errors, ZoneInfoNotFoundError
                    log.error("a stored policy cannot be read", extra={"policy": name})
                    self.summary.errors["unreadable_policy"] += 1
                    parsed = None
            self.policies[name] = parsed
        return self.policies[name]

    # --- 1. ended items ----------------------------------------------------------------------

    def end_items(self) -> None:
        listed: dict[str, list[ImageSummary] | str] = {}
        for item in self.store.ended_items(now=self.now(), limit=self.config.batch):
            if self.out_of_time():
                return
            try:
                self.end_item(item, listed)
            except Exception:
                log.exception("ending a policy item failed", extra={"item": item.item_id})
                self.summary.errors["internal"] += 1

    def end_item(self, item: PolicyItem, listed: dict[str, list[ImageSummary] | str]) -> None:
        policy = self.policy(item.policy)
        now = self.now()
        pause_after = policy.pause_after_failures if policy is not None else 1_000_000
        if item.job_status != JobStatus.SUCCESS.value:
            failure = FailureCount(True, pause_after, _pause_reason(pause_after, item))
            closed, paused = self.store.close_item(
                item, state=ITEM_FAILED, deletions=[], failure=failure, now=now
            )
            if closed:
                self.summary.items_ended[item.job_status or "FAIL"] += 1
            if paused:
                self.paused(item.policy, item.run_id, failure.pause_reason)
            return
        deletions: list[ImageDeletion] = []
        done = item
        if policy is not None:
            images = self.listed(policy, listed)
            if isinstance(images, str):
                if item.checks + 1 < self.config.retention_checks:
                    # Retention waits for IMS's list, this item alone: the others go on.
                    wait = min(self.config.retry_delay * 2**item.checks, MAX_RETENTION_WAIT)
                    self.store.defer_item(item, until=now + wait, detail=images, now=now)
                    return
                # Asked often enough: the image is made, retention did not run; the run's
                # message says so (the next success of the source tries again).
                done = replace(item, detail=f"retention did not run: {images}")
            else:
                if item.run_id not in self.runs:
                    self.runs[item.run_id] = self.store.get_run(item.run_id)
                run = self.runs[item.run_id]
                # Ages are measured at the run's slot, as ``plan`` measures them.
                moment = run.slot_at if run is not None else now
                mine = policy_images(images, item.policy).get(item.source_id, [])
                for verdict in decide_retention(
                    policy, mine, now=moment, succeeded_image_id=item.image_id
                ):
                    if verdict.keep or verdict.image.image_id == item.image_id:
                        continue
                    deletions.append(
                        ImageDeletion(
                            image_id=verdict.image.image_id,
                            policy=item.policy,
                            source_id=item.source_id,
                            run_id=item.run_id,
                            image_name=verdict.image.name,
                            delete_backup=policy.delete_backup,
                            reason=verdict.reason,
                            state=DELETION_PENDING,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
                done = replace(item, detail=None)
        closed, _ = self.store.close_item(
            done,
            state=ITEM_DONE,
            deletions=deletions,
            failure=FailureCount(False, pause_after, ""),
            now=now,
        )
        if closed:
            self.summary.items_ended["SUCCESS"] += 1
            self.summary.deletions["decided"] += len(deletions)

    def listed(
        self, policy: Policy, listed: dict[str, list[ImageSummary] | str]
    ) -> list[ImageSummary] | str:
        """IMS's list of the policy's images, asked once a tick; why not, when it failed."""
        if policy.name not in listed:
            try:
                listed[policy.name] = self.ims.list_images_by_tag(
                    tag_key=POLICY_TAG_KEY,
                    tag_value=policy.name,
                    enterprise_project_id=policy.image.enterprise_project_id,
                )
            except UpstreamError as exc:
                log.warning(
                    "IMS's image list failed; retention waits",
                    extra={"policy": policy.name, "error": exc.code},
                )
                listed[policy.name] = f"IMS's image list failed ({_said(exc)})"
                self.summary.errors["image_list"] += 1
        return listed[policy.name]

    def paused(self, policy: str, run_id: str, reason: str) -> None:
        self.store.note_run_paused(run_id, reason=reason)
        self.summary.paused.append(policy)
        log.warning("a policy paused itself", extra={"policy": policy, "reason": reason})

    # --- 2. deletions ------------------------------------------------------------------------

    def run_deletions(self) -> None:
        moment = self.now()
        claimed = self.store.claim_deletions(
            now=moment,
            owner=self.owner,
            lease_until=moment + self.config.lease,
            limit=self.config.batch,
        )
        for deletion in claimed:
            if self.out_of_time():
                self.settle(deletion, deletion.state, attempted=False, at=deletion.next_attempt_at)
                continue
            try:
                if deletion.state == DELETION_PENDING:
                    self.send(deletion)
                else:
                    self.confirm(deletion)
            except Exception:
                log.exception(
                    "a deletion failed unexpectedly", extra={"image_id": deletion.image_id}
                )
                self.summary.errors["internal"] += 1
                self.settle(
                    deletion,
                    deletion.state,
                    attempted=False,
                    at=self.now() + self.config.retry_delay,
                    error="internal error",
                )

    def settle(
        self,
        deletion: ImageDeletion,
        state: str,
        *,
        attempted: bool,
        at: datetime,
        error: str | None = None,
    ) -> None:
        settled = self.store.settle_deletion(
            deletion.image_id,
            owner=self.owner,
            state=state,
            attempted=attempted,
            next_attempt_at=at,
            last_error=error if error is not None else deletion.last_error,
            now=self.now(),
        )
        if settled and state in (DELETION_DELETED, DELETION_FAILED):
            self.summary.deletions[state.lower()] += 1

    def send(self, deletion: ImageDeletion) -> None:
        now = self.now()
        try:
            self.ims.delete_image(deletion.image_id, delete_backup=deletion.delete_backup)
        except ImageNotFoundError:
            self.settle(deletion, DELETION_DELETED, attempted=True, at=now, error=None)
            return
        except SubmissionUncertainError as exc:
            # Maybe deleted: ask IMS, never assume (and never count it as refused).
            self.settle(
                deletion,
                DELETION_SENT,
                attempted=True,
                at=now + self.config.confirm_after,
                error=_said(exc),
            )
            self.summary.deletions["uncertain"] += 1
            return
        except UpstreamUnavailableError as exc:
            # Throttled, or unreachable before sending: not the image's fault, not counted.
            self.settle(
                deletion,
                DELETION_PENDING,
                attempted=False,
                at=now + self.wait_after(exc),
                error=_said(exc),
            )
            self.summary.errors[exc.code] += 1
            return
        except WholeImageError as exc:
            # Certainly refused (a protected image, an image in use; a 401 or 403, which may be
            # Glance refusing this image as much as our credentials): retried, then reported.
            attempts = deletion.attempts + 1
            state = (
                DELETION_FAILED if attempts >= self.config.deletion_attempts else DELETION_PENDING
            )
            self.settle(
                deletion,
                state,
                attempted=True,
                at=now + self.config.retry_delay * attempts,
                error=_said(exc),
            )
            return
        self.settle(deletion, DELETION_SENT, attempted=True, at=now + self.config.confirm_after)
        self.summary.deletions["sent"] += 1

    def confirm(self, deletion: ImageDeletion) -> None:
        now = self.now()
        try:
            found = self.ims.find_image(deletion.image_id)
        except UpstreamError as exc:
            self.settle(
                deletion,
                DELETION_SENT,
                attempted=False,
                at=now + self.config.confirm_after,
                error=_said(exc),
            )
            self.summary.errors["image_query"] += 1
            return
        if found is None or found.status == "deleted":
            self.settle(deletion, DELETION_DELETED, attempted=False, at=now, error=None)
            return
        sent_at = deletion.sent_at or deletion.created_at
        if now - sent_at < self.config.resend_after:
            self.settle(
                deletion, DELETION_SENT, attempted=False, at=now + self.config.confirm_after
            )
            return
        still = f"IMS still lists the image ({found.status}) {now - sent_at} after the delete"
        if deletion.attempts >= self.config.deletion_attempts:
            self.settle(deletion, DELETION_FAILED, attempted=False, at=now, error=still)
        else:
            self.settle(deletion, DELETION_PENDING, attempted=False, at=now, error=still)

    # --- 3. due policies ---------------------------------------------------------------------

    def run_due(self) -> None:
        while not self.out_of_time():
            moment = self.now()
            claimed = self.store.claim_due_policies(
                now=moment,
                owner=self.owner,
                lease_until=moment + self.config.lease,
                limit=self.config.batch,
            )
            if not claimed:
                return
            for record in claimed:
                policy = self.policy(record.name)
                if policy is None or self.out_of_time():
                    # Handed back as it was; an unreadable policy is paused so it stops costing.
                    if policy is None and record.name in self.policies:
                        self.store.pause_policy(
                            record.name, reason="its stored document cannot be read", now=moment
                        )
                    self.store.release_policy(
                        record.name,
                        owner=self.owner,
                        next_slot_at=record.next_slot_at,
                        last_slot_at=None,
                        now=self.now(),
                    )
                    continue
                try:
                    self.run_slot(policy, record.next_slot_at or moment, record.failures)
                except Exception:
                    log.exception("running a policy slot failed", extra={"policy": policy.name})
                    self.summary.errors["internal"] += 1
                    # Due as before (the same slot), but not before the retry delay.
                    self.store.release_policy(
                        policy.name,
                        owner=self.owner,
                        next_slot_at=record.next_slot_at,
                        last_slot_at=None,
                        now=self.now(),
                        hold_until=self.now() + self.config.retry_delay,
                    )
            if len(claimed) < self.config.batch:
                return

    def run_slot(self, policy: Policy, due_from: datetime, failures: int) -> None:
        now = self.now()
        slot = policy.latest_slot_at_or_before(now)
        # A slot left unfinished (budget, throttling) stays the due slot; its run still creating
        # also says to go on with it, should the due time have been moved past the slot.
        current = self.store.get_run(policy.run_id(slot))
        if slot < due_from and (current is None or current.state != RUN_CREATING):
            # Not due after all (the schedule changed under the lease): look again at its slot.
            self.release(policy, next_slot_at=policy.next_slot_after(now), slot=None)
            return
        missed = policy.slots_between(
            due_from - timedelta(microseconds=1), slot, limit=MAX_COUNTED_SKIPS
        )
        skipped = [moment for moment in missed if moment < slot]
        run = PolicyRun(
            run_id=policy.run_id(slot),
            policy=policy.name,
            slot_at=slot,
            skipped=len(skipped),
            skipped_first=skipped[0] if skipped else None,
            state="CREATING",
            paused_reason=None,
            created_at=now,
            sources=tuple((source.instance_id, source.shown) for source in policy.sources),
        )
        if self.store.open_run(run):
            self.summary.policies_run += 1
            self.summary.slots_skipped += len(skipped)
        unfinished = False
        retry_at: datetime | None = None
        for source in policy.sources:
            if self.out_of_time():
                unfinished = True
                break
            outcome = self.submit_source(policy, source, run, slot)
            if isinstance(outcome, datetime):
                unfinished, retry_at = True, outcome
                break
            if outcome == "paused":
                break
        if unfinished:
            # The slot is not finished: it stays due (same slot, same keys) for the next tick,
            # or, when IMS asked us to wait, for the first tick after the wait.
            self.release(policy, next_slot_at=slot, slot=None, hold_until=retry_at)
            return
        self.store.close_run_creation(run.run_id)
        self.release(policy, next_slot_at=policy.next_slot_after(max(now, slot)), slot=slot)

    def release(
        self,
        policy: Policy,
        *,
        next_slot_at: datetime,
        slot: datetime | None,
        hold_until: datetime | None = None,
    ) -> None:
        if not self.store.release_policy(
            policy.name,
            owner=self.owner,
            next_slot_at=next_slot_at,
            last_slot_at=slot,
            now=self.now(),
            hold_until=hold_until,
        ):
            log.warning(
                "a policy's lease was lost before it was handed back", extra={"policy": policy.name}
            )
            self.summary.errors["lost_lease"] += 1

    def submit_source(
        self, policy: Policy, source: PolicySource, run: PolicyRun, slot: datetime
    ) -> datetime | str | None:
        """Submit one source's create; a time to come back at, ``"paused"``, or None when done."""
        item_id = f"{run.run_id}:{source.instance_id}"
        if self.store.get_item(item_id) is not None:
            return None  # submitted by an earlier tick of this slot
        now = self.now()
        name = policy.image_name(source, slot)
        key = policy.idempotency_key(source, slot)
        try:
            job = self.submit(policy.create_request(source, slot), key, policy.requester)
        except (UpstreamUnavailableError, UpstreamAuthError) as exc:
            self.summary.creates[exc.code] += 1
            return now + self.wait_after(exc)
        except SubmissionInProgressError:
            self.summary.creates["in_progress"] += 1
            return now + timedelta(seconds=30)
        except WholeImageError as exc:
            # Certainly refused (IMS's 4xx, the key used with another body): a failed create.
            item = PolicyItem(
                item_id=item_id,
                run_id=run.run_id,
                policy=policy.name,
                source_id=source.instance_id,
                request_id=None,
                state=ITEM_FAILED,
                image_name=name,
                created_at=now,
                updated_at=now,
                error_code=_upstream_code(exc),
                detail=_said(exc),
            )
            reason = _pause_reason(policy.pause_after_failures, item)
            _, paused = self.store.add_item(
                item, failure=FailureCount(True, policy.pause_after_failures, reason), now=now
            )
            self.summary.creates["refused"] += 1
            if paused:
                self.paused(policy.name, run.run_id, reason)
                return "paused"
            return None
        item = PolicyItem(
            item_id=item_id,
            run_id=run.run_id,
            policy=policy.name,
            source_id=source.instance_id,
            request_id=job.request_id,
            state=ITEM_CREATING,
            image_name=job.request.name,
            created_at=now,
            updated_at=now,
        )
        self.store.add_item(item, now=now)
        self.summary.creates[job.status.value] += 1
        return None

    # --- 4. reports --------------------------------------------------------------------------

    def report_runs(self) -> None:
        for run in self.store.unreported_runs(limit=self.config.batch):
            if self.out_of_time():
                return
            try:
                self.report(run)
            except Exception:
                log.exception("reporting a policy run failed", extra={"run_id": run.run_id})
                self.summary.errors["internal"] += 1

    def report(self, run: PolicyRun) -> None:
        # ``unreported_runs`` lists only runs whose items and deletions have all ended.
        items = self.store.run_items(run.run_id)
        deletions = self.store.run_deletions(run.run_id)
        policy = self.policy(run.policy)
        if self.outbox is not None:
            # A policy deleted meanwhile still has its run reported, to every channel: its
            # jobs' verdicts are told only here (their own messages are left out).
            result = run_result(
                policy, run, items, deletions, paused_reason=run.paused_reason, now=self.now()
            )
            rows = self.outbox(result, policy.channels if policy is not None else None)
            if rows:
                self.store.add_notifications(rows)
        if self.store.mark_run_reported(run.run_id, now=self.now()):
            self.summary.runs_reported += 1


def _said(exc: WholeImageError) -> str:
    """An upstream refusal as a row or a message may hold it: redacted (IMS may quote what it
    was sent) and clipped."""
    code = _upstream_code(exc)
    text = f"{code}: {exc.message}" if code else exc.message
    # As a job's fail reason is made storable (NUL and other controls out: PostgreSQL refuses
    # a NUL in text), then redacted, on one line.
    text = redact(" ".join(storable(text).split()))
    return text if len(text) <= _SAID_CHARS else text[: _SAID_CHARS - 1] + "…"


def _upstream_code(exc: WholeImageError) -> str:
    upstream = exc.upstream or {}
    code = upstream.get("code")
    return str(code) if code else exc.code if exc.code else REFUSED_CODE


def _pause_reason(pause_after: int, item: PolicyItem) -> str:
    return (
        f"{pause_after} run{'s' if pause_after != 1 else ''} in a row had a create that did not "
        "succeed "
        f"(the last: {item.image_name}, {item.error_code or item.job_status or 'failed'}); "
        "resume it with `wholeimage policy resume`"
    )


def run_lifecycle(
    *,
    store: SqlJobStore[Any],
    ims: ImsClient,
    submit: Submit,
    outbox: RunOutbox | None,
    config: LifecycleConfig,
    now: Callable[[], datetime],
    monotonic: Callable[[], float],
    owner: str,
) -> LifecycleSummary:
    """The policies' part of one tick (the module docstring); never raises for one item."""
    phase = _Phase(
        store=store,
        ims=ims,
        submit=submit,
        outbox=outbox,
        config=config,
        now=now,
        monotonic=monotonic,
        owner=owner,
    )
    for step in (phase.end_items, phase.run_deletions, phase.run_due, phase.report_runs):
        if phase.out_of_time():
            break
        try:
            step()
        except Exception:  # a store outage: the next tick tries again
            log.exception("the policies' part of the tick stopped", extra={"step": step.__name__})
            phase.summary.errors["aborted"] += 1
            break
    return phase.summary
