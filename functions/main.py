"""Entry points for functions-framework: ``--source functions/main.py --target create``.

Each function is a few lines over the ``wholeimage`` package; its modules are imported inside
the function so that a process serving one target loads only what that target needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from wholeimage.bootstrap import warn_if_open_at_start

if TYPE_CHECKING:
    from flask import Request, Response

warn_if_open_at_start()


@functions_framework.http
def create(request: Request) -> Response:
    """Submit a full-ECS image request (POST, JSON or CloudEvent) or read a tracked job (GET)."""
    from wholeimage.web import handle_create

    return handle_create(request)


@functions_framework.http
def check(request: Request) -> Response:
    """Poll the due IMS jobs once (scheduled: Cloud Scheduler, CronJob, timer, CloudEvent)."""
    from wholeimage.web import handle_check

    return handle_check(request)


@functions_framework.http
def notify(request: Request) -> Response:
    """Deliver a job result, or whatever is pending, to the configured chat and webhook channels."""
    from wholeimage.web import handle_notify

    return handle_notify(request)
