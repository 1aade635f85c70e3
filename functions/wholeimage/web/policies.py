"""``/policies`` of the ``create`` function: managing lifecycle policies over HTTP
(docs/policies.md §2, openapi/openapi.json).

::

    GET    /policies                every policy                    200
    PUT    /policies/{name}         apply a policy document         201 created, 200 replaced
    GET    /policies/{name}         one, with runs and deletions    200
    DELETE /policies/{name}         forget it                       204
    POST   /policies/{name}/pause   pause it                        200
    POST   /policies/{name}/resume  resume it                       200

Authenticated as ``create`` is (the same credentials, checked before anything else); errors are
the one hierarchy's, answered by ``error_response``. No route calls IMS, so none takes the
platform's temporary credentials.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from flask import Request, Response

from wholeimage.bootstrap import Dependencies
from wholeimage.errors import NotFoundError, RequestInvalidError
from wholeimage.policies import POLICY_SCHEMA
from wholeimage.service.policies import (
    delete_policy,
    details_view,
    list_policies,
    list_view,
    pause_policy,
    policy_view,
    resume_policy,
    show_policy,
    store_policy,
    validate_policy,
)
from wholeimage.validation import validator_for
from wholeimage.web.http import authenticate, authenticated, json_response, read_json

_ROUTE = re.compile(r"/policies(?:/(?P<name>[^/]+)(?:/(?P<action>[^/]+))?)?/?")
_NAME_RULE = (
    "1 to 32 lower-case letters, digits and '-', starting and ending with a letter or digit"
)


Handler = Callable[[Request, Dependencies, str], Response]


@dataclass(frozen=True)
class _Route:
    """What one path answers: a handler per method."""

    methods: dict[str, Handler]
    name: str = ""

    @property
    def allowed(self) -> tuple[str, ...]:
        return tuple(self.methods)


def answer_policies(request: Request, deps: Dependencies) -> Response:
    """Answer a request to one of ``/policies``'s paths.

    Raises:
        UnauthorizedError: the caller's credentials are missing or wrong (before anything else).
        MethodNotAllowedError: the path does not answer this method.
        NotFoundError: no route, or no policy, has this path.
        RequestInvalidError: the name or the document is invalid (every failing field).
    """
    route = _route(request.path)
    if route is None:
        authenticate(request, deps)  # an unknown path tells nothing to a stranger either
        raise NotFoundError(
            "no such path; see /policies, /policies/{name}, /policies/{name}/pause or /resume",
            details=[{"path": "path", "message": request.path[:200]}],
        )
    authenticated(request, deps, route.allowed)
    if route.name:
        _check_name(route.name)
    return route.methods[request.method](request, deps, route.name)


def _route(path: str) -> _Route | None:
    match = _ROUTE.fullmatch(path)
    if match is None:
        return None
    name, action = match["name"], match["action"]
    if name is None:
        return _Route({"GET": _list})
    if action is None:
        return _Route({"GET": _show, "PUT": _apply, "DELETE": _delete}, name)
    if action == "pause":
        return _Route({"POST": _pause}, name)
    if action == "resume":
        return _Route({"POST": _resume}, name)
    return None


@cache
def _name_pattern() -> re.Pattern[str]:
    # The schema's own rule (anchored there), so the path and the document agree on names.
    schema: Any = validator_for(POLICY_SCHEMA).schema
    return re.compile(schema["properties"]["name"]["allOf"][0]["pattern"])


def _check_name(name: str) -> None:
    if not _name_pattern().match(name):
        raise RequestInvalidError(
            "the path does not name a policy",
            details=[{"path": "path:name", "message": _NAME_RULE}],
        )


def _list(request: Request, deps: Dependencies, name: str) -> Response:
    return json_response(200, list_view(list_policies(deps)))


def _show(request: Request, deps: Dependencies, name: str) -> Response:
    return json_response(200, details_view(show_policy(deps, name)))


def _apply(request: Request, deps: Dependencies, name: str) -> Response:
    payload = read_json(request)
    mismatch = _name_mismatch(payload, name)
    # Validated whole, and the name compared, before anything is stored: one answer names
    # every problem, and a refused document changes nothing.
    try:
        policy = validate_policy(payload, deps.settings)
    except RequestInvalidError as error:
        if mismatch is None:
            raise
        details = sorted([*error.details, mismatch], key=lambda detail: str(detail["path"]))
        raise RequestInvalidError(
            f"the policy is invalid: {len(details)} problems", details=details
        ) from None
    if mismatch is not None:
        raise RequestInvalidError("the policy is invalid: 1 problem", details=[mismatch])
    record, created = store_policy(deps, policy)
    return json_response(201 if created else 200, policy_view(record))


def _name_mismatch(payload: Any, name: str) -> dict[str, str] | None:
    """The problem of a document whose name is not the path's (a missing one is the schema's)."""
    if isinstance(payload, dict) and "name" in payload and payload["name"] != name:
        return {"path": "$.name", "message": f"must be the name in the path, {name!r}"}
    return None


def _delete(request: Request, deps: Dependencies, name: str) -> Response:
    delete_policy(deps, name)
    answer = Response(status=204)
    del answer.headers["Content-Type"]  # no body, so no type (Flask would say text/html)
    return answer


def _pause(request: Request, deps: Dependencies, name: str) -> Response:
    return json_response(200, policy_view(pause_policy(deps, name)))


def _resume(request: Request, deps: Dependencies, name: str) -> Response:
    return json_response(200, policy_view(resume_policy(deps, name)))
