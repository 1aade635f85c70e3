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

Workers use one keep-alive connection each (``KeepAlivePollClient``), all sharing one SSL
context. Measured here (64 workers, 50 ms server latency, 5,000 queries), the client's CPU per
query decides the fan-out, and each layer of the httpx stack costs: one shared pool 5-10x
(docs/performance.md §4, "Polling fan-out"); per-worker ``httpx.AsyncClient`` objects about 2 ms;
httpcore driven directly 0.98 ms; h11, the HTTP/1.1 engine beneath both, driven directly over
an asyncio stream 0.55 ms. So workers speak h11, signed by the same auth as everything else,
and answer ``httpx.Response`` objects; any client with ``get(path)`` and ``aclose()`` (an
``httpx.AsyncClient`` in tests) also works.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import h11
import httpx

from wholeimage.httputil import USER_AGENT, RateLimiter, retry_after_seconds, shared_ssl_context
from wholeimage.ims.client import (
    FLOW_CONTROL_CODE,
    AkSkAuth,
    HeaderSigner,
    IamPasswordAuth,
    StaticTokenAuth,
    upstream_code_and_message,
)
from wholeimage.ims.job_report import JobReport, parse_job_report

if TYPE_CHECKING:
    from wholeimage.ims.connection import ImsConnection
    from wholeimage.settings import Settings

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


class PollClient(Protocol):
    """What a worker needs: ``GET`` a path, and close."""

    async def get(self, url: str) -> httpx.Response:
        """Send a ``GET`` for ``url`` (relative to the IMS endpoint)."""
        ...

    async def aclose(self) -> None:
        """Release the connection."""
        ...


class KeepAlivePollClient:
    """One keep-alive HTTP/1.1 connection to IMS, spoken with h11, signed by our auth.

    h11 (httpx's own protocol engine, beneath httpcore) does all of HTTP/1.1: framing,
    chunking, keep-alive state. What is left here is one socket and its timeouts. Headers are
    built directly, without an ``httpx.Request``: at this fan-out its URL parsing costs as much
    as the signing. The auth answers in one step (AK/SK signing, a static token); the poller is
    handed a ready token for IAM auth (see ``bootstrap``).
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
        url = httpx.URL(base_url)
        self._tls = ssl_context if url.scheme == "https" else None
        self._hostname = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._host = url.netloc.decode("ascii")
        self._prefix = url.raw_path.decode("ascii").rstrip("/")
        self._auth = auth
        self._user_agent = user_agent
        self._timeout = timeout
        self._connect_timeout = min(10.0, timeout)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connection: h11.Connection | None = None

    async def get(self, url: str) -> httpx.Response:
        """Send a signed ``GET``; transport failures raise ``httpx`` errors, as httpx would."""
        headers = self._auth.signed_headers(method="GET", host=self._host, path=url, query=[])
        headers.setdefault("Host", self._host)  # signed by AK/SK; HTTP/1.1 needs it anyway
        headers["User-Agent"] = self._user_agent
        request = h11.Request(
            method="GET", target=self._prefix + url, headers=list(headers.items())
        )
        reused = self._connection is not None
        try:
            return await self._exchange(request)
        except _StaleConnectionError:
            # The server closed an idle kept-alive connection before answering: a GET is safe
            # to send again, once, on a fresh connection (httpcore does the same).
            if not reused:
                raise httpx.RemoteProtocolError("the server closed the connection") from None
            await self.aclose()
            try:
                return await self._exchange(request)
            except _StaleConnectionError:
                raise httpx.RemoteProtocolError("the server closed the connection") from None

    async def _exchange(self, request: h11.Request) -> httpx.Response:
        connection, reader, writer = await self._open()
        try:
            writer.write(connection.send(request) + connection.send(h11.EndOfMessage()))
            response, body = await asyncio.wait_for(self._read(connection, reader), self._timeout)
        except TimeoutError as exc:
            await self.aclose()
            raise httpx.ReadTimeout("IMS did not answer in time") from exc
        except (OSError, h11.ProtocolError) as exc:
            await self.aclose()
            raise httpx.ReadError(type(exc).__name__) from exc
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
        else:
            await self.aclose()
        return httpx.Response(response.status_code, headers=list(response.headers), content=body)

    @staticmethod
    async def _read(
        connection: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Response, bytes]:
        response: h11.Response | None = None
        body = bytearray()
        received = False
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await reader.read(65536)
                except ConnectionResetError:
                    if received:
                        raise
                    raise _StaleConnectionError from None
                if not data and not received:
                    raise _StaleConnectionError  # closed before a byte of the answer
                received = True
                connection.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body.extend(event.data)
            elif isinstance(event, h11.EndOfMessage) and response is not None:
                return response, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) and response is None:
                raise _StaleConnectionError
            elif isinstance(event, h11.ConnectionClosed | h11.EndOfMessage):
                raise h11.RemoteProtocolError("incomplete response")

    async def _open(self) -> tuple[h11.Connection, asyncio.StreamReader, asyncio.StreamWriter]:
        """The kept-alive connection, or a new one."""
        if self._connection is not None and self._reader is not None and self._writer is not None:
            return self._connection, self._reader, self._writer
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._hostname, self._port, ssl=self._tls),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("could not connect to IMS in time") from exc
        except OSError as exc:
            raise httpx.ConnectError(type(exc).__name__) from exc
        self._connection, self._reader, self._writer = h11.Connection(h11.CLIENT), reader, writer
        return self._connection, reader, writer

    async def aclose(self) -> None:
        """Close the connection (a later ``get`` opens a new one)."""
        writer, self._writer, self._reader, self._connection = self._writer, None, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # already gone: closing is all we wanted
                await writer.wait_closed()


class _StaleConnectionError(Exception):
    """The connection ended before any answer began."""


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


def async_client_factory(
    *,
    base_url: str,
    auth: Callable[[], HeaderSigner],
    timeout: float,
    verify: Any,
    user_agent: str,
) -> Callable[[], PollClient]:
    """Build per-worker clients: one connection each, one shared SSL context."""

    def factory() -> PollClient:
        return KeepAlivePollClient(
            base_url=base_url,
            auth=auth(),
            timeout=timeout,
            ssl_context=verify,
            user_agent=user_agent,
        )

    return factory


def job_poller(connection: ImsConnection, settings: Settings) -> JobPoller:
    """The async poller ``check`` uses: per-worker clients, one rate limiter."""
    base_url, sync_auth = connection.base_url, connection.auth

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
        project_id=connection.project_id,
        client_factory=async_client_factory(
            base_url=base_url,
            auth=auth_for_a_worker,
            timeout=settings.ims_timeout,
            verify=shared_ssl_context(),
            user_agent=USER_AGENT,
        ),
        limiter=RateLimiter(settings.ims_rate_limit),
    )
