"""The ``notify`` function's edge: deliver a job result handed in, or whatever is pending."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Request, Response

from wholeimage.bootstrap import Dependencies, get_dependencies
from wholeimage.errors import WholeImageError
from wholeimage.service.delivery import (
    Redrive,
    dead_letter_limit,
    dead_letters,
    deliver,
    outbox_counts,
)
from wholeimage.web.http import (
    authenticated,
    error_response,
    json_response,
    read_body,
    read_envelope,
)

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
    try:
        deps = dependencies()
        authenticated(request, deps, ("POST", "GET"))
        if request.method == "GET":
            if request.args.get("dead_letters") is not None:
                limit = dead_letter_limit(request.args.get("limit"))
                listed = [letter.as_json() for letter in dead_letters(deps, limit=limit)]
                return json_response(200, {"dead_letters": listed})
            return json_response(200, {"outbox": outbox_counts(deps)})
        result = _job_result_in(request, read_body(request))
        report = deliver(deps, result=result, redrive=Redrive.parse(request.args.get("redrive")))
    except WholeImageError as error:
        return error_response(error)
    return json_response(200, report.as_json())
