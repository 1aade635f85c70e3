"""The IMS client port and its httpx adapter: calls, retries, and IMS answers as our errors.

The adapter is handed an ``httpx.Client`` whose auth signs each request or adds a token
(``wholeimage.ims.auth``). What IMS answers becomes (docs/ims-api.md §1.5, §3):

- 200 with a ``job_id``: the job id;
- 401/403: ``UpstreamAuthError`` (our credentials are wrong, never the caller's fault);
- 429, 500, 502, 503 and ``IMG.0060`` (flow control): retried with capped exponential backoff,
  full jitter, honouring ``Retry-After``; then ``UpstreamUnavailableError`` with a retry hint;
- another 4xx with an ``IMG.`` code: ``ImsRejectedError`` carrying IMS's code and message;
- anything else: ``UpstreamError``.

A POST that never reached IMS (no connection, or the auth's IAM token request failed first) is
retried like a 503. A POST that timed out after it was sent (read timeout, connection lost, 504),
or whose answer cannot be decoded, may have been accepted: it raises
``UpstreamTimeoutError(request_sent=True)`` and is never resubmitted.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
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

log = logging.getLogger("wholeimage.ims.client")

CREATE_PATH = "/v1/cloudimages/wholeimages/action"
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
FLOW_CONTROL_CODE = "IMG.0060"
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503})


class ImsClient(Protocol):
    """What the use cases need from IMS."""

    def create_whole_image(self, body: dict[str, Any]) -> str:
        """Submit a full-ECS image request; return IMS's job id."""
        ...


def upstream_code_and_message(response: httpx.Response) -> tuple[str | None, str | None]:
    """The error code and message in any of IMS's, APIG's and IAM's shapes (docs/ims-api.md §3)."""
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


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()

    def create_whole_image(self, body: dict[str, Any]) -> str:
        """See ``ImsClient.create_whole_image``."""
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        response = self._post(CREATE_PATH, content)
        try:
            job_id = response.json()["job_id"]
        except (ValueError, KeyError, TypeError):
            job_id = None
        # A lone surrogate ("\\ud800" in the JSON) is no text: it could not be stored or answered.
        if not isinstance(job_id, str) or not job_id or not _is_text(job_id):
            raise UpstreamError("IMS accepted the request but its answer has no job_id")
        return job_id

    def _post(self, path: str, content: bytes) -> httpx.Response:
        """POST with bounded retries of what IMS certainly did not accept."""
        waited = 0.0
        last: _Retryable | None = None
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                return self._attempt(path, content)
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

    def _attempt(self, path: str, content: bytes) -> httpx.Response:
        try:
            response = self._http.request(
                "POST", path, content=content, headers={"Content-Type": JSON_CONTENT_TYPE}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached IMS: always safe to try again.
            raise _Retryable(None, {"error": type(exc).__name__}) from exc
        except httpx.TransportError as exc:
            if not _failed_on(exc, path):
                # What failed was another request (IAM's token) first: IMS never saw this one.
                raise _Retryable(None, {"error": type(exc).__name__}) from exc
            raise UpstreamTimeoutError(
                "IMS did not answer after the request was sent; it may have been accepted",
                request_sent=True,
            ) from exc
        except httpx.DecodingError as exc:
            # IMS answered, but the body cannot be decoded (a broken gzip): it may have accepted.
            raise UpstreamTimeoutError(
                "IMS's answer could not be decoded; the request may have been accepted",
                request_sent=True,
            ) from exc
        return self._check(response)

    def _check(self, response: httpx.Response) -> httpx.Response:
        """The answer to the POST, or the error it means (see the module docstring)."""
        status = response.status_code
        if status == 200:
            return response
        code, message = upstream_code_and_message(response)
        upstream = {"status": status, "code": code, "message": message}
        if status in _RETRYABLE_STATUSES or code == FLOW_CONTROL_CODE:
            raise _Retryable(retry_after_seconds(response), upstream)
        if status == 504:
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
