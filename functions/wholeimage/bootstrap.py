"""The composition root: builds the real ports from settings, once per process, lazily.

Tests and the CLI hand in their own ``Dependencies`` with ``set_dependencies``; nothing here
runs at import time except what ``warn_if_open_at_start`` does, which is cheap by design.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from wholeimage.ims.client import ImsClient
    from wholeimage.ims.connection import ImsConnection
    from wholeimage.ims.poller import JobPoller
    from wholeimage.results import Channel
    from wholeimage.settings import Settings
    from wholeimage.store.records import JobStore

log = logging.getLogger("wholeimage")

API_TOKEN_VARIABLE = "WHOLEIMAGE_API_TOKEN"  # noqa: S105 (a variable name, not a token)


@dataclass
class Dependencies:
    """The ports the use cases need; IMS is built on first need so reads work without a cloud."""

    settings: Settings
    store: JobStore
    ims: ImsClient | None = None
    poller: JobPoller | None = None
    webhooks: httpx.Client | None = None
    _channels: list[Channel] | None = field(default=None, repr=False)
    _connection: ImsConnection | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _ims_connection(self) -> ImsConnection:
        if self._connection is None:
            from wholeimage.ims.connection import ImsConnection

            self._connection = ImsConnection.from_settings(self.settings)
        return self._connection

    def ims_client(self) -> ImsClient:
        """The IMS client, built from the settings on first use."""
        with self._lock:
            if self.ims is None:
                self.ims = self._ims_connection().client(self.settings)
            return self.ims

    def channels(self) -> list[Channel]:
        """The notification channels (configuration only), checked on first use."""
        with self._lock:
            if self._channels is None:
                from wholeimage.logs import register_secrets

                self._channels = self.settings.notification_channels()
                register_secrets(self.settings.secret_values())
            return self._channels

    def webhook_http(self) -> httpx.Client:
        """The client that posts to webhooks: no redirects (they would be misconfiguration)."""
        with self._lock:
            if self.webhooks is None:
                import httpx

                from wholeimage.httputil import USER_AGENT, shared_ssl_context

                self.webhooks = httpx.Client(
                    timeout=httpx.Timeout(15.0, connect=5.0),
                    verify=shared_ssl_context(),
                    follow_redirects=False,
                    headers={"User-Agent": f"{USER_AGENT} (wholeimage notifier)"},
                )
            return self.webhooks

    def job_poller(self) -> JobPoller:
        """The async job poller for ``check``, built from the settings on first use."""
        with self._lock:
            if self.poller is None:
                from wholeimage.ims.poller import job_poller

                self.poller = job_poller(self._ims_connection(), self.settings)
            return self.poller


def open_store(state_url: str) -> JobStore:
    """The store for ``WHOLEIMAGE_STATE_URL``.

    The adapter is imported only once the URL names it, so psycopg loads only where PostgreSQL is
    configured.
    """
    if state_url.startswith("sqlite:///"):
        from wholeimage.store.sqlite import SqliteJobStore

        return SqliteJobStore(state_url.removeprefix("sqlite:///"))
    if state_url.startswith(("postgresql://", "postgres://")):
        from wholeimage.store.postgres import PostgresJobStore

        return PostgresJobStore(state_url)
    from wholeimage.errors import ConfigurationError

    raise ConfigurationError("WHOLEIMAGE_STATE_URL must be sqlite:///path or postgresql://...")


_dependencies: Dependencies | None = None
_dependencies_lock = threading.Lock()


def get_dependencies() -> Dependencies:
    """The process's dependencies, built from the environment on first use."""
    global _dependencies  # noqa: PLW0603 (a lazy per-process singleton)
    with _dependencies_lock:
        if _dependencies is None:
            from wholeimage.logs import configure_logging, register_secrets
            from wholeimage.settings import get_settings

            settings = get_settings()
            configure_logging(settings.log_level)
            register_secrets(settings.secret_values())
            _dependencies = Dependencies(settings=settings, store=open_store(settings.state_url))
        return _dependencies


def set_dependencies(dependencies: Dependencies | None) -> None:
    """Use ``dependencies`` from now on (tests, CLI); ``None`` rebuilds from settings next time."""
    global _dependencies  # noqa: PLW0603 (a lazy per-process singleton)
    with _dependencies_lock:
        _dependencies = dependencies


def warn_if_open_at_start() -> None:
    """Log a loud warning when no caller token is configured: every caller is then trusted."""
    # Only this variable is read at start, directly and cheaply, so the warning appears when the
    # process starts rather than on its first request; everything else waits for first use.
    if not os.environ.get(API_TOKEN_VARIABLE):
        from wholeimage.logs import configure_logging

        configure_logging()
        log.warning(
            f"{API_TOKEN_VARIABLE} is not set: wholeimage accepts calls from anyone who can reach it. "
            "Set it in any deployment reachable from a network."
        )
