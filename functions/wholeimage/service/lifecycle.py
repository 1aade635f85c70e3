"""The lifecycle policies' part of a ``check`` tick, and ``plan``, built from the dependencies."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from wholeimage.bootstrap import Dependencies
from wholeimage.create import submit_create
from wholeimage.lifecycle.plan import PolicyPlan, plan_policy
from wholeimage.lifecycle.runs import LifecycleConfig, LifecycleSummary, RunOutbox, run_lifecycle
from wholeimage.models import CreateImageRequest, Job
from wholeimage.notify import notifications_for
from wholeimage.policies import Policy
from wholeimage.results import JobResult, console_url
from wholeimage.service.outbox import channels
from wholeimage.service.policies import policy_store
from wholeimage.service.ports import ims_client
from wholeimage.store.records import Notification


def run_outbox(deps: Dependencies) -> RunOutbox | None:
    """The outbox rows of a run's message: one per configured channel the policy names (all
    when it names none) whose filter takes the verdict; None without channels."""
    configured = channels(deps)
    if not configured:
        return None
    settings = deps.settings
    console = console_url(settings.cloud, settings.region)

    def outbox(result: JobResult, names: Sequence[str] | None) -> list[Notification]:
        wanted = [c for c in configured if names is None or c.name in names]
        located = JobResult(
            **{**result.__dict__, "console_url": console, "region": settings.region}
        )
        return notifications_for(located, wanted, now=result.ended_at)

    return outbox


def lifecycle_phase(
    deps: Dependencies,
    *,
    budget: float,
    owner: str,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
) -> LifecycleSummary:
    """Run the policies' part of a tick within ``budget`` seconds (``lifecycle.runs``)."""
    settings = deps.settings
    store = policy_store(deps)
    ims = ims_client(deps)
    first_poll = timedelta(seconds=settings.poll_min_interval)

    def submit(request: CreateImageRequest, key: str, requested_by: str) -> Job:
        # The create use case an HTTP request takes, with the slot's key (``create``).
        return submit_create(
            request,
            idempotency_key=key,
            requested_by=requested_by,
            trace=None,
            ims=ims,
            store=store,
            first_poll_after=first_poll,
            now=now,
        ).job

    config = LifecycleConfig(
        time_budget=budget,
        lease=timedelta(seconds=settings.check_time_budget + settings.ims_timeout + 60),
    )
    return run_lifecycle(
        store=store,
        ims=ims,
        submit=submit,
        outbox=run_outbox(deps),
        config=config,
        now=now,
        monotonic=monotonic,
        owner=owner,
    )


def plan_policies(
    deps: Dependencies,
    *,
    name: str | None,
    slots: int,
    now: datetime | None = None,
) -> list[PolicyPlan]:
    """What the next ``slots`` slots of one policy (or every policy) would create and rotate
    out, read from the store and IMS's image list, without any IMS write.

    Raises:
        NotFoundError: ``name`` names no policy.
    """
    from wholeimage.errors import NotFoundError  # noqa: PLC0415

    store = policy_store(deps)
    records = [store.get_policy(name)] if name is not None else store.list_policies()
    if name is not None and records[0] is None:
        raise NotFoundError(f"no policy is called {name!r}")
    moment = now or datetime.now(UTC)
    plans = []
    for record in records:
        assert record is not None  # noqa: S101 - checked above
        policy = Policy.model_validate(record.document)
        plans.append(plan_policy(policy, record, ims_client(deps), slots=slots, now=moment))
    return plans
