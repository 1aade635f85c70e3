"""What the ``check`` and ``notify`` entry points (HTTP and CLI) run, wired from dependencies."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wholeimage.bootstrap import Dependencies
    from wholeimage.notify import NotifySummary


def notify_now(deps: Dependencies, *, time_budget: float | None = None) -> NotifySummary:
    """Deliver what the outbox holds, with the configured channels."""
    from wholeimage.notify import NotifyConfig, deliver_pending

    settings = deps.settings
    budget = time_budget if time_budget is not None else settings.notify_time_budget
    config = NotifyConfig(
        max_age=timedelta(seconds=settings.notify_max_age),
        time_budget=budget,
        lease=timedelta(seconds=budget + 60),
    )
    return deliver_pending(
        store=deps.store, channels=deps.channels(), http=deps.webhook_http(), config=config
    )


def check_tick(deps: Dependencies) -> dict[str, Any]:
    """One ``check`` tick; ended jobs are handed to notification in the same transaction and,
    with ``WHOLEIMAGE_NOTIFY_INLINE`` (the default), delivered right away: no extra hop."""
    from wholeimage.check import check_config_from_settings, run_check_sync
    from wholeimage.notify import outbox_for
    from wholeimage.results import console_url

    settings = deps.settings
    channels = deps.channels()
    outbox = None
    if channels:
        outbox = outbox_for(
            channels, console=console_url(settings.cloud, settings.region), region=settings.region
        )
    summary = run_check_sync(
        store=deps.store,
        poller=deps.job_poller(),
        config=check_config_from_settings(settings),
        outbox=outbox,
    )
    answer = summary.as_json()
    if channels and settings.notify_inline:
        # What is left of the tick's budget, so check plus notify stay under the scheduler's limit.
        left = max(5.0, settings.check_time_budget - summary.duration_s)
        answer["notify"] = notify_now(
            deps, time_budget=min(settings.notify_time_budget, left)
        ).as_json()
    return answer
