"""The ``check`` function's edge: one tick over the due jobs, whatever triggered it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Request, Response

from wholeimage.bootstrap import Dependencies, get_dependencies
from wholeimage.errors import WholeImageError
from wholeimage.service.ports import request_ports
from wholeimage.service.tick import tick
from wholeimage.web.http import authenticated, error_response, json_response, read_body

log = logging.getLogger("wholeimage.web")


def handle_check(
    request: Request, dependencies: Callable[[], Dependencies] = get_dependencies
) -> Response:
    """The ``check`` function: one tick over the due jobs, whatever triggered it.

    Cloud Scheduler (HTTP), a Pub/Sub push or other CloudEvent, a Kubernetes CronJob or a
    FunctionGraph timer all work: the body is read (bounded) and otherwise ignored.
    """
    try:
        deps = dependencies()
        authenticated(request, deps, ("POST", "GET"))
        read_body(request)
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
            "scheduler_job": request.headers.get("X-CloudScheduler-JobName"),
            "schedule_time": request.headers.get("X-CloudScheduler-ScheduleTime"),
        },
    )
    return json_response(200, report.as_json())
