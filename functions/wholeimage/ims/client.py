"""The IMS client port and its httpx adapter: calls, retries, and IMS answers as our errors.

The adapter is handed an ``httpx.Client`` whose auth signs each request or adds a token
(``wholeimage.ims.auth``). A create POST is a write IMS may accept only once, so what its
answer means decides whether it may be sent again (docs/ims-api.md §3.4, docs/reconcile.md):

- 200 with a plain ``job_id``: the job id;
- certainly refused, so retried with capped exponential backoff, full jitter and
  ``Retry-After``, then ``UpstreamUnavailableError``: nothing was sent (no connection, or the
  auth's IAM token request failed first), 429, or the flow-control codes ``IMG.0060`` and
  ``APIGW.0308`` at any status;
- certainly refused, never retried: 401/403 (``UpstreamAuthError``), a redirect or another
  4xx (``ImsRejectedError`` with IMS's ``IMG.`` code, else ``UpstreamError``);
- everything else is *uncertain*, ``SubmissionUncertainError``, never sent again: a 5xx after
  the request went out, a timeout or lost connection after sending (``UpstreamTimeoutError``),
  a 200 without a readable, plain job id.

An answer that cannot be decoded (a broken gzip body) counts as lost after sending.
The image list is asked once per lookup (or page): a failure is a failed lookup, asked again
on the reconcile schedule.

A delete (``DELETE /v2/images/{image_id}``, docs/ims-api.md §2.6) is a write under the same
discipline: 204 (or 200) is done, the same certain refusals are retried, and what is uncertain
raises ``SubmissionUncertainError`` saying the image may have been deleted; it is never resent,
the image is read again instead (``find_image``). An image IMS does not know (404 without a
gateway code, or IMG.0027) is ``ImageNotFoundError``.
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
from urllib.parse import quote

import httpx

from wholeimage.errors import (
    ImageNotFoundError,
    ImsRejectedError,
    SubmissionUncertainError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from wholeimage.httputil import retry_after_seconds
from wholeimage.ids import PLAIN_JOB_ID

log = logging.getLogger("wholeimage.ims.client")

CREATE_PATH = "/v1/cloudimages/wholeimages/action"
IMAGES_PATH = "/v2/cloudimages"
# The native delete; the id is checked against PLAIN_JOB_ID first (docs/ims-api.md §2.6).
DELETE_PATH_PREFIX = "/v2/images/"
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
FLOW_CONTROL_CODE = "IMG.0060"
# Refusals that say "too many requests, nothing done" (docs/ims-api.md §3.2, §3.3).
_FLOW_CONTROL_CODES = frozenset({FLOW_CONTROL_CODE, "APIGW.0308"})
# Statuses a safe read (never a write) tries again.
_READ_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# The image statuses IMS documents (docs/ims-api.md §2.5).
IMAGE_STATUSES = frozenset({"queued", "saving", "active", "killed", "deleted"})
# "The image ID in the request does not exist" (docs/ims-api.md §2.6): gone already.
_IMAGE_UNKNOWN_CODE = "IMG.0027"
# A 403 with one of these refuses this image (protected, not ours, public), not our credentials.
_IMAGE_REFUSAL_CODES = frozenset({"IMG.0028", "IMG.0092", "IMG.0094"})


@dataclass(frozen=True)
class ImageSummary:
    """One image of IMS's image list, the fields reconciliation reads."""

    image_id: str
    name: str
    status: str
    created_at: str | None = None
    tags: tuple[str, ...] | None = None  # as IMS lists them, when it does
    protected: bool | None = None  # a protected image cannot be deleted; None when not listed


class ImsClient(Protocol):
    """What the use cases need from IMS."""

    def create_whole_image(self, body: dict[str, Any]) -> str:
        """Submit a full-ECS image request; return IMS's job id."""
        ...

    def find_whole_images(
        self, *, tag_key: str, tag_value: str, enterprise_project_id: str | None = None
    ) -> list[ImageSummary]:
        """The full-ECS images of this project (and enterprise project, when given) that carry
        the tag ``tag_key=tag_value``."""
        ...

    def delete_image(self, image_id: str, *, delete_backup: bool) -> None:
        """Delete one image (and its CBR/CSBS backup when ``delete_backup``); return once IMS
        answered 204. ``ImageNotFoundError`` means it was gone already."""
        ...

    def find_image(self, image_id: str) -> ImageSummary | None:
        """The image with this id as IMS lists it, or ``None`` when the list holds none."""
        ...

    def list_images_by_tag(
        self,
        *,
        tag_key: str,
        tag_value: str,
        whole_image: bool = True,
        private_only: bool = True,
        enterprise_project_id: str | None = None,
        page_size: int = 500,
        max_pages: int = 20,
    ) -> list[ImageSummary]:
        """Every image carrying the tag ``tag_key=tag_value`` (full-ECS ones only when
        ``whole_image``, the project's own only when ``private_only``, of one enterprise
        project when given), read page by page."""
        ...


def plain_image_id(image_id: str) -> str:
    """``image_id`` percent-encoded for a path, once it is known to be a plain token.

    Raises:
        ValueError: the id is not plain (docs/ims-api.md §1.5): it came from somewhere it
            should not have, and must not reach a path or a query.
    """
    if not isinstance(image_id, str) or not PLAIN_JOB_ID.fullmatch(image_id):
        raise ValueError("an image id must be a plain token of letters, digits, '.', '_', '-'")
    # A plain id needs no encoding; quoting anyway keeps the path safe if the pattern widens.
    return quote(image_id, safe="")


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


Refusal = Callable[[int, str | None, dict[str, Any]], None]


@dataclass(frozen=True)
class _Write:
    """What one kind of write's answers mean beyond the shared mapping.

    Attributes:
        done: The statuses that mean IMS did it.
        maybe: Ends every uncertain error's message: what may have happened.
        refusal: Reads a 4xx first and may raise the call's own error; returns otherwise.
    """

    done: frozenset[int]
    maybe: str
    refusal: Refusal | None = None


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

    def close(self) -> None:
        """Close the connections (a client built for one request, with its credentials)."""
        self._http.close()

    def create_whole_image(self, body: dict[str, Any]) -> str:
        """See ``ImsClient.create_whole_image``."""
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        response = self._write("POST", CREATE_PATH, content, _CREATE)
        try:
            job_id = response.json()["job_id"]
        except (ValueError, KeyError, TypeError):
            job_id = None
        if not isinstance(job_id, str) or not job_id:
            raise SubmissionUncertainError(
                "IMS answered 200 without a readable job_id; it may have accepted the request"
            )
        if not PLAIN_JOB_ID.fullmatch(job_id):
            raise SubmissionUncertainError(
                "IMS answered 200 with a job id that is not a plain token; it was not recorded"
            )
        return job_id

    def find_whole_images(
        self, *, tag_key: str, tag_value: str, enterprise_project_id: str | None = None
    ) -> list[ImageSummary]:
        """See ``ImsClient.find_whole_images`` (``GET /v2/cloudimages``, docs/ims-api.md §2.5).

        Raises:
            UpstreamError: IMS failed or answered something we cannot read (its subclasses
                as for the create call); nothing is assumed about the images then.
        """
        params = {"tag": f"{tag_key}={tag_value}", "__whole_image": "true"}
        if enterprise_project_id is not None:
            params["enterprise_project_id"] = enterprise_project_id
        # One attempt: the reconcile schedule asks again later, and a slow or failing list must
        # not spend a tick's budget on retries while due jobs wait to be polled.
        return parse_image_list(self._read_once(params))

    def delete_image(self, image_id: str, *, delete_backup: bool) -> None:
        """See ``ImsClient.delete_image`` (docs/ims-api.md §2.6).

        Raises:
            ValueError: ``image_id`` is not a plain token; nothing was sent.
            ImageNotFoundError: IMS does not know the image (404 without a gateway code, or
                IMG.0027): it is gone already.
            ImsRejectedError: IMS refused to delete it (protected, being created, not ours).
            UpstreamAuthError: IMS refused our credentials (401, or a 403 about them).
            UpstreamUnavailableError: still throttled or unreachable after the retries.
            SubmissionUncertainError: the request went out and its answer was lost or
                unreadable; the image may have been deleted. Read it with ``find_image``.
            UpstreamError: any other refusal.
        """
        path = DELETE_PATH_PREFIX + plain_image_id(image_id)
        if not isinstance(delete_backup, bool):
            raise ValueError("delete_backup must be a boolean")
        content = json.dumps({"delete_backup": delete_backup}, separators=(",", ":")).encode()
        self._write("DELETE", path, content, _DELETE)

    def find_image(self, image_id: str) -> ImageSummary | None:
        """See ``ImsClient.find_image`` (``GET /v2/cloudimages?id=``, docs/ims-api.md §2.5).

        Asked once, as ``find_whole_images``; a deleted image may be listed with status
        ``deleted`` (docs/ims-api.md §2.6), which is returned as it is.

        Raises:
            ValueError: ``image_id`` is not a plain token; nothing was sent.
            UpstreamError: IMS failed, or listed an image with another id or several images.
        """
        plain_image_id(image_id)
        images = parse_image_list(self._read_once({"id": image_id}))
        if not images:
            return None
        if len(images) > 1 or images[0].image_id != image_id:
            raise UpstreamError("IMS's image list answered an id query with other images")
        return images[0]

    def list_images_by_tag(
        self,
        *,
        tag_key: str,
        tag_value: str,
        whole_image: bool = True,
        private_only: bool = True,
        enterprise_project_id: str | None = None,
        page_size: int = 500,
        max_pages: int = 20,
    ) -> list[ImageSummary]:
        """See ``ImsClient.list_images_by_tag`` (docs/ims-api.md §2.5, paging).

        ``whole_image`` adds ``__whole_image=true``; ``False`` leaves that filter out.
        ``private_only`` adds ``__imagetype=private``: an image shared with the project by
        another is never one of ours. ``enterprise_project_id`` is passed as it is (an IAM user
        authorised through enterprise projects must give it, docs/ims-api.md §2.5). A page is
        followed by another while ``page_info.next_marker`` names one, or else while the page
        came back full (``marker`` = its last id). Each page is asked once.

        Raises:
            ValueError: ``page_size`` or ``max_pages`` below 1.
            UpstreamError: a page failed or could not be read, a marker repeated, or more than
                ``max_pages`` pages would be needed: never a silently shortened list.
        """
        if page_size < 1 or max_pages < 1:
            raise ValueError("page_size and max_pages must be at least 1")
        base = {"tag": f"{tag_key}={tag_value}", "limit": str(page_size)}
        if whole_image:
            base["__whole_image"] = "true"
        if private_only:
            base["__imagetype"] = "private"
        if enterprise_project_id is not None:
            base["enterprise_project_id"] = enterprise_project_id
        found: list[ImageSummary] = []
        marker: str | None = None
        seen: set[str] = set()
        for _ in range(max_pages):
            params = dict(base) if marker is None else {**base, "marker": marker}
            response = self._read_once(params)
            page = parse_image_list(response)
            found.extend(page)
            marker = next_page_marker(response, page, page_size)
            if marker is None:
                return found
            if marker in seen:
                raise UpstreamError("IMS's image list named the same page marker twice")
            seen.add(marker)
        raise UpstreamError(
            f"IMS's image list has more than {max_pages} pages of {page_size}; nothing was cut"
        )

    def _read_once(self, params: dict[str, str]) -> httpx.Response:
        """One GET of the image list; what a repeat may cure says when to ask again."""
        try:
            return self._read(IMAGES_PATH, params)
        except _Retryable as retryable:
            hint = retryable.delay_hint if retryable.delay_hint is not None else 0.0
            raise UpstreamUnavailableError(
                "IMS's image list is throttling or unavailable",
                retry_after=max(1, math.ceil(hint)),
                upstream=retryable.upstream,
            ) from retryable

    def _write(self, method: str, path: str, content: bytes, kind: _Write) -> httpx.Response:
        """Send a write, retrying only what IMS certainly did not accept."""
        return self._with_retries(lambda: self._attempt(method, path, content, kind))

    def _with_retries(self, attempt_once: Callable[[], httpx.Response]) -> httpx.Response:
        """``attempt_once`` with bounded retries of what it raises as ``_Retryable``."""
        waited = 0.0
        last: _Retryable | None = None
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                return attempt_once()
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

    def _read(self, path: str, params: dict[str, str]) -> httpx.Response:
        """One GET; a failure that a repeat may cure is ``_Retryable``."""
        try:
            response = self._http.request("GET", path, params=params)
        except httpx.TransportError as exc:
            raise _Retryable(None, {"error": type(exc).__name__}) from exc
        status = response.status_code
        if status == 200:
            return response
        code, message = upstream_code_and_message(response)
        upstream = {"status": status, "code": code, "message": message}
        if status in _READ_RETRY_STATUSES or code in _FLOW_CONTROL_CODES:
            raise _Retryable(retry_after_seconds(response), upstream)
        if status in (401, 403):
            raise UpstreamAuthError(
                f"IMS refused wholeimage's credentials ({status}); an operator must fix them",
                upstream=upstream,
            )
        raise UpstreamError(f"IMS answered {status} to an image query", upstream=upstream)

    def _attempt(self, method: str, path: str, content: bytes, kind: _Write) -> httpx.Response:
        try:
            response = self._http.request(
                method, path, content=content, headers={"Content-Type": JSON_CONTENT_TYPE}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached IMS: always safe to try again.
            raise _Retryable(None, {"error": type(exc).__name__}) from exc
        except httpx.TransportError as exc:
            if not _failed_on(exc, path):
                # What failed was another request (IAM's token) first: IMS never saw this one.
                raise _Retryable(None, {"error": type(exc).__name__}) from exc
            raise UpstreamTimeoutError(
                f"IMS did not answer after the request was sent; {kind.maybe}",
                request_sent=True,
            ) from exc
        except httpx.DecodingError as exc:
            # IMS answered, but the body cannot be decoded (a broken gzip): it may have acted.
            raise UpstreamTimeoutError(
                f"IMS's answer could not be decoded; {kind.maybe}",
                request_sent=True,
            ) from exc
        return self._check(response, kind)

    def _check(self, response: httpx.Response, kind: _Write) -> httpx.Response:
        """The answer to a write, or the error it means (see the module docstring)."""
        status = response.status_code
        if status in kind.done:
            return response
        code, message = upstream_code_and_message(response)
        upstream = {"status": status, "code": code, "message": message}
        if status == 429 or code in _FLOW_CONTROL_CODES:
            raise _Retryable(retry_after_seconds(response), upstream)
        if kind.refusal is not None and 400 <= status < 500:
            kind.refusal(status, code, upstream)
        if status in (401, 403):
            raise UpstreamAuthError(
                f"IMS refused wholeimage's credentials ({status}); an operator must fix them",
                upstream=upstream,
            )
        # A redirect or a 4xx: the gateway or IMS did not act on the request.
        if 300 <= status < 500:
            if code and code.startswith("IMG."):
                raise ImsRejectedError(
                    f"IMS refused the request: {message or code}",
                    http_status=status,
                    upstream=upstream,
                )
            raise UpstreamError(f"IMS refused the request ({status})", upstream=upstream)
        if status == 504:
            raise UpstreamTimeoutError(
                f"IMS's gateway timed out after the request was sent; {kind.maybe}",
                request_sent=True,
            )
        # A 5xx (or anything stranger) after the request went out: IMS may have acted on it.
        raise SubmissionUncertainError(
            f"IMS answered {status} after the request was sent; {kind.maybe}",
            upstream=upstream,
        )


def _delete_refusal(status: int, code: str | None, upstream: dict[str, Any]) -> None:
    """The delete's own reading of a 4xx (docs/ims-api.md §2.6); returns for the shared one."""
    gateway = code is not None and code.startswith("APIGW.")
    if code == _IMAGE_UNKNOWN_CODE or (status == 404 and not gateway):
        raise ImageNotFoundError(
            "IMS does not know the image; it is deleted already",
            http_status=status,
            upstream=upstream,
        )
    if status == 404:
        # The gateway has no such route: a wrong endpoint, not a missing image.
        raise UpstreamError("IMS's gateway has no delete route here (404)", upstream=upstream)
    if status == 403 and code in _IMAGE_REFUSAL_CODES:
        raise ImsRejectedError(
            f"IMS refused to delete the image: {upstream.get('message') or code}",
            http_status=status,
            upstream=upstream,
        )


# A create is done only with its job id; a delete answers 204 and no body (docs/ims-api.md §2.6).
_CREATE = _Write(done=frozenset({200}), maybe="it may have been accepted")
_DELETE = _Write(
    done=frozenset({200, 204}), maybe="the image may have been deleted", refusal=_delete_refusal
)


def next_page_marker(
    response: httpx.Response, page: list[ImageSummary], page_size: int
) -> str | None:
    """The marker of the page after ``page``, or ``None`` when it was the last one.

    ``page_info.next_marker`` when IMS gives one (Huawei Cloud), else the last id of a full
    page (docs/ims-api.md §2.5).

    Raises:
        UpstreamError: ``page_info.next_marker`` is there but not a plain id.
    """
    payload = response.json()  # parse_image_list has read it already
    page_info = payload.get("page_info") if isinstance(payload, dict) else None
    next_marker = page_info.get("next_marker") if isinstance(page_info, dict) else None
    if next_marker is not None and next_marker != "":
        if not isinstance(next_marker, str) or not PLAIN_JOB_ID.fullmatch(next_marker):
            raise UpstreamError("IMS's image list names a next marker that is not a plain token")
        return next_marker
    if len(page) >= page_size and page:
        return page[-1].image_id
    return None


def parse_image_list(response: httpx.Response) -> list[ImageSummary]:
    """The images of a ``GET /v2/cloudimages`` answer, each checked before it is used.

    Raises:
        UpstreamError: the answer is not the documented shape, or an image id is not plain.
    """
    try:
        payload = response.json()
    except ValueError as exc:
        raise UpstreamError("IMS's image list answer is not JSON") from exc
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list):
        raise UpstreamError("IMS's image list answer has no images list")
    found: list[ImageSummary] = []
    for item in images:
        if not isinstance(item, dict):
            raise UpstreamError("IMS's image list holds something that is not an image")
        image_id, name, status = item.get("id"), item.get("name"), item.get("status")
        if not isinstance(image_id, str) or not PLAIN_JOB_ID.fullmatch(image_id):
            raise UpstreamError("IMS's image list holds an image id that is not a plain token")
        if not isinstance(status, str) or status not in IMAGE_STATUSES:
            raise UpstreamError("IMS's image list holds an image with an unknown status")
        created, tags, protected = item.get("created_at"), item.get("tags"), item.get("protected")
        found.append(
            ImageSummary(
                image_id=image_id,
                name=name if isinstance(name, str) else "",
                status=status,
                created_at=created if isinstance(created, str) else None,
                tags=tuple(t for t in tags if isinstance(t, str))
                if isinstance(tags, list)
                else None,
                protected=protected if isinstance(protected, bool) else None,
            )
        )
    return found
