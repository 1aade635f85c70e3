"""The ``check`` function's edge: one tick over the due jobs, whatever triggered it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Request, Response

from wholeimage.bootstrap import Dependencies, get_dependencies
from wholeimage.errors import WholeImageError
from wholeimage.service.ports import request_ports
from wholeimage.service.tick import tick
from wholeimage.web import functiongraph
from wholeimage.web.http import authenticated, error_response, json_response, read_body
from wholeimage.web.triggers import trigger_for_log

log = logging.getLogger("wholeimage.web")


def handle_check(
    request: Request, dependencies: Callable[[], Dependencies] = get_dependencies
) -> Response:
    """The ``check`` function: one tick over the due jobs, whatever triggered it.

    An empty body, ``{}``, Cloud Scheduler (any body), a Pub/Sub push, a CloudEvent in either
    mode, a FunctionGraph timer event or a plain ``GET``/``POST`` (a CronJob's curl) each run
    one tick (docs/platforms.md §3): the body is read (bounded) to name the trigger in the log,
    never refused. As a FunctionGraph event function, ``POST /init`` runs nothing and
    ``POST /invoke`` answers in FunctionGraph's structure (docs/platforms.md §4).
    """
    if functiongraph.is_init(request):
        return functiongraph.initialized()
    if functiongraph.is_invoke(request):
        return functiongraph.event_answer(_check(request, dependencies, event=True))
    return _check(request, dependencies, event=False)


def _check(request: Request, dependencies: Callable[[], Dependencies], *, event: bool) -> Response:
    try:
        deps = dependencies()
        caller = authenticated(request, deps, ("POST", "GET"))
        trigger = trigger_for_log(request, read_body(request), any_media_type=event)
        # The platform's temporary credentials, when it sent any, sign this tick's polls and
        # lookups only (docs/platform-credentials.md); its errors are answered inside the scope.
        with request_ports(deps, request.headers) as ports:
            try:
                report = tick(ports)
            except WholeImageError as error:
                return error_response(error)
    except WholeImageError as error:
        return error_response(error)
    log.info(
        "check called",
        extra={
            "trigger": trigger.kind,
            "caller": caller.account or caller.method,
            **trigger.detail,
        },
    )
    return json_response(200, report.as_json())
