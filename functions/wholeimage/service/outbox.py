"""Delivering what the notification outbox holds: the channels and the webhook client, built once
per process, and one delivery run. What ``check`` runs after a tick and ``notify`` after it
queued or re-drove rows."""

from __future__ import annotations

from datetime import timedelta

import httpx

from wholeimage.bootstrap import Dependencies
from wholeimage.httputil import USER_AGENT
from wholeimage.logs import register_secrets
from wholeimage.notify import NotifyConfig, NotifySummary, deliver_pending
from wholeimage.results import Channel
from wholeimage.service.egress import egress


def channels(deps: Dependencies) -> list[Channel]:
    """The notification channels (configuration only), checked on first use."""

    def build() -> list[Channel]:
        configured = deps.settings.notification_channels()
        register_secrets(deps.settings.secret_values())
        return configured

    return deps.once("channels", build)


def webhook_http(deps: Dependencies) -> httpx.Client:
    """The client that posts to webhooks: no redirects (they would be misconfiguration), through
    the proxies and with the CA the environment names."""
    return deps.once(
        "webhooks",
        lambda: egress(deps).client(
            timeout=httpx.Timeout(15.0, connect=5.0),
            follow_redirects=False,
            headers={"User-Agent": f"{USER_AGENT} (wholeimage notifier)"},
        ),
    )


def deliver_now(deps: Dependencies, *, time_budget: float | None = None) -> NotifySummary:
    """Deliver what the outbox holds, with the configured channels."""
    settings = deps.settings
    budget = time_budget if time_budget is not None else settings.notify_time_budget
    config = NotifyConfig(
        max_age=timedelta(seconds=settings.notify_max_age),
        time_budget=budget,
        lease=timedelta(seconds=budget + 60),
    )
    return deliver_pending(
        store=deps.store, channels=channels(deps), http=webhook_http(deps), config=config
    )
