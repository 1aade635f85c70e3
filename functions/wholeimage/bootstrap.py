"""The composition root: the process's settings and store, and a cache for the ports built from them.

What a port needs is known where it is used: the application layer (``wholeimage.service``) builds
each one on first use through ``Dependencies.once``, so a ``create`` process never loads the poller
or the chat channels, and a ``notify`` process never loads IMS. Tests and the CLI hand in their own
``Dependencies`` (with fakes in any port field) through ``set_dependencies``. Nothing here runs at
import time except what ``warn_if_open_at_start`` does, which is cheap by design.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from wholeimage.errors import ConfigurationError
from wholeimage.logs import configure_logging, register_secrets
from wholeimage.settings import Settings, get_settings
from wholeimage.store.records import JobStore
from wholeimage.store.sqlite import SqliteJobStore

if TYPE_CHECKING:
    import httpx

    from wholeimage.callers import IdTokenVerifier
    from wholeimage.httputil import Egress
    from wholeimage.ims.client import ImsClient
    from wholeimage.ims.connection import ImsConnection
    from wholeimage.ims.platform import PlatformCredentials
    from wholeimage.ims.poller import JobPoller
    from wholeimage.results import Channel

log = logging.getLogger("wholeimage")

API_TOKEN_VARIABLE = "WHOLEIMAGE_API_TOKEN"  # noqa: S105 (a variable name, not a token)
OIDC_AUDIENCE_VARIABLE = "WHOLEIMAGE_OIDC_AUDIENCE"

Port = TypeVar("Port")


@dataclass
class Dependencies:
    """The settings, the store, and each port once it is built (or handed in by a test)."""

    settings: Settings
    store: JobStore
    # The ports hold credentials (an IAM password, webhook URLs): never in a repr.
    connection: ImsConnection | None = field(default=None, repr=False)
    ims: ImsClient | None = field(default=None, repr=False)
    poller: JobPoller | None = field(default=None, repr=False)
    channels: list[Channel] | None = field(default=None, repr=False)
    webhooks: httpx.Client | None = field(default=None, repr=False)
    # Checks callers' Google-signed ID tokens (WHOLEIMAGE_OIDC_*); tests hand in one over local keys.
    id_tokens: IdTokenVerifier | None = field(default=None, repr=False)
    egress: Egress | None = field(default=None, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Set on a request's view only (``for_request``): the temporary credentials the platform
    # handed that request, and the process's dependencies, which hold every port but IMS's.
    platform_credentials: PlatformCredentials | None = field(default=None, repr=False)
    _process: Dependencies | None = field(default=None, repr=False)

    def once(self, port: str, build: Callable[[], Port]) -> Port:
        """The port in field ``port``: built by ``build`` on first use, then kept for the process.

        Re-entrant, so one port's builder may ask for another (the client for the connection).
        """
        if self._process is not None and port not in REQUEST_PORTS:
            return self._process.once(port, build)
        with self._lock:
            value: Any = getattr(self, port)
            if value is None:
                value = build()
                setattr(self, port, value)
            return cast("Port", value)

    def for_request(self, credentials: PlatformCredentials) -> Dependencies:
        """A view for one request whose IMS ports (``REQUEST_PORTS``) are built, on first use,
        with ``credentials`` and die with the view; the store, the channels, the webhook client
        and the egress stay the process's."""
        return Dependencies(
            settings=self.settings,
            store=self.store,
            platform_credentials=credentials,
            _process=self,
        )


# The ports a request's view builds for itself: they carry that request's credentials.
REQUEST_PORTS = frozenset({"connection", "ims", "poller"})


def open_store(state_url: str) -> JobStore:
    """The store for ``WHOLEIMAGE_STATE_URL``.

    Raises:
        ConfigurationError: the URL names no store we have.
    """
    if state_url.startswith("sqlite:///"):
        return SqliteJobStore(state_url.removeprefix("sqlite:///"))
    if state_url.startswith(("postgresql://", "postgres://")):
        # Imported only when configured: psycopg and its pool cost a process that uses SQLite
        # tens of milliseconds of cold start for nothing.
        from wholeimage.store.postgres import PostgresJobStore  # noqa: PLC0415

        return PostgresJobStore(state_url)
    raise ConfigurationError("WHOLEIMAGE_STATE_URL must be sqlite:///path or postgresql://...")


_dependencies: Dependencies | None = None
_dependencies_lock = threading.Lock()


def get_dependencies() -> Dependencies:
    """The process's dependencies, built from the environment on first use."""
    global _dependencies  # noqa: PLW0603 (a lazy per-process singleton)
    with _dependencies_lock:
        if _dependencies is None:
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
    """Log a loud warning when no caller authentication is configured: every caller is then
    trusted. Either the API token or the OIDC ID token settings authenticate callers."""
    # Only these variables are read at start, directly and cheaply, so the warning appears when
    # the process starts rather than on its first request; everything else waits for first use.
    if not (os.environ.get(API_TOKEN_VARIABLE) or os.environ.get(OIDC_AUDIENCE_VARIABLE)):
        configure_logging()
        log.warning(
            f"{API_TOKEN_VARIABLE} is not set (nor {OIDC_AUDIENCE_VARIABLE}): wholeimage accepts "
            "calls from anyone who can reach it. Set it in any deployment reachable from a network."
        )
