"""Reading IMS's answer to a job query (docs/ims-api.md §2.1), defensively.

IMS returns every field as a possibly-null string. A report keeps what ``check`` acts on: the
status, the image id, the progress and the error; IMS's ``begin_time`` and ``end_time`` are not
kept (``end_time`` is empty while a job runs; the status alone says whether it ended). An unknown
or missing status is *not* an end: it never counts as success.

The error may be in four places of the job model (docs/ims-api.md §2.1): the top-level
``error_code``/``fail_reason``, ``entities.error_code``/``entities.error``,
``entities.addition_error_code``/``entities.addition_error_msg`` and each of
``entities.sub_jobs_result[]``'s ``error_code``/``fail_reason``. The code is the first one found
in that order; the reason is every distinct text found, in that order, joined by `` | ``, made
storable, redacted and clipped to ``MAX_FAIL_REASON`` as a whole.

``parse_ims_time`` reads IMS's times in either format: ISO 8601 with milliseconds and ``Z``
(``2024-11-06T06:28:14.425Z``) or, in older deployments, ``04-Jun-2015 18:11:06:586``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wholeimage.ids import PLAIN_JOB_ID
from wholeimage.logs import redact
from wholeimage.models import JobStatus

IMS_STATUSES = {
    "INIT": JobStatus.INIT,
    "RUNNING": JobStatus.RUNNING,
    "SUCCESS": JobStatus.SUCCESS,
    "FAIL": JobStatus.FAIL,
}

_OLD_FORMAT = re.compile(r"^(\d{2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2})(?::(\d{1,6}))?$")
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}


def parse_ims_time(value: Any) -> datetime | None:
    """A UTC datetime from either IMS time format; None for null, empty or unreadable values."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    old = _OLD_FORMAT.match(text)
    if old:
        day, month, year, hour, minute, second, millis = old.groups()
        if month.title() not in _MONTHS:
            return None
        try:
            return datetime(
                int(year),
                _MONTHS[month.title()],
                int(day),
                int(hour),
                int(minute),
                int(second),
                int((millis or "0").ljust(3, "0")[:3]) * 1000,
                tzinfo=UTC,
            )
        except ValueError:
            return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    # IMS documents its times as UTC; a naive value is taken as UTC too.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# IMS's failure text is kept, stored and shown in chat at most this long, redacted like a log line.
MAX_FAIL_REASON = 1000


# Control characters (NUL above all: PostgreSQL refuses it in text) have no place in what IMS
# reports; a line feed or tab is kept.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# A status IMS reports is a short word; anything longer is clipped before we quote it.
_MAX_STATUS = 64


def storable(text: str) -> str:
    """``text`` as every store and chat service accepts it: valid UTF-8, no control characters.

    JSON lets a lone surrogate (``"\\ud800"``) through; it becomes U+FFFD here.
    """
    valid = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return _CONTROLS.sub(" ", valid)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = storable(str(value)).strip()
    return text or None


def _plain_id(value: Any) -> str | None:
    """An image id IMS reports, only if it may enter the store, a URL and a message as it is."""
    return value if isinstance(value, str) and PLAIN_JOB_ID.fullmatch(value) else None


def _upstream_text(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    return redact(text)[:MAX_FAIL_REASON]


# Sub-jobs read for a reason: a whole-image job has a few, and the reason is clipped anyway.
_MAX_SUB_JOBS = 20
_REASON_SEPARATOR = " | "


def _sub_jobs(entities: dict[str, Any]) -> list[dict[str, Any]]:
    listed = entities.get("sub_jobs_result")
    if not isinstance(listed, list):
        return []
    return [sub for sub in listed[:_MAX_SUB_JOBS] if isinstance(sub, dict)]


def _error_code(payload: dict[str, Any], entities: dict[str, Any]) -> str | None:
    """The first error code of the job's four places (the module docstring)."""
    candidates = [
        payload.get("error_code"),
        entities.get("error_code"),
        entities.get("addition_error_code"),
        *(sub.get("error_code") for sub in _sub_jobs(entities)),
    ]
    return next((code for code in map(_upstream_text, candidates) if code), None)


def _fail_reason(payload: dict[str, Any], entities: dict[str, Any]) -> str | None:
    """Every distinct failure text of the job's four places, in order (the module docstring)."""
    parts: list[str] = []
    texts: list[tuple[str, Any]] = [
        ("", payload.get("fail_reason")),
        ("", entities.get("error")),
        ("", entities.get("addition_error_msg")),
    ]
    for sub in _sub_jobs(entities):
        sub_id = sub.get("job_id")
        label = f"sub-job {sub_id}: " if _plain_id(sub_id) else "sub-job: "
        texts.append((label, sub.get("fail_reason")))
    for label, value in texts:
        text = _text(value)
        if text is not None and text not in parts and f"{label}{text}" not in parts:
            parts.append(f"{label}{text}")
    if not parts:
        return None
    return redact(_REASON_SEPARATOR.join(parts))[:MAX_FAIL_REASON]


def _percent(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    # IMS reports a fraction (0.24) in job progress; clamp whatever arrives to [0, 1].
    return min(max(number, 0.0), 1.0) if number == number else None  # noqa: PLR0124 (NaN check)


@dataclass(frozen=True)
class JobReport:
    """What one job query said; ``status`` is None when IMS said something we do not know."""

    status: JobStatus | None
    raw_status: str | None
    image_id: str | None
    process_percent: float | None
    error_code: str | None
    fail_reason: str | None

    @property
    def ended(self) -> bool:
        """True only for IMS's two verdicts."""
        return self.status in (JobStatus.SUCCESS, JobStatus.FAIL)


def parse_job_report(payload: dict[str, Any]) -> JobReport:
    """Read a ``GET /v1/{project_id}/jobs/{job_id}`` answer."""
    raw_status = _text(payload.get("status"))
    raw_status = raw_status[:_MAX_STATUS] if raw_status else None
    entities = payload.get("entities")
    entities = entities if isinstance(entities, dict) else {}
    return JobReport(
        status=IMS_STATUSES.get(raw_status.upper()) if raw_status else None,
        raw_status=raw_status,
        image_id=_plain_id(entities.get("image_id")),
        process_percent=_percent(entities.get("process_percent")),
        error_code=_error_code(payload, entities),
        fail_reason=_fail_reason(payload, entities),
    )
