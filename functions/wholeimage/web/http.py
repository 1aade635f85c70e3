"""What every function's HTTP edge shares: reading bodies and envelopes, authentication, answers.

Every expected failure is a ``WholeImageError`` and becomes its JSON error body here, in
``error_response``; anything else propagates so functions-framework answers 500 and the
platform's error reporting sees it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from cloudevents.http import from_http
from flask import Request, Response

from wholeimage.bootstrap import Dependencies
from wholeimage.callers import Caller, IdTokenVerifier, authenticate_caller, google_id_tokens
from wholeimage.errors import (
    MethodNotAllowedError,
    PayloadTooLargeError,
    RequestInvalidError,
    UnsupportedMediaTypeError,
    WholeImageError,
)
from wholeimage.idempotency import (
    IDEMPOTENCY_KEY_RULE,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    clean_idempotency_key,
)
from wholeimage.ids import PLAIN_JOB_ID
from wholeimage.jsonbody import check_document, decode_json

log = logging.getLogger("wholeimage.web")

MAX_BODY_BYTES = 64 * 1024
JSON_MEDIA_TYPE = "application/json"


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """A JSON response."""
    return Response(
        json.dumps(body, ensure_ascii=False),
        status=status,
        headers=headers or {},
        mimetype=JSON_MEDIA_TYPE,
    )


def error_response(error: WholeImageError) -> Response:
    """The one mapping from our errors to HTTP."""
    level = logging.ERROR if error.http_status >= 500 else logging.INFO
    log.log(level, error.message, extra={"error_code": error.code, "status": error.http_status})
    return json_response(error.http_status, error.body(), error.headers())


def read_body(request: Request) -> bytes:
    """The raw body, refusing more than ``MAX_BODY_BYTES`` without reading it all."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the body is over {MAX_BODY_BYTES} bytes")
    data = request.stream.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the body is over {MAX_BODY_BYTES} bytes")
    return data


def _is_json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class Envelope:
    """A request's payload and who sent it, from plain JSON or a CloudEvent."""

    def __init__(
        self,
        payload: Any,
        *,
        idempotency_key: str | None,
        requested_by: str | None,
        event_type: str | None = None,
    ) -> None:
        self.payload = payload
        self.idempotency_key = idempotency_key
        self.requested_by = requested_by
        self.event_type = event_type  # a CloudEvent's type; None for plain JSON


def _header_idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    cleaned = clean_idempotency_key(key)
    if cleaned is None:
        raise RequestInvalidError(
            "the Idempotency-Key header is invalid",
            details=[{"path": "header:Idempotency-Key", "message": IDEMPOTENCY_KEY_RULE}],
        )
    return cleaned


# The CloudEvents 1.0 spec requires these attributes, each a non-empty string ("Type: String",
# "MUST be a non-empty string"): https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md
_REQUIRED_ATTRIBUTES = ("id", "source", "type")


def _is_structured(request: Request) -> bool:
    content_type = request.headers.get("Content-Type", "")
    return content_type.split(";", 1)[0].strip().lower() == "application/cloudevents+json"


def _check_required_attributes(event: Any, *, structured: bool) -> None:
    """Refuse, naming each, the required attributes that are missing, empty or not strings.

    Raises:
        RequestInvalidError: one detail per such attribute (``$.id``, or ``header:ce-id``).
    """
    problems = [
        {
            "path": f"$.{name}" if structured else f"header:ce-{name}",
            "message": "required: a non-empty string (CloudEvents 1.0)",
        }
        for name in _REQUIRED_ATTRIBUTES
        if not isinstance(event.get(name), str) or not event.get(name)
    ]
    if problems:
        raise RequestInvalidError("the CloudEvent lacks a required attribute", details=problems)


def _cloud_event_envelope(request: Request, data: bytes) -> Envelope:
    try:
        event = from_http(dict(request.headers), data)
    # from_http only parses what the caller sent, and raises more than its own GenericException
    # for it: ValueError for a null attribute or a body that is not UTF-8, TypeError for an
    # object as specversion. Whatever it raises, the event is malformed.
    except Exception as exc:
        raise RequestInvalidError(
            "the CloudEvent is malformed", details=[{"path": "$", "message": str(exc)[:300]}]
        ) from None
    _check_required_attributes(event, structured=_is_structured(request))
    payload = event.get_data()
    if isinstance(payload, bytes | bytearray | str):
        # surrogatepass: a lone surrogate in a data string is then named, not a crash.
        raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
        payload = decode_json(bytes(raw), where="$.data")
    else:
        # The SDK parsed the data itself (structured mode, JSON in binary mode): the same checks.
        check_document(payload, where="$.data")
    source, event_id = str(event["source"]), str(event["id"])
    if (
        not (source + event_id).isprintable()
        or len(source) + len(event_id) > MAX_IDEMPOTENCY_KEY_LENGTH
    ):
        raise RequestInvalidError(
            "the CloudEvent's source and id must be printable and short",
            details=[
                {
                    "path": "$.source",
                    "message": f"source and id: printable, {MAX_IDEMPOTENCY_KEY_LENGTH} characters at most",
                }
            ],
        )
    key = _header_idempotency_key(request) or f"cloudevent:{source}#{event_id}"
    return Envelope(
        payload, idempotency_key=key, requested_by=source, event_type=str(event["type"])
    )


def read_envelope(request: Request, data: bytes | None = None) -> Envelope:
    """Read the body (or ``data``, already read) as plain JSON or a CloudEvent (either mode)."""
    data = read_body(request) if data is None else data
    content_type = request.headers.get("Content-Type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/cloudevents-batch+json":
        raise UnsupportedMediaTypeError(
            "batched CloudEvents are not accepted; send one event per request",
            details=[{"path": "header:Content-Type", "message": media_type}],
        )
    if media_type == "application/cloudevents+json" or "ce-specversion" in request.headers:
        return _cloud_event_envelope(request, data)
    if not _is_json_media_type(content_type):
        raise UnsupportedMediaTypeError(
            "the body must be JSON (Content-Type: application/json) or a CloudEvent",
            details=[{"path": "header:Content-Type", "message": f"got {media_type or 'nothing'}"}],
        )
    key = _header_idempotency_key(request)
    return Envelope(decode_json(data), idempotency_key=key, requested_by=key)


def read_json(request: Request) -> Any:
    """The body as one JSON document (``Content-Type: application/json``), bounded in size.

    Raises:
        UnsupportedMediaTypeError: the body is not declared as JSON.
        PayloadTooLargeError: over ``MAX_BODY_BYTES``.
        RequestInvalidError: empty, not UTF-8 or not JSON.
    """
    content_type = request.headers.get("Content-Type", "")
    if not _is_json_media_type(content_type):
        media_type = content_type.split(";", 1)[0].strip().lower()
        raise UnsupportedMediaTypeError(
            "the body must be JSON (Content-Type: application/json)",
            details=[{"path": "header:Content-Type", "message": f"got {media_type or 'nothing'}"}],
        )
    return decode_json(read_body(request))


def status_url(request: Request, *, ims_job_id: str | None, request_id: str) -> str:
    """Where a caller reads the job: this URL with ``?job_id=`` (or ``?request_id=``).

    Only a plain job id goes into the URL (and so into the ``Location`` header): a row recorded
    before IMS's ids were checked may hold one with a CR/LF or a space; then the request id,
    always ours and hex, names the job.
    """
    base = request.base_url
    if ims_job_id and PLAIN_JOB_ID.fullmatch(ims_job_id):
        return f"{base}?job_id={ims_job_id}"
    return f"{base}?request_id={quote(request_id, safe='')}"


def authenticate(request: Request, deps: Dependencies) -> Caller:
    """Who the caller is: the API token (``Authorization: Bearer`` or ``X-Api-Token``), or a
    Google-signed OIDC ID token in ``Authorization: Bearer`` when ``WHOLEIMAGE_OIDC_*`` is set
    (``wholeimage.callers``; docs/platforms.md §2).

    ``X-Api-Token`` serves callers whose ``Authorization`` carries another credential (Cloud
    Run's IAM check takes one there). A Pub/Sub push can send neither header of ours: only its
    OIDC token, which the OIDC settings accept.

    Raises:
        UnauthorizedError: no acceptable credential was presented.
        UpstreamUnavailableError: an ID token could not be checked for want of Google's keys.
    """
    settings = deps.settings
    api_token = settings.api_token.get_secret_value() if settings.api_token else None
    id_tokens: Callable[[], IdTokenVerifier] | None = None
    if settings.oidc_configured:

        def id_tokens() -> IdTokenVerifier:
            return deps.once(
                "id_tokens",
                lambda: google_id_tokens(
                    settings.oidc_audiences(), settings.oidc_allowed_accounts()
                ),
            )

    return authenticate_caller(
        authorization=request.headers.get("Authorization"),
        x_api_token=request.headers.get("X-Api-Token"),
        api_token=api_token,
        id_tokens=id_tokens,
    )


def authenticated(request: Request, deps: Dependencies, allowed: tuple[str, ...]) -> Caller:
    """Check the caller's credentials, then the method; who the caller is.

    Raises:
        UnauthorizedError: the token is missing or wrong.
        UpstreamUnavailableError: an ID token could not be checked for want of Google's keys.
        MethodNotAllowedError: the method is not one of ``allowed``.
    """
    caller = authenticate(request, deps)
    if request.method not in allowed:
        raise MethodNotAllowedError(request.method, allowed)
    return caller
