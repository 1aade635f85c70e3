"""The lifecycle policies' part of a ``check`` tick, and ``plan``, built from the dependencies."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from wholeimage.bootstrap import Dependencies
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

log = logging.getLogger("wholeimage.lifecycle")


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
        if not wanted:
            # None of the policy's channels is configured here (a typo, applied over HTTP,
            # where names cannot be checked): every channel hears it rather than none, as
            # its jobs send nothing of their own.
            log.warning(
                "none of a policy's channels is configured; its run goes to every channel",
                extra={"channels": list(names or ())},
            )
            wanted = list(configured)
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
        # The create use case an HTTP request takes, with the slot's key; imported when a slot
        # is first made, so a check process that only polls never loads it.
        from wholeimage.create import submit_create  # noqa: PLC0415

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
        try:
            policy = Policy.model_validate(record.document)
            plans.append(plan_policy(policy, record, ims_client(deps), slots=slots, now=moment))
        except (ValidationError, ValueError, KeyError) as exc:
            # One unreadable stored policy must not hide the others' plans.
            plans.append(
                PolicyPlan(
                    name=record.name,
                    state="unreadable",
                    error=f"its stored document cannot be read ({type(exc).__name__})",
                )
            )
    return plans
