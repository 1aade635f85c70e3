"""JSON log lines shaped for Cloud Logging, with every known secret redacted.

Each line is one JSON object with ``severity``, ``message``, ``logger``, the domain ids passed as
``extra`` (``request_id``, ``job_id``, ``idempotency_key`` ...) and, when the request carried
``X-Cloud-Trace-Context``, ``logging.googleapis.com/trace``. The redaction filter replaces
every configured secret value, and anything shaped like a credential header, by ``[REDACTED]``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

REDACTED = "[REDACTED]"
TRACE_KEY = "logging.googleapis.com/trace"

# Shapes of credentials that may sneak into a message even when their value is not configured.
_CREDENTIAL_PATTERNS = [
    re.compile(r"(Access=)[^,\s]+"),
    re.compile(r"(Access%3[dD])[^,\s%]+"),  # percent-encoded, as a gateway may quote it
    re.compile(r"(Signature=)[0-9a-fA-F]+"),
    re.compile(r"(Signature%3[dD])[0-9a-fA-F]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),  # a token, not the word "token"
    re.compile(r"(?i)(x-auth-token[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
    re.compile(r"(?i)(x-security-token[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
]

_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


# One request's own secrets (the platform's temporary credentials): redacted within its context
# only, so the process never holds them past the request.
_request_secrets: ContextVar[frozenset[str]] = ContextVar("request_secrets", default=frozenset())


def _spellings(values: Iterable[str]) -> set[str]:
    # As they are and percent-encoded: a gateway may quote our request URL-encoded.
    return {
        spelling
        for value in values
        if len(value) >= 4
        for spelling in (value, quote(value, safe=""), quote(value))
    }


def register_secrets(values: list[str]) -> None:
    """Add values that must never be printed (AK/SK, tokens, webhook URLs), for the process."""
    with _secrets_lock:
        _secrets.update(_spellings(values))


@contextmanager
def request_secrets(values: Iterable[str]) -> Iterator[None]:
    """Redact ``values`` too while the block runs, in its context (and the tasks and threads it
    starts with a copy of it), and forget them after."""
    token = _request_secrets.set(_request_secrets.get() | _spellings(values))
    try:
        yield
    finally:
        _request_secrets.reset(token)


def redact(text: str) -> str:
    """``text`` with every registered secret and credential-shaped token replaced."""
    with _secrets_lock:
        secrets = sorted(_secrets | _request_secrets.get(), key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for pattern in _CREDENTIAL_PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + REDACTED, text)
    return text


def trace_from_header(header: str | None, project: str | None) -> str | None:
    """Cloud Logging's trace field from ``X-Cloud-Trace-Context: TRACE_ID/SPAN;o=1``."""
    if not header:
        return None
    trace_id = header.split("/", 1)[0].strip()
    if not re.fullmatch(r"[0-9a-fA-F]{1,64}", trace_id):
        return None
    return f"projects/{project}/traces/{trace_id}" if project else trace_id


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``severity``, ``message``, ``time``, ``logger`` and extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a redacted JSON line."""
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[TRACE_KEY if key == "trace" else key] = value
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


_configured = False


def configure_logging(level: str = "INFO") -> None:
    """Send wholeimage's logs to stdout as JSON lines; a later call only changes the level."""
    global _configured  # noqa: PLW0603 (configured once per process)
    root = logging.getLogger("wholeimage")
    root.setLevel(level)
    if _configured:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.propagate = False
    # httpx logs every request URL at INFO; webhook URLs carry credentials, so keep it quiet.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True
