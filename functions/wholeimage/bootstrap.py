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

    from wholeimage.ims import ImsClient
    from wholeimage.poller import JobPoller
    from wholeimage.results import Channel
    from wholeimage.settings import Settings
    from wholeimage.store import JobStore

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

                from wholeimage.ims import USER_AGENT, shared_ssl_context

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
                self.poller = self._ims_connection().poller(self.settings)
            return self.poller


@dataclass
class ImsConnection:
    """Where IMS is and how we authenticate: shared by the create client and the check poller."""

    base_url: str
    project_id: str
    auth: httpx.Auth

    @classmethod
    def from_settings(cls, settings: Settings) -> ImsConnection:
        """Resolve the endpoint and pick the credentials, in the documented order."""
        from wholeimage.endpoints import resolve_endpoints
        from wholeimage.errors import ConfigurationError
        from wholeimage.ims import AkSkAuth, IamPasswordAuth, StaticTokenAuth

        endpoints = resolve_endpoints(
            cloud=settings.cloud,
            region=settings.region,
            ims_endpoint=settings.ims_endpoint,
            iam_endpoint=settings.iam_endpoint,
        )
        project_id = settings.require_project_id()
        auth: httpx.Auth
        # An empty variable counts as not set (a SecretStr of "" is falsy), as for the API token.
        if settings.access_key or settings.secret_key:
            if not settings.access_key or not settings.secret_key:
                raise ConfigurationError("set both HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK")
            auth = AkSkAuth(
                settings.access_key.get_secret_value(),
                settings.secret_key.get_secret_value(),
                project_id,
                settings.security_token.get_secret_value() if settings.security_token else None,
            )
        elif settings.auth_token:
            auth = StaticTokenAuth(settings.auth_token.get_secret_value())
        elif settings.iam_user and settings.iam_password and settings.iam_domain:
            if endpoints.iam is None:
                raise ConfigurationError(
                    "IAM endpoint unknown: set WHOLEIMAGE_IAM_ENDPOINT or WHOLEIMAGE_REGION"
                )
            auth = IamPasswordAuth(
                iam_endpoint=endpoints.iam,
                user=settings.iam_user,
                password=settings.iam_password.get_secret_value(),
                domain=settings.iam_domain,
                project_id=project_id,
            )
        else:
            raise ConfigurationError(
                "no IMS credentials: set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK "
                "(+ HUAWEICLOUD_SDK_SECURITY_TOKEN for temporary ones), or WHOLEIMAGE_AUTH_TOKEN, "
                "or WHOLEIMAGE_IAM_USER, WHOLEIMAGE_IAM_PASSWORD and WHOLEIMAGE_IAM_DOMAIN"
            )
        return cls(base_url=endpoints.ims, project_id=project_id, auth=auth)

    def _sync_http(self, settings: Settings) -> httpx.Client:
        import httpx

        from wholeimage.ims import USER_AGENT, shared_ssl_context

        return httpx.Client(
            base_url=self.base_url,
            auth=self.auth,
            timeout=httpx.Timeout(settings.ims_timeout, connect=min(10.0, settings.ims_timeout)),
            verify=shared_ssl_context(),
            headers={"User-Agent": USER_AGENT},
        )

    def client(self, settings: Settings) -> ImsClient:
        """The synchronous client ``create`` uses, with bounded retries."""
        from wholeimage.ims import HttpImsClient, RetryPolicy

        retry = RetryPolicy(
            max_attempts=settings.ims_max_attempts, budget=settings.ims_retry_budget
        )
        return HttpImsClient(self._sync_http(settings), project_id=self.project_id, retry=retry)

    def poller(self, settings: Settings) -> JobPoller:
        """The async poller ``check`` uses: per-worker clients, one rate limiter."""
        import httpx

        from wholeimage.check import async_client_factory
        from wholeimage.ims import (
            USER_AGENT,
            AkSkAuth,
            HeaderSigner,
            IamPasswordAuth,
            StaticTokenAuth,
            shared_ssl_context,
        )
        from wholeimage.poller import JobPoller, RateLimiter

        base_url, sync_auth = self.base_url, self.auth

        def auth_for_a_worker() -> HeaderSigner:
            if isinstance(sync_auth, IamPasswordAuth):
                token = sync_auth.current_token(
                    lambda: httpx.Client(verify=shared_ssl_context(), timeout=settings.ims_timeout)
                )
                return StaticTokenAuth(token)
            if isinstance(sync_auth, AkSkAuth | StaticTokenAuth):
                return sync_auth
            raise TypeError(f"cannot poll with {type(sync_auth).__name__}")

        return JobPoller(
            project_id=self.project_id,
            client_factory=async_client_factory(
                base_url=base_url,
                auth=auth_for_a_worker,
                timeout=settings.ims_timeout,
                verify=shared_ssl_context(),
                user_agent=USER_AGENT,
            ),
            limiter=RateLimiter(settings.ims_rate_limit),
        )


def build_ims_client(settings: Settings) -> ImsClient:
    """An ``HttpImsClient`` for the configured endpoint and credentials."""
    return ImsConnection.from_settings(settings).client(settings)


_dependencies: Dependencies | None = None
_dependencies_lock = threading.Lock()


def get_dependencies() -> Dependencies:
    """The process's dependencies, built from the environment on first use."""
    global _dependencies  # noqa: PLW0603 (a lazy per-process singleton)
    with _dependencies_lock:
        if _dependencies is None:
            from wholeimage.logs import configure_logging, register_secrets
            from wholeimage.settings import get_settings
            from wholeimage.store import open_store

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
