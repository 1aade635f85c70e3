"""Where IMS is and how we authenticate: what the create client and the check poller share.

``ImsConnection.from_settings`` resolves the endpoint and picks the credentials in the documented
order (AK/SK, then a static token, then an IAM password, then the temporary credentials the
platform handed one request); ``client`` builds the synchronous client
``create`` uses. The poller ``check`` uses is built from the same connection by
``wholeimage.ims.poller.job_poller``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from wholeimage.errors import ConfigurationError
from wholeimage.httputil import USER_AGENT, Egress, shared_egress
from wholeimage.ims.auth import AkSkAuth, IamPasswordAuth, StaticTokenAuth
from wholeimage.ims.client import HttpImsClient, ImsClient, RetryPolicy
from wholeimage.ims.endpoints import resolve_endpoints

if TYPE_CHECKING:
    from wholeimage.ims.platform import PlatformCredentials
    from wholeimage.settings import Settings


@dataclass
class ImsConnection:
    """Where IMS is and how we authenticate: shared by the create client and the check poller."""

    base_url: str
    project_id: str
    auth: httpx.Auth

    @classmethod
    def from_settings(
        cls, settings: Settings, platform: PlatformCredentials | None = None
    ) -> ImsConnection:
        """Resolve the endpoint and pick the credentials, in the documented order: AK/SK, a
        token, an IAM password, and only when none is configured the ``platform``'s temporary
        credentials of one request (docs/platform-credentials.md)."""

        endpoints = resolve_endpoints(
            cloud=settings.cloud,
            region=settings.region,
            ims_endpoint=settings.ims_endpoint,
            iam_endpoint=settings.iam_endpoint,
        )
        project_id = settings.require_project_id()
        auth: httpx.Auth
        # An empty variable counts as not set (a SecretStr of "" is falsy), as for the API token.
        if platform is not None and not settings.has_static_credentials():
            auth = platform.auth(project_id)
        elif settings.access_key or settings.secret_key:
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
                "or WHOLEIMAGE_IAM_USER, WHOLEIMAGE_IAM_PASSWORD and WHOLEIMAGE_IAM_DOMAIN; on "
                "FunctionGraph, an agency and Include Keys (enable_auth_in_header) hand each "
                "request temporary ones"
            )
        return cls(base_url=endpoints.ims, project_id=project_id, auth=auth)

    def client(self, settings: Settings, egress: Egress | None = None) -> ImsClient:
        """The synchronous client ``create`` uses, with bounded retries, leaving by ``egress``
        (the process's, from the environment, unless given): its proxies and CA, for IAM's token
        request as for IMS."""
        http = (egress or shared_egress()).client(
            base_url=self.base_url,
            auth=self.auth,
            timeout=httpx.Timeout(settings.ims_timeout, connect=min(10.0, settings.ims_timeout)),
            headers={"User-Agent": USER_AGENT},
        )
        retry = RetryPolicy(
            max_attempts=settings.ims_max_attempts, budget=settings.ims_retry_budget
        )
        return HttpImsClient(http, retry=retry)
