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

Workers use one connection each (``CorePollClient``), all sharing one SSL context. Measured
here (scripts/bench_check.py, 64 workers, 50 ms server latency), the client's CPU per request
decides the fan-out: one shared pool costs 5-10x (performance.md, "Polling fan-out"), and even
per-worker ``httpx.AsyncClient`` objects spend about twice the CPU of httpx's own transport core,
httpcore, driven directly (ratio to the floor 2.0 vs 1.17). So workers send through httpcore,
signed by the same ``httpx.Auth`` as everything else, and answer ``httpx.Response`` objects;
any client with ``get(path)`` and ``aclose()`` (an ``httpx.AsyncClient`` in tests) also works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpcore
import httpx

from wholeimage.ims import (
    FLOW_CONTROL_CODE,
    HeaderSigner,
    retry_after_seconds,
    upstream_code_and_message,
)
from wholeimage.job_report import JobReport, parse_job_report

PollOutcome = Literal[
    "report", "not_found", "throttled", "transient", "auth", "rejected", "not_sent"
]


@dataclass(frozen=True)
class PollResult:
    """One job query's outcome; ``report`` is set only for ``outcome == "report"``."""

    outcome: PollOutcome
    report: JobReport | None = None
    retry_after: float | None = None
    detail: str | None = None


class RateLimiter:
    """A token bucket shared by all workers polling one IMS account, pausable on 429.

    ``rate`` is requests per second (0 = unlimited); ``burst`` tokens may be spent at once.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        """Stop everyone for ``seconds`` (IMS said 429 / flow control)."""
        until = self._clock() + max(seconds, 0.0)
        if until > self._paused_until:
            self._paused_until = until
            self.pauses += 1

    def wait_time(self) -> float:
        """Seconds until a request may go, without taking a token."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        if self.rate <= 0:
            return 0.0
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        """Spend one token (after ``wait_time`` said 0)."""
        if self.rate > 0:
            self._tokens -= 1

    def delay_needed(self) -> float:
        """Seconds to wait before a request may go; 0 means a token was taken now."""
        delay = self.wait_time()
        if delay <= 0:
            self.take()
        return delay

    async def acquire(self, max_wait: float = float("inf")) -> bool:
        """Wait until a request may be sent; False (without waiting) if that is past ``max_wait`` s."""
        waited = 0.0
        # Single-threaded event loop: check-and-take is atomic between awaits.
        while (delay := self.delay_needed()) > 0:
            if waited + delay > max_wait:
                return False
            await asyncio.sleep(delay)
            waited += delay
        return True


class PollClient(Protocol):
    """What a worker needs: ``GET`` a path, and close."""

    async def get(self, url: str) -> httpx.Response:
        """Send a ``GET`` for ``url`` (relative to the IMS endpoint)."""
        ...

    async def aclose(self) -> None:
        """Release the connection."""
        ...


class CorePollClient:
    """One keep-alive connection to IMS through httpcore, signed by our AK/SK or token auth.

    The auth answers in one step (AK/SK signing, a static token): the poller is handed a ready
    token for IAM auth (see ``bootstrap``). Headers are built directly, without an
    ``httpx.Request``: at this fan-out its URL parsing costs as much as the signing.
    """

    def __init__(
        self,
        *,
        base_url: str,
        auth: HeaderSigner,
        timeout: float,
        ssl_context: Any,
        user_agent: str,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._host = httpx.URL(base_url).netloc.decode("ascii")
        self._auth = auth
        self._user_agent = user_agent
        connect = min(10.0, timeout)
        self._timeouts = {"connect": connect, "read": timeout, "write": timeout, "pool": timeout}
        self._pool = httpcore.AsyncConnectionPool(ssl_context=ssl_context, max_connections=1)

    async def get(self, url: str) -> httpx.Response:
        """Send a signed ``GET``; transport failures raise ``httpx`` errors, as httpx would."""
        headers = self._auth.signed_headers(method="GET", host=self._host, path=url, query=[])
        headers["User-Agent"] = self._user_agent
        try:
            answer = await self._pool.request(
                "GET",
                self._base_url + url,
                headers=list(headers.items()),
                extensions={"timeout": self._timeouts},
            )
        except httpcore.TimeoutException as exc:
            raise httpx.TimeoutException(type(exc).__name__) from exc
        except httpcore.ConnectError as exc:
            raise httpx.ConnectError(type(exc).__name__) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise httpx.TransportError(type(exc).__name__) from exc
        return httpx.Response(answer.status, headers=answer.headers, content=answer.content)

    async def aclose(self) -> None:
        """Close the connection."""
        await self._pool.aclose()


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
        if not await self.limiter.acquire(max_wait):
            return PollResult("not_sent", detail="rate limited past the time budget")
        try:
            response = await client.get(f"/v1/{self._project_id}/jobs/{job_id}")
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
