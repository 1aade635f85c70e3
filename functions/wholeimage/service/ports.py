"""The IMS ports the application layer builds from settings, once per process.

``create`` and ``check`` share one ``ImsConnection`` (endpoint and credentials, including an IAM
token cache) when one process serves both; each port is built on first use, so a process that only
reads jobs never needs IMS settings.
"""

from __future__ import annotations

from wholeimage.bootstrap import Dependencies
from wholeimage.ims.client import ImsClient
from wholeimage.ims.connection import ImsConnection
from wholeimage.service.egress import egress


def ims_connection(deps: Dependencies) -> ImsConnection:
    """Where IMS is and how we authenticate, resolved from the settings on first use."""
    return deps.once("connection", lambda: ImsConnection.from_settings(deps.settings))


def ims_client(deps: Dependencies) -> ImsClient:
    """The synchronous IMS client ``create`` uses."""
    return deps.once("ims", lambda: ims_connection(deps).client(deps.settings, egress(deps)))
