"""Reading a service's answer: by HTTP status, by a JSON code, and the wait it asks for.

``by_status`` is the generic reading every target falls back to. ``by_code`` serves Feishu,
DingTalk and WeCom, which answer HTTP 200 when they refuse a message, so their JSON code is
always read. ``describe`` writes a ``Delivery.detail``: the webhook URL is itself the
credential, so it (and any part of it that looks like a token) never reaches a detail or a log,
even when a service echoes it. ``Retry-After`` is read by ``wholeimage.httputil``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import httpx

from wholeimage.channels.base import Delivery, Outcome
from wholeimage.channels.text import clip, one_line
from wholeimage.httputil import retry_after_seconds

_DETAIL_CHARS = 300
# 408 and 425 say the request was not processed; 429 is throttling; 5xx is the service's trouble.
_RETRY_STATUSES = frozenset({408, 425, 429})


def _is_retry_status(status: int) -> bool:
    return status in _RETRY_STATUSES or status >= 500


def response_text(response: httpx.Response) -> str:
    """The answer's text; empty for a streamed response the caller did not read."""
    try:
        return response.text
    except httpx.ResponseNotRead:
        return ""


def json_of(response: httpx.Response) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return json.loads(response_text(response))
    except ValueError:
        return None


def _secret_parts(url: httpx.URL) -> list[str]:
    """The URL and the parts of it that may be a credential: token-like path segments and values."""
    parts = [str(url)]
    candidates = [segment for segment in url.path.split("/") if segment]
    for pair in url.query.decode("ascii", "replace").split("&"):
        value = pair.partition("=")[2]
        candidates += [value, unquote_plus(value)]  # as sent, and as a server may echo it
    for candidate in candidates:
        # Plain lowercase words ("services", "messages") are structure, not secrets.
        if len(candidate) >= 8 and not re.fullmatch(r"[a-z-]+", candidate):
            parts.append(candidate)
    return sorted(parts, key=len, reverse=True)


def _scrub(text: str, response: httpx.Response) -> str:
    """``text`` without the request URL or its secret parts, should the service echo them."""
    try:
        url = response.request.url
    except RuntimeError:  # a response built without a request
        return text
    for part in _secret_parts(url):
        text = text.replace(part, "…")
    return text


def describe(response: httpx.Response, what: str = "") -> str:
    """``HTTP 404: <start of the answer>``, or ``what`` in its place; no URL, no secret."""
    head = f"HTTP {response.status_code}"
    text = what or one_line(response_text(response))
    if not text:
        return head
    return f"{head}: {clip(_scrub(text, response), _DETAIL_CHARS)}"


def seconds(value: Any) -> float | None:
    """A number of seconds from a JSON value or a header (``1``, ``0.75``, ``"3"``); None if not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return max(number, 0.0) if math.isfinite(number) else None


def by_status(response: httpx.Response, detail: str = "") -> Delivery:
    """The generic reading of an HTTP status, for answers no service-specific rule covers."""
    status = response.status_code
    if 200 <= status < 300:
        return Delivery("delivered", detail=detail or f"HTTP {status}")
    if _is_retry_status(status):
        return Delivery("retry", retry_after_seconds(response), detail or describe(response))
    if 300 <= status < 400:
        # Redirects are not followed (they would also open an SSRF path): the URL is wrong.
        detail = detail or describe(response, "a redirect; check the webhook URL")
    return Delivery("permanent", detail=detail or describe(response))


@dataclass(frozen=True)
class KnownCode:
    """What a code a service documents means: the outcome, in words, and any wait it implies."""

    outcome: Outcome
    meaning: str
    retry_after: float | None = None


def by_code(
    response: httpx.Response,
    *,
    service: str,
    code_field: str,
    message_field: str,
    codes: dict[int, KnownCode],
) -> Delivery:
    """Services that answer HTTP 200 to a refusal: only a JSON code of 0 means delivered.

    A code the services do not document is permanent: retrying an unknown refusal would only
    spend the robot's small per-minute budget.
    """
    if not 200 <= response.status_code < 300:
        return by_status(response)
    body = json_of(response)
    body = body if isinstance(body, dict) else {}
    code = body.get(code_field)
    if isinstance(code, bool) or not isinstance(code, int):
        what = f"not a {service} answer (no {code_field})"
        return Delivery("permanent", detail=describe(response, what))
    if code == 0:
        return Delivery("delivered", detail=f"HTTP {response.status_code}, {code_field} 0")
    known = codes.get(code, KnownCode("permanent", "not a documented code"))
    said = one_line(str(body.get(message_field, "")))
    detail = f"{service} {code_field} {code}: {known.meaning}" + (f" ({said})" if said else "")
    return Delivery(known.outcome, known.retry_after, describe(response, detail))
