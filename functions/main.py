"""Entry points for functions-framework: ``--source functions/main.py --target create``.

One source file holds all three targets, as the platforms deploy them, so each entry point
imports its own edge (``wholeimage.web.<target>``) when first called: a process serving one target
loads only that target's modules. These three are the package's only deferred imports of that kind;
everything else imports at the top of its module.
"""

from __future__ import annotations

import os

# wholeimage uses no pydantic plugin, and looking for them reads the metadata of every installed
# distribution when the first model is built: 10-20 ms of every cold start with requirements.txt
# alone, more beside other packages (docs/performance.md §2.1). An operator who wants plugins sets
# the variable (to anything else).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import functions_framework
from flask import Request, Response, current_app, has_app_context

from wholeimage.bootstrap import warn_if_open_at_start
from wholeimage.web.limits import bound_bodies

warn_if_open_at_start()

# functions-framework runs this module inside the context of the app it serves, so every target's
# bodies are bounded in size and time before anything reads them (docs/limits.md §1). A plain
# import, outside any app, has nothing to wrap.
if has_app_context():
    bound_bodies(current_app)


@functions_framework.http
def create(request: Request) -> Response:
    """Submit a full-ECS image request (POST, JSON or CloudEvent) or read a tracked job (GET)."""
    from wholeimage.web.create import handle_create  # noqa: PLC0415 (this target's graph only)

    return handle_create(request)


@functions_framework.http
def check(request: Request) -> Response:
    """Poll the due IMS jobs once (scheduled: Cloud Scheduler, CronJob, timer, CloudEvent)."""
    from wholeimage.web.check import handle_check  # noqa: PLC0415 (this target's graph only)

    return handle_check(request)


@functions_framework.http
def notify(request: Request) -> Response:
    """Deliver a job result, or whatever is pending, to the configured chat and webhook channels."""
    from wholeimage.web.notify import handle_notify  # noqa: PLC0415 (this target's graph only)

    return handle_notify(request)
