"""The ``notify`` function's edge: deliver a job result handed in, or whatever is pending."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Request, Response

from wholeimage.bootstrap import Dependencies, get_dependencies
from wholeimage.errors import RequestInvalidError, WholeImageError
from wholeimage.service.delivery import (
    Redrive,
    dead_letter_limit,
    dead_letters,
    deliver,
    outbox_counts,
)
from wholeimage.validation import JOB_RESULT_SCHEMA, validate
from wholeimage.web import functiongraph
from wholeimage.web.http import authenticated, error_response, json_response, read_body
from wholeimage.web.triggers import Trigger, read_trigger

log = logging.getLogger("wholeimage.web")


def _is_job_result(payload: Any) -> bool:
    try:
        validate(JOB_RESULT_SCHEMA, payload)
    except RequestInvalidError:
        return False
    return True


def _job_result_in(trigger: Trigger) -> Any | None:
    """The job result a ``notify`` call carries, or None for "deliver what is pending".

    A body sent as a job result (plain JSON from a caller that is no scheduler, a CloudEvent of
    type ``wholeimage.job.result``) must be one (``deliver`` refuses it otherwise, naming every
    field); inside a scheduled shape (Cloud Scheduler's body, a Pub/Sub message's data) a
    document is a job result only when it validates as one, and otherwise the call is a
    scheduled delivery run (docs/platforms.md §3).
    """
    if trigger.payload is None or trigger.sent_as_result:
        return trigger.payload
    if _is_job_result(trigger.payload):
        return trigger.payload
    log.info(
        "a scheduled call's data is no job result: delivering what is pending",
        extra={"trigger": trigger.kind, **trigger.detail},
    )
    return None


def handle_notify(
    request: Request, dependencies: Callable[[], Dependencies] = get_dependencies
) -> Response:
    """The ``notify`` function.

    ``POST`` with a job result (JSON, or a CloudEvent of type ``wholeimage.job.result``) asks
    for its delivery to every channel that wants it; an empty or scheduled call (Cloud
    Scheduler, a Pub/Sub push, another CloudEvent, a FunctionGraph timer) delivers what is
    pending; ``?redrive=all`` or ``?redrive=ID,ID`` re-drives dead letters first. ``GET``
    shows the outbox counts, ``GET ?dead_letters=1`` lists the dead letters. As a FunctionGraph
    event function, ``POST /init`` does nothing and ``POST /invoke`` answers in FunctionGraph's
    structure (docs/platforms.md §4).
    """
    if functiongraph.is_init(request):
        return functiongraph.initialized()
    if functiongraph.is_invoke(request):
        return functiongraph.event_answer(_notify(request, dependencies, event=True))
    return _notify(request, dependencies, event=False)


def _notify(request: Request, dependencies: Callable[[], Dependencies], *, event: bool) -> Response:
    try:
        deps = dependencies()
        authenticated(request, deps, ("POST", "GET"))
        if request.method == "GET":
            if request.args.get("dead_letters") is not None:
                limit = dead_letter_limit(request.args.get("limit"))
                listed = [letter.as_json() for letter in dead_letters(deps, limit=limit)]
                return json_response(200, {"dead_letters": listed})
            return json_response(200, {"outbox": outbox_counts(deps)})
        trigger = read_trigger(request, read_body(request), any_media_type=event)
        result = _job_result_in(trigger)
        report = deliver(deps, result=result, redrive=Redrive.parse(request.args.get("redrive")))
    except WholeImageError as error:
        return error_response(error)
    return json_response(200, report.as_json())
