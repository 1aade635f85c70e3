"""One ``check`` tick: what the ``check`` function, the CLI's ``tick`` and ``submit --wait`` run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from wholeimage.bootstrap import Dependencies
from wholeimage.check import CheckConfig, CheckSummary, run_check_sync
from wholeimage.ims.poller import JobPoller, job_poller
from wholeimage.lifecycle.runs import LifecycleSummary
from wholeimage.models import Job
from wholeimage.notify import NotifySummary, outbox_for
from wholeimage.poll_backoff import PollBackoff
from wholeimage.reconcile import Lookup, ReconcileConfig, lookup_by_marker
from wholeimage.results import console_url
from wholeimage.service.egress import egress
from wholeimage.service.lifecycle import lifecycle_phase
from wholeimage.service.outbox import channels, deliver_now
from wholeimage.service.ports import ims_client, ims_connection
from wholeimage.settings import Settings

# The least budget inline delivery gets after a tick, even when the tick used up its own.
MIN_NOTIFY_BUDGET = 5.0
# The least the policies' part gets, so slots still run when polling used the budget up.
MIN_POLICY_BUDGET = 5.0


def check_config(settings: Settings) -> CheckConfig:
    """The tick's configuration from ``WHOLEIMAGE_POLL_*``, ``WHOLEIMAGE_JOB_DEADLINE`` etc."""
    budget = settings.check_time_budget
    return CheckConfig(
        backoff=PollBackoff(settings.poll_min_interval, settings.poll_max_interval),
        job_deadline=timedelta(seconds=settings.job_deadline),
        time_budget=budget,
        concurrency=settings.check_concurrency,
        # A lease outlives the budget plus one IMS timeout, so no live tick loses its jobs.
        lease=timedelta(seconds=budget + settings.ims_timeout + 60),
        reconcile=ReconcileConfig(
            after=timedelta(seconds=settings.reconcile_after),
            window=timedelta(seconds=settings.reconcile_window),
        ),
    )


def poller_for(deps: Dependencies) -> JobPoller:
    """The async job poller, built from the settings on first use."""
    return deps.once(
        "poller", lambda: job_poller(ims_connection(deps), deps.settings, egress(deps))
    )


def marker_lookup(deps: Dependencies) -> Callable[[Job], Lookup]:
    """Reconciliation's question to IMS, over the synchronous client ``create`` uses."""
    return lambda job: lookup_by_marker(ims_client(deps), job)


@dataclass(frozen=True)
class TickReport:
    """What one tick did: its polls, its policies' part, and the delivery right after it
    (``WHOLEIMAGE_NOTIFY_INLINE``)."""

    check: CheckSummary
    notify: NotifySummary | None = None
    policies: LifecycleSummary | None = None

    def as_json(self) -> dict[str, Any]:
        """The answer body of ``check``."""
        answer = self.check.as_json()
        if self.policies is not None:
            answer["policies"] = self.policies.as_json()
        if self.notify is not None:
            answer["notify"] = self.notify.as_json()
        return answer


def tick(
    deps: Dependencies,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
) -> TickReport:
    """One ``check`` tick; ended jobs are handed to notification in the same transaction and,
    with ``WHOLEIMAGE_NOTIFY_INLINE`` (the default), delivered right away: no extra hop. Then
    the lifecycle policies' part runs (due slots, retention, run reports; docs/policies.md §4)
    with what is left of the budget. ``now`` and ``monotonic`` are the clocks (tests simulate
    them)."""
    settings = deps.settings
    configured = channels(deps)
    outbox = None
    if configured:
        outbox = outbox_for(
            configured, console=console_url(settings.cloud, settings.region), region=settings.region
        )
    summary = run_check_sync(
        store=deps.store,
        poller=poller_for(deps),
        config=check_config(settings),
        outbox=outbox,
        lookup=marker_lookup(deps),
        now=now,
        monotonic=monotonic,
    )
    started = monotonic() - summary.duration_s
    policies = lifecycle_phase(
        deps,
        budget=max(MIN_POLICY_BUDGET, settings.check_time_budget - summary.duration_s),
        owner=summary.owner,
        now=now,
        monotonic=monotonic,
    )
    if not (configured and settings.notify_inline):
        return TickReport(check=summary, policies=policies)
    # What is left of the tick's budget, so check plus notify stay under the scheduler's limit.
    left = max(MIN_NOTIFY_BUDGET, settings.check_time_budget - (monotonic() - started))
    delivered = deliver_now(deps, time_budget=min(settings.notify_time_budget, left))
    return TickReport(check=summary, notify=delivered, policies=policies)
