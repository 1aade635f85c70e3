"""Plain-text tables for the operator command line: aligned columns, no dependency.

Scripts use ``--json``; these are for people, so they favour reading over parsing: times in UTC
to the second, progress as a percentage, ``-`` for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

NOTHING = "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Rows under headers, each column as wide as its widest cell, two spaces apart.

    The last column is not padded, so lines carry no trailing spaces.
    """
    cells = [[cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(
            value.ljust(widths[index]) if index < len(widths) - 1 else value
            for index, value in enumerate(line)
        ).rstrip()
        for line in lines
    )


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """``label  value`` lines, the values aligned: one record, read top to bottom."""
    items = [(label, cell(value)) for label, value in pairs]
    width = max((len(label) for label, _ in items), default=0)
    return "\n".join(f"{label.ljust(width)}  {value}".rstrip() for label, value in items)


def cell(value: object) -> str:
    """One value as table text: ``-`` for None, UTC seconds for times, ``k=v`` for counts."""
    if value is None or value == "":
        return NOTHING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return moment(value)
    if isinstance(value, Mapping):
        return " ".join(f"{key}={cell(item)}" for key, item in value.items()) or NOTHING
    if isinstance(value, float):
        return f"{value:g}"
    return " ".join(str(value).split())  # one line per row, whatever the value holds


def moment(value: datetime | str | None) -> str:
    """A time as ``2026-11-27 10:58:08Z`` (UTC, to the second); ISO strings are read first."""
    if value is None:
        return NOTHING
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def percent(fraction: float | None) -> str:
    """IMS's progress fraction (0.42) as ``42%``."""
    if fraction is None:
        return NOTHING
    return f"{round(fraction * 100)}%"


def counts(value: Mapping[str, Any] | None) -> str:
    """``{"SUCCESS": 4, "FAIL": 1}`` as ``SUCCESS=4 FAIL=1``; ``-`` when empty."""
    return cell(dict(value or {}))
