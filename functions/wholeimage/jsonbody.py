"""Decoding a JSON document (a request body, a file) with a precise error, standard library only.

Apart from ``validation`` (jsonschema), so an edge that only reads a body (``check``) loads no
validator.
"""

from __future__ import annotations

import json
from typing import Any

from wholeimage.errors import RequestInvalidError


def decode_json(data: bytes, *, where: str = "$", source: str = "the body") -> Any:
    """Decode one JSON document (a request body, a file), or say precisely why not.

    ``where`` is the JSON path the details name, ``source`` what the message calls the document.

    Raises:
        RequestInvalidError: empty, not UTF-8, or not JSON.
    """
    if not data.strip():
        raise RequestInvalidError(
            f"{source} is empty", details=[{"path": where, "message": "a JSON object is required"}]
        )
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise RequestInvalidError(
            f"{source} is not UTF-8", details=[{"path": where, "message": "not valid UTF-8"}]
        ) from None
    except json.JSONDecodeError as exc:
        raise RequestInvalidError(
            f"{source} is not valid JSON",
            details=[
                {"path": where, "message": f"{exc.msg} at line {exc.lineno} column {exc.colno}"}
            ],
        ) from None
