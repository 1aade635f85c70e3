"""Querying many IMS jobs at once: an async job query, one rate limiter per IMS account.

Each poll is a single attempt: a failure never fails a job, it only reschedules it (the
``check`` use case decides). The answer is classified into a ``PollResult``:

- ``report``: IMS answered 200 with a job;
- ``not_found``: IMS answered 404 (a clear terminal error after a grace period);
- ``throttled``: 429 or ``IMG.0060`` flow control; the limiter pauses every worker;
- ``transient``: timeouts, resets, 5xx;
- ``auth``: 401/403, our credentials are wrong: polling more is pointless;
- ``rejected``: another 4xx, or a 404 from the API gateway (a wrong endpoint, not a lost job);
- ``not_sent``: the rate limiter would have made the query wait past the caller's budget.

Workers use one keep-alive connection each (``wholeimage.ims.keepalive.KeepAlivePollClient``,
which says why, directly or through an ``http://`` proxy), all sharing one SSL context; through
another kind of proxy each worker has an ``httpx.AsyncClient`` (``HttpxPollClient``). Any client
with ``get(path)`` and ``aclose()`` (an ``httpx.AsyncClient`` in tests) also works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote

import httpx

from wholeimage.httputil import (
    USER_AGENT,
    Egress,
    RateLimiter,
    retry_after_seconds,
    shared_egress,
)
from wholeimage.ids import PLAIN_JOB_ID
from wholeimage.ims.auth import AkSkAuth, HeaderSigner, IamPasswordAuth, StaticTokenAuth
from wholeimage.ims.client import FLOW_CONTROL_CODE, upstream_code_and_message
from wholeimage.ims.job_report import JobReport, parse_job_report
from wholeimage.ims.keepalive import KeepAlivePollClient

if TYPE_CHECKING:
    from wholeimage.ims.connection import ImsConnection
    from wholeimage.settings import Settings

PollOutcome = Literal[
    "report", "not_found", "throttled", "transient", "auth", "rejected", "not_sent", "unpollable"
]


@dataclass(frozen=True)
class PollResult:
    """One job query's outcome; ``report`` is set only for ``outcome == "report"``."""

    outcome: PollOutcome
    report: JobReport | None = None
    retry_after: float | None = None
    detail: str | None = None


class PollClient(Protocol):
    """What a worker needs: ``GET`` a path, and close."""

    async def get(self, url: str) -> httpx.Response:
        """Send a ``GET`` for ``url`` (relative to the IMS endpoint)."""
        ...

    async def aclose(self) -> None:
        """Release the connection."""
        ...


class JobPoller:
    """``GET /v1/{project_id}/jobs/{job_id}`` over async clients that carry our auth."""

    def __init__(
        self,
        *,
        project_id: str,
        client_factory: Callable[[], PollClient],
        limiter: RateLimiter,
        default_backoff: float = 30.0,
    ) -> None:
        self._project_id = project_id
        self._client_factory = client_factory
        self.limiter = limiter
        self._default_backoff = default_backoff

    def new_client(self) -> PollClient:
        """One client per worker (see the module docstring)."""
        return self._client_factory()

    async def query(
        self, client: PollClient, job_id: str, *, max_wait: float = float("inf")
    ) -> PollResult:
        """Query one job once and classify the answer; wait for the limiter at most ``max_wait`` s."""
        if not PLAIN_JOB_ID.fullmatch(job_id):
            return PollResult("unpollable", detail="the IMS job id is not a plain token")
        if not await self.limiter.acquire(max_wait):
            return PollResult("not_sent", detail="rate limited past the time budget")
        try:
            response = await client.get(f"/v1/{self._project_id}/jobs/{quote(job_id, safe='')}")
        except httpx.TransportError as exc:
            return PollResult("transient", detail=type(exc).__name__)
        return self._classify(response)

    def _classify(self, response: httpx.Response) -> PollResult:  # noqa: PLR0911 (one return per outcome)
        status = response.status_code
        if status == 200:
            try:
                payload: Any = response.json()
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                return PollResult("transient", detail="IMS answered 200 without a JSON object")
            return PollResult("report", report=parse_job_report(payload))
        code, message = upstream_code_and_message(response)
        detail = f"{status} {code or ''} {message or ''}".strip()
        if status == 429 or code == FLOW_CONTROL_CODE:
            wait = retry_after_seconds(response)
            wait = wait if wait is not None else self._default_backoff
            self.limiter.pause(wait)
            return PollResult("throttled", retry_after=wait, detail=detail)
        if status == 404:
            # IMS says IMG.xxxx for an unknown job; an APIGW code means we called the wrong place.
            if code and code.startswith("APIGW."):
                return PollResult("rejected", detail=detail)
            return PollResult("not_found", detail=detail)
        if status in (401, 403):
            return PollResult("auth", detail=detail)
        if status >= 500:
            return PollResult("transient", retry_after=retry_after_seconds(response), detail=detail)
        return PollResult("rejected", detail=detail)


class HttpxPollClient:
    """A worker's client through a proxy the keep-alive client does not speak (``https://``,
    SOCKS): an ``httpx.AsyncClient``, signed by the same auth. Correct first; such proxies are rare
    enough that its cost per query (docs/performance.md) is left as it is."""

    def __init__(self, *, client: httpx.AsyncClient, auth: HeaderSigner, host: str) -> None:
        self._client = client
        self._auth = auth
        self._host = host

    async def get(self, url: str) -> httpx.Response:
        """A signed ``GET`` of ``url`` (relative to the IMS endpoint)."""
        headers = self._auth.signed_headers(method="GET", host=self._host, path=url, query=[])
        return await self._client.get(url, headers=headers)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()


def async_client_factory(
    *,
    base_url: str,
    auth: Callable[[], HeaderSigner],
    timeout: float,
    egress: Egress,
    user_agent: str,
) -> Callable[[], PollClient]:
    """Build per-worker clients: one connection each, one shared SSL context, through the proxy
    the environment names for IMS (docs/egress.md §2)."""
    proxy = egress.proxy_for(base_url)
    host = httpx.URL(base_url).netloc.decode("ascii")

    def factory() -> PollClient:
        if proxy is None or httpx.URL(proxy).scheme == "http":
            return KeepAlivePollClient(
                base_url=base_url,
                auth=auth(),
                timeout=timeout,
                ssl_context=egress.ssl_context,
                user_agent=user_agent,
                proxy=proxy,
            )
        client = egress.async_client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            headers={"User-Agent": user_agent},
        )
        return HttpxPollClient(client=client, auth=auth(), host=host)

    return factory


def job_poller(
    connection: ImsConnection, settings: Settings, egress: Egress | None = None
) -> JobPoller:
    """The async poller ``check`` uses: per-worker clients, one rate limiter."""
    egress = egress or shared_egress()
    base_url, sync_auth = connection.base_url, connection.auth

    def auth_for_a_worker() -> HeaderSigner:
        if isinstance(sync_auth, IamPasswordAuth):
            token = sync_auth.current_token(lambda: egress.client(timeout=settings.ims_timeout))
            return StaticTokenAuth(token)
        if isinstance(sync_auth, AkSkAuth | StaticTokenAuth):
            return sync_auth
        raise TypeError(f"cannot poll with {type(sync_auth).__name__}")

    return JobPoller(
        project_id=connection.project_id,
        client_factory=async_client_factory(
            base_url=base_url,
            auth=auth_for_a_worker,
            timeout=settings.ims_timeout,
            egress=egress,
            user_agent=USER_AGENT,
        ),
        limiter=RateLimiter(settings.ims_rate_limit),
    )
