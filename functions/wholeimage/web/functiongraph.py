"""FunctionGraph's contract for an event function from a container image (docs/platforms.md §4).

FunctionGraph sends an event function's container, on port 8000, ``POST /init`` once when it
starts an instance and ``POST /invoke`` with the trigger's event for each invocation, and reads
the function's answer from the body of ``/invoke``'s response, shaped
``{"statusCode", "headers", "body", "isBase64Encoded"}``:

- https://support.huaweicloud.com/intl/en-us/qs-functiongraph/functiongraph_04_0104.html
  (an event function from a container image: the HTTP server, port 8000, /init and /invoke);
- https://support.huaweicloud.com/intl/en-us/usermanual-functiongraph/functiongraph_01_1047.html
  (the structure the response must have).

So ``check`` and ``notify`` answer ``POST /init`` at once, doing nothing (no tick, no delivery,
not even the settings read), and wrap their usual answer to ``POST /invoke`` in that structure.
The wrapping response is a 200 whatever the function's own status, which travels in
``statusCode``, as a code function's handler returns an error answer without failing; only an
unexpected exception still makes functions-framework's 500. What FunctionGraph does with
another status from ``/invoke`` is not documented (UNCONFIRMED, docs/platforms.md §4.3).
"""

from __future__ import annotations

from flask import Request, Response

from wholeimage.web.http import json_response

INIT_PATH = "/init"
INVOKE_PATH = "/invoke"
# Headers of the answer that describe the wrapping response, not the function's answer.
_NOT_CARRIED = frozenset({"content-length"})


def is_init(request: Request) -> bool:
    """Whether FunctionGraph is starting an instance (``POST /init``)."""
    return request.method == "POST" and request.path == INIT_PATH


def is_invoke(request: Request) -> bool:
    """Whether FunctionGraph is invoking the function with an event (``POST /invoke``)."""
    return request.method == "POST" and request.path == INVOKE_PATH


def initialized() -> Response:
    """The answer to ``POST /init``: nothing to prepare, the instance is ready."""
    return json_response(200, {"initialized": True})


def event_answer(answer: Response) -> Response:
    """``answer`` in the structure FunctionGraph reads from an event function's ``/invoke``."""
    headers = {
        name: value for name, value in answer.headers.items() if name.lower() not in _NOT_CARRIED
    }
    return json_response(
        200,
        {
            "statusCode": answer.status_code,
            "headers": headers,
            "body": answer.get_data(as_text=True),
            "isBase64Encoded": False,
        },
    )
