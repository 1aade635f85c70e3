"""The IMS ports the application layer builds from settings, once per process, or for one request.

``create`` and ``check`` share one ``ImsConnection`` (endpoint and credentials, including an IAM
token cache) when one process serves both; each port is built on first use, so a process that only
reads jobs never needs IMS settings. A request that brings the platform's temporary credentials
(and no static ones are configured) gets ports of its own, ``request_ports``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from wholeimage.bootstrap import Dependencies
from wholeimage.ims.client import HttpImsClient, ImsClient
from wholeimage.ims.connection import ImsConnection
from wholeimage.ims.platform import Headers, PlatformCredentials
from wholeimage.logs import request_secrets
from wholeimage.service.egress import egress

log = logging.getLogger("wholeimage.service")


def ims_connection(deps: Dependencies) -> ImsConnection:
    """Where IMS is and how we authenticate, resolved from the settings (and, on a request's
    view, its platform credentials) on first use."""
    return deps.once(
        "connection",
        lambda: ImsConnection.from_settings(deps.settings, platform=deps.platform_credentials),
    )


def ims_client(deps: Dependencies) -> ImsClient:
    """The synchronous IMS client ``create`` uses."""
    return deps.once("ims", lambda: ims_connection(deps).client(deps.settings, egress(deps)))


@contextmanager
def request_ports(deps: Dependencies, headers: Headers) -> Iterator[Dependencies]:
    """The dependencies one request's use case takes: ``deps`` itself, or, when the request
    carries the platform's temporary credentials (FunctionGraph's ``X-CFF-*`` headers), no static
    ones are configured and ``WHOLEIMAGE_PLATFORM_CREDENTIALS`` is ``auto``, a view of them whose
    IMS ports sign with those credentials (docs/platform-credentials.md).

    Such ports are built for the request when it first calls IMS (a connection and an httpx
    client: well under a millisecond, next to the IMS call) and closed after it; the process's cached ones are never
    built from, nor handed, the request's credentials. While the block runs, the log filter and
    error bodies redact them. Answer errors inside the block, so that holds for them too.

    Raises:
        RequestInvalidError: the headers are malformed or incomplete (their names, not values).
    """
    settings = deps.settings
    credentials = None
    if settings.platform_credentials == "auto" and not settings.has_static_credentials():
        credentials = PlatformCredentials.from_headers(headers)
    if credentials is None:
        yield deps
        return
    with request_secrets(credentials.secret_values()):
        scoped = deps.for_request(credentials)
        log.debug("this request's IMS calls use the platform's temporary credentials")
        try:
            yield scoped
        finally:
            if isinstance(scoped.ims, HttpImsClient):
                scoped.ims.close()
