"""The ``create`` function's edge: ``POST`` submits a request, ``GET`` reads a tracked job, and
``/policies`` manages lifecycle policies (``wholeimage.web.policies``)."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Request, Response

from wholeimage.bootstrap import Dependencies, get_dependencies
from wholeimage.errors import RequestInvalidError, WholeImageError
from wholeimage.logs import trace_from_header
from wholeimage.service.jobs import create_request, read_job, submit
from wholeimage.service.ports import request_ports
from wholeimage.web.http import (
    authenticated,
    error_response,
    json_response,
    read_envelope,
    status_url,
)

# ``/policies`` and below (``wholeimage.web.policies``, imported on the first such request: a
# process that only submits never loads the policy modules).
POLICIES_PATH = "/policies"  # what wholeimage.web.policies answers (its _ROUTE)

# Ids are short and plain; anything else (a NUL, say) cannot name a job.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PLAIN_ID_RULE = "1 to 128 letters, digits, '.', '_' or '-'"


def handle_create(
    request: Request, dependencies: Callable[[], Dependencies] = get_dependencies
) -> Response:
    """The ``create`` function: POST submits, GET reads a tracked job; ``/policies`` paths
    manage policies."""
    try:
        deps = dependencies()
        if request.path == POLICIES_PATH or request.path.startswith(POLICIES_PATH + "/"):
            from wholeimage.web.policies import answer_policies  # noqa: PLC0415

            return answer_policies(request, deps)
        authenticated(request, deps, ("GET", "POST"))
        # The platform's temporary credentials, when it sent any, sign this request's IMS calls
        # only (docs/platform-credentials.md).
        with request_ports(deps, request.headers) as ports:
            return _answer(request, ports)
    except WholeImageError as error:
        return error_response(error)


def _answer(request: Request, deps: Dependencies) -> Response:
    # Errors are answered inside the request's scope: their bodies redact its credentials too.
    try:
        if request.method == "GET":
            return _read_job(request, deps)
        return _submit(request, deps)
    except WholeImageError as error:
        return error_response(error)


def _query_id(request: Request, name: str) -> str | None:
    value = request.args.get(name)
    if value and not _PLAIN_ID.fullmatch(value):
        raise RequestInvalidError(
            f"{name} is not a job id",
            details=[{"path": f"query:{name}", "message": _PLAIN_ID_RULE}],
        )
    return value or None


def _read_job(request: Request, deps: Dependencies) -> Response:
    job_id, request_id = _query_id(request, "job_id"), _query_id(request, "request_id")
    if not job_id and not request_id:
        raise RequestInvalidError(
            "say which job: ?job_id=<IMS job id> or ?request_id=<our request id>",
            details=[{"path": "query:job_id", "message": "required"}],
        )
    job = read_job(deps, ims_job_id=job_id, request_id=request_id)
    url = status_url(request, ims_job_id=job.ims_job_id, request_id=job.request_id)
    return json_response(200, job.public_view(url))


def _submit(request: Request, deps: Dependencies) -> Response:
    envelope = read_envelope(request)
    submission = submit(
        deps,
        create_request(envelope.payload, cloud=deps.settings.cloud),
        idempotency_key=envelope.idempotency_key,
        requested_by=envelope.requested_by,
        trace=trace_from_header(
            request.headers.get("X-Cloud-Trace-Context"), deps.settings.google_cloud_project
        ),
    )
    job = submission.job
    url = status_url(request, ims_job_id=job.ims_job_id, request_id=job.request_id)
    headers = {"Location": url}
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(202, {**job.public_view(url), "message": submission.message}, headers)
