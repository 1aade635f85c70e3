"""The IMS client port and its httpx adapter: signing, retries, and IMS answers as our errors.

What IMS answers becomes (docs/ims-api.md §1.5, §3):

- 200 with a ``job_id``: the job id;
- 401/403: ``UpstreamAuthError`` (our credentials are wrong, never the caller's fault);
- 429, 500, 502, 503 and ``IMG.0060`` (flow control): retried with capped exponential backoff,
  full jitter, honouring ``Retry-After``; then ``UpstreamUnavailableError`` with a retry hint;
- another 4xx with an ``IMG.`` code: ``ImsRejectedError`` carrying IMS's code and message;
- anything else: ``UpstreamError``.

A POST that timed out after it was sent (read timeout, connection lost, 504) may have been
accepted: it raises ``UpstreamTimeoutError(request_sent=True)`` and is never resubmitted.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from wholeimage.errors import (
    ImsRejectedError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from wholeimage.httputil import retry_after_seconds
from wholeimage.ims import signer

log = logging.getLogger("wholeimage.ims.client")

CREATE_PATH = "/v1/cloudimages/wholeimages/action"
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
FLOW_CONTROL_CODE = "IMG.0060"
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503})
# Refresh an IAM token this long before it expires (tokens live 24 h; docs/ims-api.md §4.1).
TOKEN_REFRESH_MARGIN = timedelta(minutes=30)


class ImsClient(Protocol):
    """What the use cases need from IMS."""

    def create_whole_image(self, body: dict[str, Any]) -> str:
        """Submit a full-ECS image request; return IMS's job id."""
        ...

    def get_job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/{project_id}/jobs/{job_id}``: the job as IMS reports it."""
        ...


# --- authentication -------------------------------------------------------------------------


class HeaderSigner(Protocol):
    """An auth that can produce one request's auth headers directly (no ``httpx.Request``)."""

    def signed_headers(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: list[tuple[str, str]],
        body: bytes = b"",
        content_type: str | None = None,
    ) -> dict[str, str]:
        """The headers that authenticate the request."""
        ...


class AkSkAuth(httpx.Auth):
    """Sign each request with AK/SK (``SDK-HMAC-SHA256``), as the official SDK does."""

    requires_request_body = True

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        project_id: str,
        security_token: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._project_id = project_id
        self._security_token = security_token
        self._now = now

    def signed_headers(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: list[tuple[str, str]],
        body: bytes = b"",
        content_type: str | None = None,
    ) -> dict[str, str]:
        """The headers that sign one request, ``Authorization`` included."""
        signed = {"Host": host, "X-Sdk-Date": signer.format_sdk_date(self._now())}
        if body:
            signed["Content-Type"] = content_type or JSON_CONTENT_TYPE
        signed["X-Project-Id"] = self._project_id
        if self._security_token:
            signed["X-Security-Token"] = self._security_token
        signed = signer.with_content_sha256(signed)  # a non-JSON body is signed as UNSIGNED-PAYLOAD
        signed["Authorization"] = signer.authorization_header(
            access_key=self._access_key,
            secret_key=self._secret_key,
            method=method,
            path=path,
            query=query,
            headers=signed,
            body=body,
        )
        return signed

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the signed headers and the ``Authorization`` header."""
        request.headers.update(
            self.signed_headers(
                method=request.method,
                host=request.url.netloc.decode("ascii"),
                path=request.url.path,
                query=request.url.params.multi_items(),
                body=request.content,
                content_type=request.headers.get("Content-Type"),
            )
        )
        yield request


class StaticTokenAuth(httpx.Auth):
    """Send a given IAM token as ``X-Auth-Token``."""

    def __init__(self, token: str) -> None:
        self._token = token

    def signed_headers(self, **_: object) -> dict[str, str]:
        """The token header (the same for every request)."""
        return {"X-Auth-Token": self._token}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the token header."""
        request.headers["X-Auth-Token"] = self._token
        yield request


@dataclass
class _CachedToken:
    value: str
    expires_at: datetime


@dataclass
class IamPasswordAuth(httpx.Auth):
    """Obtain a project-scoped IAM token with user/password/domain, cache it until near expiry."""

    # The flow parses IAM's answer; a real transport streams it, so httpx must read it first.
    requires_response_body = True

    iam_endpoint: str
    user: str
    password: str
    domain: str
    project_id: str
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _cached: _CachedToken | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _token_request(self) -> httpx.Request:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.user,
                            "password": self.password,
                            "domain": {"name": self.domain},
                        }
                    },
                },
                "scope": {"project": {"id": self.project_id}},
            }
        }
        return httpx.Request(
            "POST",
            f"{self.iam_endpoint}/v3/auth/tokens?nocatalog=true",
            content=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json;charset=utf8"},
        )

    def _remember(self, response: httpx.Response) -> str:
        if response.status_code != 201 or "X-Subject-Token" not in response.headers:
            code, message = upstream_code_and_message(response)
            raise UpstreamAuthError(
                f"IAM refused to issue a token ({response.status_code})",
                upstream={"status": response.status_code, "code": code, "message": message},
            )
        token = response.headers["X-Subject-Token"]
        try:
            expires_at = datetime.fromisoformat(
                response.json()["token"]["expires_at"].replace("Z", "+00:00")
            )
        except (ValueError, KeyError, TypeError):
            expires_at = self.now() + timedelta(hours=1)  # unknown expiry: keep it only briefly
        self._cached = _CachedToken(token, expires_at)
        return token

    def _valid_token(self) -> str | None:
        cached = self._cached
        if cached is not None and cached.expires_at - TOKEN_REFRESH_MARGIN > self.now():
            return cached.value
        return None

    def current_token(self, client_factory: Callable[[], httpx.Client]) -> str:
        """A valid token, fetched with a new client when needed (for async callers, see below).

        The flow below holds a thread lock across its token request, which would deadlock two
        coroutines on one event loop; async pollers take a token from here first and send it
        as a ``StaticTokenAuth`` (valid for 30 minutes more, far longer than a tick).
        """
        with self._lock:
            token = self._valid_token()
            if token is None:
                with client_factory() as client:
                    response = client.send(self._token_request())
                    response.read()
                token = self._remember(response)
            return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Use the cached token; fetch one first when there is none or it is near expiry."""
        # The lock spans the token fetch so concurrent threads fetch one token, not one each.
        with self._lock:
            token = self._valid_token()
            if token is None:
                token = self._remember((yield self._token_request()))
        request.headers["X-Auth-Token"] = token
        response = yield request
        if response.status_code == 401:
            # Tokens are revoked early when a password or permission changes: fetch once more.
            with self._lock:
                if self._cached is None or self._cached.value == token:
                    self._cached = None
                    token = self._remember((yield self._token_request()))
                else:
                    token = self._cached.value  # another thread has refreshed it meanwhile
            request.headers["X-Auth-Token"] = token
            yield request


# --- the client -----------------------------------------------------------------------------


def upstream_code_and_message(response: httpx.Response) -> tuple[str | None, str | None]:
    """Read an error code and message from any of the shapes IMS, APIG and IAM use (docs/ims-api.md §3)."""
    try:
        payload = response.json()
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    candidates = [payload]
    if isinstance(payload.get("error"), dict):
        candidates.insert(0, payload["error"])
    for item in candidates:
        for code_key, message_key in (
            ("code", "message"),
            ("error_code", "error_msg"),
            ("errorCode", "errorMsg"),
        ):
            if code_key in item:
                code, message = item.get(code_key), item.get(message_key)
                return (
                    str(code) if code is not None else None,
                    str(message) if message is not None else None,
                )
    return None, None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    budget: float = 20.0  # total seconds a call may spend waiting between attempts

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based): uniform in [0, min(cap, base·2^n)]."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def _failed_on(exc: httpx.TransportError, path: str) -> bool:
    """Whether ``exc`` happened on the request to ``path``, not on one the auth sent before it."""
    try:
        failed = exc.request
    except RuntimeError:  # unknown: assume the worst
        return True
    return failed.url.path.endswith(path)


class _Retryable(Exception):
    def __init__(self, delay_hint: float | None, upstream: dict[str, Any]) -> None:
        super().__init__("retryable")
        self.delay_hint = delay_hint
        self.upstream = upstream


class HttpImsClient:
    """``ImsClient`` over an injected ``httpx.Client`` (whose auth signs or adds a token)."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        project_id: str,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._project_id = project_id
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()

    def create_whole_image(self, body: dict[str, Any]) -> str:
        """See ``ImsClient.create_whole_image``."""
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        response = self._call(
            "POST",
            CREATE_PATH,
            content=content,
            headers={"Content-Type": JSON_CONTENT_TYPE},
            idempotent=False,
        )
        try:
            job_id = response.json()["job_id"]
        except (ValueError, KeyError, TypeError):
            job_id = None
        if not isinstance(job_id, str) or not job_id:
            raise UpstreamError("IMS accepted the request but its answer has no job_id")
        return job_id

    def get_job(self, job_id: str) -> dict[str, Any]:
        """See ``ImsClient.get_job``."""
        response = self._call("GET", f"/v1/{self._project_id}/jobs/{job_id}", idempotent=True)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise UpstreamError(
                "IMS answered the job query with something that is not a JSON object"
            )
        return payload

    def _call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        waited = 0.0
        last: _Retryable | None = None
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                return self._attempt(
                    method, path, idempotent=idempotent, content=content, headers=headers
                )
            except _Retryable as retryable:
                last = retryable
            if attempt == self._retry.max_attempts:
                break
            delay = (
                last.delay_hint
                if last.delay_hint is not None
                else self._retry.backoff(attempt, self._rng)
            )
            if waited + delay > self._retry.budget:
                break
            log.warning(
                "IMS call will be retried",
                extra={"attempt": attempt, "delay_s": round(delay, 3), "upstream": last.upstream},
            )
            self._sleep(delay)
            waited += delay
        assert last is not None  # the loop only ends here after a retryable failure  # noqa: S101
        hint = last.delay_hint if last.delay_hint is not None else self._retry.max_delay
        raise UpstreamUnavailableError(
            "IMS is throttling or unavailable; try again later",
            retry_after=max(1, math.ceil(hint)),
            upstream=last.upstream,
        )

    def _attempt(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        content: bytes | None,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached IMS: always safe to try again.
            raise _Retryable(None, {"error": type(exc).__name__}) from exc
        except httpx.TransportError as exc:
            if idempotent or not _failed_on(exc, path):
                # Retrying is safe, or what failed was another request (IAM's token) first.
                raise _Retryable(None, {"error": type(exc).__name__}) from exc
            raise UpstreamTimeoutError(
                "IMS did not answer after the request was sent; it may have been accepted",
                request_sent=True,
            ) from exc
        return self._check(response, idempotent=idempotent)

    def _check(self, response: httpx.Response, *, idempotent: bool) -> httpx.Response:
        status = response.status_code
        if status == 200:
            return response
        code, message = upstream_code_and_message(response)
        upstream = {"status": status, "code": code, "message": message}
        if status in _RETRYABLE_STATUSES or code == FLOW_CONTROL_CODE:
            raise _Retryable(retry_after_seconds(response), upstream)
        if status == 504:
            if idempotent:
                raise _Retryable(retry_after_seconds(response), upstream)
            raise UpstreamTimeoutError(
                "IMS's gateway timed out after the request was sent; it may have been accepted",
                request_sent=True,
            )
        if status in (401, 403):
            raise UpstreamAuthError(
                f"IMS refused wholeimage's credentials ({status}); an operator must fix them",
                upstream=upstream,
            )
        if 400 <= status < 500 and code and code.startswith("IMG."):
            raise ImsRejectedError(
                f"IMS refused the request: {message or code}", http_status=status, upstream=upstream
            )
        raise UpstreamError(f"IMS answered {status} unexpectedly", upstream=upstream)
