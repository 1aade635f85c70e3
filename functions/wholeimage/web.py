"""The HTTP edge: the only module that knows Flask. Parses, authenticates, maps errors.

Every expected failure is a ``WholeImageError`` and becomes its JSON error body here, in
``error_response``; anything else propagates so functions-framework answers 500 and the
platform's error reporting sees it.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Request, Response

from wholeimage.bootstrap import Dependencies, get_dependencies
from wholeimage.errors import (
    MethodNotAllowedError,
    PayloadTooLargeError,
    RequestInvalidError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    WholeImageError,
)
from wholeimage.idempotency import (
    IDEMPOTENCY_KEY_RULE,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    clean_idempotency_key,
)

log = logging.getLogger("wholeimage.web")

MAX_BODY_BYTES = 64 * 1024
_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
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


def authenticate(request: Request, api_token: str | None) -> None:
    """Require ``Authorization: Bearer <token>`` when a token is configured.

    ``X-Api-Token: <token>`` is accepted too.

    Raises:
        UnauthorizedError: the header is missing or holds another token.
    """
    if not api_token:
        return
    # X-Api-Token serves callers whose Authorization header already carries the platform's
    # own OIDC token (Cloud Scheduler, Pub/Sub push to a private Cloud Run service).
    presented = request.headers.get("X-Api-Token")
    if presented is None:
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        presented = bearer if scheme.lower() == "bearer" else ""
    # compare_digest on bytes: constant time whatever the presented value holds.
    if not hmac.compare_digest(presented.strip().encode("utf-8"), api_token.encode("utf-8")):
        raise UnauthorizedError("a valid bearer token is required")


def read_body(request: Request) -> bytes:
    """The raw body, refusing more than ``MAX_BODY_BYTES`` without reading it all."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the body is over {MAX_BODY_BYTES} bytes")
    data = request.stream.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the body is over {MAX_BODY_BYTES} bytes")
    return data


def parse_json(data: bytes, where: str = "$") -> Any:
    """Decode a JSON document, or say precisely why not."""
    if not data.strip():
        raise RequestInvalidError(
            "the body is empty", details=[{"path": where, "message": "a JSON object is required"}]
        )
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise RequestInvalidError(
            "the body is not UTF-8", details=[{"path": where, "message": "not valid UTF-8"}]
        ) from None
    except json.JSONDecodeError as exc:
        raise RequestInvalidError(
            "the body is not valid JSON",
            details=[
                {"path": where, "message": f"{exc.msg} at line {exc.lineno} column {exc.colno}"}
            ],
        ) from None


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


def _cloud_event_envelope(request: Request, data: bytes) -> Envelope:
    from cloudevents.http import from_http

    try:
        event = from_http(dict(request.headers), data)
    # from_http only parses what the caller sent, and raises more than its own GenericException
    # for it: ValueError for a null attribute or a body that is not UTF-8, TypeError for an
    # object as specversion. Whatever it raises, the event is malformed.
    except Exception as exc:
        raise RequestInvalidError(
            "the CloudEvent is malformed", details=[{"path": "$", "message": str(exc)[:300]}]
        ) from None
    payload = event.get_data()
    if isinstance(payload, bytes | bytearray | str):
        raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        payload = parse_json(raw, "$.data")
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
    return Envelope(parse_json(data), idempotency_key=key, requested_by=key)


def status_url(request: Request, *, ims_job_id: str | None, request_id: str) -> str:
    """Where a caller reads the job: this URL with ``?job_id=`` (or ``?request_id=``)."""
    base = request.base_url
    return f"{base}?job_id={ims_job_id}" if ims_job_id else f"{base}?request_id={request_id}"


_MESSAGES = {
    "SUBMITTED": "IMS accepted the request; the job is tracked until it ends.",
    "SUBMIT_UNCERTAIN": (
        "IMS did not answer in time after the request was sent: it may or may not have created the "
        "job. It was recorded and will not be resubmitted automatically; check IMS before retrying "
        "with a new idempotency key."
    ),
}


def handle_create(
    request: Request, dependencies: Callable[[], Dependencies] = get_dependencies
) -> Response:
    """The ``create`` function: POST submits, GET reads a tracked job."""
    from wholeimage.create import find_job, submit_create
    from wholeimage.logs import trace_from_header
    from wholeimage.models import CreateImageRequest
    from wholeimage.validation import CREATE_REQUEST_SCHEMA, validate

    try:
        deps = dependencies()
        api_token = deps.settings.api_token
        authenticate(request, api_token.get_secret_value() if api_token else None)
        if request.method == "GET":
            job_id, request_id = request.args.get("job_id"), request.args.get("request_id")
            if not job_id and not request_id:
                raise RequestInvalidError(
                    "say which job: ?job_id=<IMS job id> or ?request_id=<our request id>",
                    details=[{"path": "query:job_id", "message": "required"}],
                )
            for name, value in (("job_id", job_id), ("request_id", request_id)):
                # Ids are short and plain; anything else (a NUL, say) cannot name a job.
                if value and not _PLAIN_ID.fullmatch(value):
                    raise RequestInvalidError(
                        f"{name} is not a job id",
                        details=[
                            {
                                "path": f"query:{name}",
                                "message": "1 to 128 letters, digits, '.', '_' or '-'",
                            }
                        ],
                    )
            job = find_job(
                store=deps.store, ims_job_id=job_id or None, request_id=request_id or None
            )
            url = status_url(request, ims_job_id=job.ims_job_id, request_id=job.request_id)
            return json_response(200, job.public_view(url))
        if request.method != "POST":
            raise MethodNotAllowedError(request.method, ("GET", "POST"))
        envelope = read_envelope(request)
        validate(CREATE_REQUEST_SCHEMA, envelope.payload)
        body = CreateImageRequest.model_validate(envelope.payload)
        outcome = submit_create(
            body,
            idempotency_key=envelope.idempotency_key,
            requested_by=envelope.requested_by,
            trace=trace_from_header(
                request.headers.get("X-Cloud-Trace-Context"), deps.settings.google_cloud_project
            ),
            ims=deps.ims_client(),
            store=deps.store,
        )
    except WholeImageError as error:
        return error_response(error)
    job = outcome.job
    url = status_url(request, ims_job_id=job.ims_job_id, request_id=job.request_id)
    answer = job.public_view(url)
    answer["message"] = _MESSAGES.get(job.status.value, "The job is tracked.")
    headers = {"Location": url}
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(202, answer, headers)


def _authenticated(request: Request, deps: Dependencies, allowed: tuple[str, ...]) -> None:
    api_token = deps.settings.api_token
    authenticate(request, api_token.get_secret_value() if api_token else None)
    if request.method not in allowed:
        raise MethodNotAllowedError(request.method, allowed)


def handle_check(
    request: Request, dependencies: Callable[[], Dependencies] = get_dependencies
) -> Response:
    """The ``check`` function: one tick over the due jobs, whatever triggered it.

    Cloud Scheduler (HTTP), a Pub/Sub push or other CloudEvent, a Kubernetes CronJob or a
    FunctionGraph timer all work: the body is read (bounded) and otherwise ignored.
    """
    from wholeimage.service import check_tick

    try:
        deps = dependencies()
        _authenticated(request, deps, ("POST", "GET"))
        read_body(request)
        answer = check_tick(deps)
    except WholeImageError as error:
        return error_response(error)
    log.info(
        "check called",
        extra={
            "scheduler_job": request.headers.get("X-CloudScheduler-JobName"),
            "schedule_time": request.headers.get("X-CloudScheduler-ScheduleTime"),
        },
    )
    return json_response(200, answer)


JOB_RESULT_EVENT_TYPE = "wholeimage.job.result"


def _job_result_in(request: Request, data: bytes) -> Any | None:
    """The job result a ``notify`` call carries, or None for a plain "deliver what is pending".

    Empty bodies, Pub/Sub push envelopes and CloudEvents of other types are schedule ticks; a
    plain JSON body, or a CloudEvent of type ``wholeimage.job.result``, must be a job result.
    """
    if not data.strip():
        return None
    envelope = read_envelope(request, data)
    payload = envelope.payload
    if envelope.event_type is not None:
        return payload if envelope.event_type == JOB_RESULT_EVENT_TYPE else None
    if isinstance(payload, dict) and {"message", "subscription"} <= payload.keys():
        return None  # a Pub/Sub push: a scheduled delivery run
    return payload


def handle_notify(
    request: Request, dependencies: Callable[[], Dependencies] = get_dependencies
) -> Response:
    """The ``notify`` function.

    ``POST`` with a job result (JSON, or a CloudEvent of type ``wholeimage.job.result``) asks
    for its delivery to every channel that wants it; an empty or scheduled call delivers what
    is pending; ``?redrive=all`` or ``?redrive=ID,ID`` re-drives dead letters first. ``GET``
    shows the outbox counts, ``GET ?dead_letters=1`` lists the dead letters.
    """
    from datetime import UTC, datetime

    from wholeimage.notify import notifications_for
    from wholeimage.results import JobResult
    from wholeimage.service import notify_now
    from wholeimage.validation import JOB_RESULT_SCHEMA, validate

    try:
        deps = dependencies()
        _authenticated(request, deps, ("POST", "GET"))
        if request.method == "GET":
            if request.args.get("dead_letters") is not None:
                dead = deps.store.dead_letters(limit=dead_letter_limit(request.args.get("limit")))
                return json_response(200, {"dead_letters": [dead_letter_view(row) for row in dead]})
            return json_response(200, {"outbox": deps.store.notification_counts()})
        data = read_body(request)
        now = datetime.now(UTC)
        answer: dict[str, Any] = {}
        # Validate first: a refused body changes nothing, re-drives included.
        payload = _job_result_in(request, data)
        if payload is not None:
            validate(JOB_RESULT_SCHEMA, payload)
        redrive = request.args.get("redrive")
        if redrive:
            ids = None if redrive == "all" else [part for part in redrive.split(",") if part]
            answer["redriven"] = deps.store.redrive(ids, now=now)
        if payload is not None:
            rows = notifications_for(JobResult.from_json(payload), deps.channels(), now=now)
            answer["added"] = deps.store.add_notifications(rows)
        answer.update(notify_now(deps).as_json())
    except WholeImageError as error:
        return error_response(error)
    return json_response(200, answer)


def dead_letter_limit(text: str | None) -> int:
    """``?limit=`` of the dead-letter list: 1 to 1000, 100 when absent or empty.

    Raises:
        RequestInvalidError: not a whole number of at least 1.
    """
    if not text:
        return 100
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise RequestInvalidError(
            "?limit= must be a whole number of at least 1",
            details=[{"path": "query:limit", "message": "a whole number from 1 to 1000"}],
        )
    return min(limit, 1000)


def dead_letter_view(row: Any) -> dict[str, Any]:
    """A dead letter as callers see it: never the channel's URL."""
    return {
        "id": row.notification_id,
        "channel": row.channel,
        "result_key": row.result_key,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created_at": row.created_at.isoformat(),
        "dead_at": row.dead_at.isoformat() if row.dead_at else None,
    }
