"""What the commands read: the environment's dependencies and JSON documents from files."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from wholeimage.bootstrap import Dependencies, get_dependencies
from wholeimage.errors import RequestInvalidError
from wholeimage.jsonbody import decode_json

LOG_LEVEL_VARIABLE = "WHOLEIMAGE_LOG_LEVEL"


def dependencies() -> Dependencies:
    """The environment's dependencies, with logs moved off stdout (it carries the answer)."""
    deps = get_dependencies()
    logger = logging.getLogger("wholeimage")
    for handler in logger.handlers:
        # Exactly the handler configure_logging adds: a subclass is someone else's (a file,
        # a test runner's capture) and keeps its stream.
        if type(handler) is logging.StreamHandler and handler.stream is not sys.stderr:
            handler.setStream(sys.stderr)
    if LOG_LEVEL_VARIABLE not in os.environ:
        # A person at a terminal wants the answer, not a log line per poll.
        logger.setLevel(logging.WARNING)
    return deps


def read_json(path: str, *, argument: str = "--file", document: str = "the body") -> Any:
    """The JSON document in ``path`` (``-``: stdin), or why not, as create would say it;
    ``argument`` is how the command line gave ``path``, ``document`` what the document is.

    Raises:
        RequestInvalidError: unreadable, empty, not UTF-8 or not JSON.
    """
    where = "stdin" if path == "-" else path
    try:
        if path == "-":
            stream = getattr(sys.stdin, "buffer", None)
            data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
        else:
            data = Path(path).read_bytes()
    except OSError as exc:
        raise RequestInvalidError(
            f"cannot read {where}: {exc.strerror or exc}",
            details=[{"path": "$", "message": f"{argument} {path} is not readable"}],
        ) from None
    return decode_json(data, source=f"{document} in {where}")
