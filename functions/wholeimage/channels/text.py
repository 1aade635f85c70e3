"""What every message says, whatever the service: titles, facts, summaries, digest lines.

The words are the same everywhere; only markup, escaping and size limits differ per service, and
those live in the service modules (``escape`` and ``render`` hold the shared parts). One result
becomes one rich message; several become ONE digest: counts per verdict at the top, then every
job, failures first, cut to the service's size with ``fit`` or ``pack`` and an ``omitted`` note
for the jobs left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from wholeimage.results import JobResult, Verdict


@dataclass(frozen=True)
class Look:
    """How a job's verdict is shown.

    Attributes:
        verdict: The verdict this look stands for; services key their own palettes by it.
        word: ``failed``, ``timed out``, ``succeeded``.
        emoji: The sign before the title and every digest line.
        colour: The hex colour of Slack, Mattermost, Rocket.Chat and Google Chat.
        rank: Digest order: failures first.
    """

    verdict: Verdict
    word: str
    emoji: str
    colour: str
    rank: int


LOOKS: dict[str, Look] = {
    "FAIL": Look("FAIL", "failed", "❌", "#E01E5A", 0),
    "TIMED_OUT": Look("TIMED_OUT", "timed out", "⏱", "#ECB22E", 1),
    "UNCONFIRMED": Look("UNCONFIRMED", "was not confirmed", "❔", "#ECB22E", 1),
    "SUCCESS": Look("SUCCESS", "succeeded", "✅", "#2EB67D", 2),
}
_SOURCES = {"ecs": "ECS", "csbs": "CSBS backup", "cbr": "CBR backup", "policy": "Policy"}
CONSOLE_LABEL = "Open the image list in the console"
# Digest lines clip names and details so that one very long name cannot crowd out other jobs.
LINE_NAME_CHARS = 48
LINE_DETAIL_CHARS = 64
_REASON_CHARS = 1000
_FACT_CHARS = 200
# Room kept free in a digest budget for the "…and N more" note.
NOTE_RESERVE = 120


def look(status: str) -> Look:
    """The look of a verdict; anything unknown looks like a failure."""
    return LOOKS.get(status, LOOKS["FAIL"])


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive time is taken as UTC (``.timestamp()`` would read it as local)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``."""
    return utc(moment).isoformat().replace("+00:00", "Z")


def duration(seconds: float) -> str:
    """``45s``, ``12m 34s``, ``2h 03m 04s``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def one_line(text: str) -> str:
    """``text`` on one line, runs of white space as one space.

    Values sit inline after a label: a line break in cloud or user text could start a heading,
    a quote or a list in the services' markdown.
    """
    return " ".join(text.split())


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def clip_bytes(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, an ellipsis marking a cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "…"


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class Fact:
    """One labelled value of a message, still unescaped."""

    label: str
    value: str
    code: bool = False  # an identifier, shown monospace where the service can


def source(result: JobResult) -> str:
    """``ECS 877a…``: what the image was made from."""
    kind = _SOURCES.get(result.source_kind, result.source_kind.upper())
    return one_line(f"{kind} {result.source_id}")


def facts(result: JobResult) -> list[Fact]:
    """What a single-result message shows, in order: what was asked, by whom, and how it ended."""
    shown = look(result.status)
    listed = [Fact("Image", result.image_name), Fact("Source", source(result))]
    if result.requested_by:
        listed.append(Fact("Requested by", result.requested_by))
    listed.append(Fact("Verdict", f"{shown.emoji} {shown.word}"))
    if result.image_id:
        listed.append(Fact("Image ID", result.image_id, code=True))
    if result.error_code:
        listed.append(Fact("Error code", result.error_code, code=True))
    if result.duration_s is not None:
        listed.append(Fact("Duration", duration(result.duration_s)))
    if result.region:
        listed.append(Fact("Region", result.region))
    if result.job_id:
        listed.append(Fact("IMS job", result.job_id, code=True))
    # Discord refuses an empty field value; a dash says "nothing here".
    return [Fact(f.label, clip(one_line(f.value), _FACT_CHARS) or "—", f.code) for f in listed]


def reason(result: JobResult) -> str | None:
    """The cloud's fail reason on one line, clipped; None when there is none."""
    if not result.fail_reason:
        return None
    return clip(one_line(result.fail_reason), _REASON_CHARS)


def title(result: JobResult) -> str:
    """``❌ Image web01-full failed``; a policy run's report: ``✅ Run of policy nightly, …``."""
    shown = look(result.status)
    if result.source_kind == "policy":
        return f"{shown.emoji} Run of {clip(one_line(result.image_name), 100)} {shown.word}"
    return f"{shown.emoji} Image {clip(one_line(result.image_name), 100)} {shown.word}"


def summary(result: JobResult) -> str:
    """The one-line fallback (push notifications, previews)."""
    text = title(result)
    if result.status == "SUCCESS" and result.image_id:
        text += f" (image {result.image_id})"
    elif result.error_code:
        text += f": {result.error_code}"
    elif result.status == "TIMED_OUT" and result.duration_s is not None:
        text += f" after {duration(result.duration_s)}"
    return clip(one_line(text), 300)


def footer(result: JobResult) -> str:
    """``Ended 2026-11-27 09:30:00 UTC · request 9f1c…``."""
    return f"Ended {utc(result.ended_at):%Y-%m-%d %H:%M:%S} UTC · request {result.request_id}"


def ordered(results: Sequence[JobResult]) -> list[JobResult]:
    """A digest's order: failures first, then by end time, name and request."""
    return sorted(
        results,
        key=lambda r: (look(r.status).rank, utc(r.ended_at), r.image_name, r.request_id),
    )


def worst(results: Sequence[JobResult]) -> Look:
    """The look of the worst verdict among ``results``: it colours the digest."""
    return min((look(r.status) for r in results), key=lambda shown: shown.rank)


def latest(results: Sequence[JobResult]) -> datetime:
    """When the last of ``results`` ended, in UTC."""
    return max(utc(r.ended_at) for r in results)


def digest_title(results: Sequence[JobResult]) -> str:
    """``❌ 250 image jobs ended: 2 failed, 1 timed out, 247 succeeded`` (failures first)."""
    counts = [
        f"{sum(1 for r in results if r.status == status)} {shown.word}"
        for status, shown in LOOKS.items()
        if any(r.status == status for r in results)
    ]
    return f"{worst(results).emoji} {len(results)} image jobs ended: {', '.join(counts)}"


def line_detail(result: JobResult) -> Fact | None:
    """What a digest line says after the verdict: the image id, the error code or the duration."""
    if result.status == "SUCCESS" and result.image_id:
        return Fact("Image ID", result.image_id, code=True)
    if result.error_code:
        return Fact("Error code", result.error_code, code=True)
    if result.duration_s is not None:
        return Fact("Duration", f"after {duration(result.duration_s)}")
    return None


def omitted(count: int) -> str:
    """The note under a digest that could not list every job."""
    return f"…and {_count(count, 'more job')} not listed: the message would exceed the service's size limit."


def pack(
    lines: Sequence[str],
    *,
    chunk_size: int,
    chunks: int = 1,
    size: Callable[[str], int] = len,
) -> tuple[list[list[str]], int]:
    """Lines in order into at most ``chunks`` chunks of at most ``chunk_size``; how many are left.

    A line costs ``size(line) + 1`` (its separator). Packing stops at the first line that does
    not fit, so the listed jobs keep their order and the rest are counted, never silently lost.
    """
    packed: list[list[str]] = [[]]
    used = 0
    for index, line in enumerate(lines):
        cost = size(line) + 1
        if used + cost > chunk_size and packed[-1]:
            if len(packed) == chunks:
                return packed, len(lines) - index
            packed.append([])
            used = 0
        if cost > chunk_size:  # a line that fits no chunk at all
            return [chunk for chunk in packed if chunk], len(lines) - index
        packed[-1].append(line)
        used += cost
    return [chunk for chunk in packed if chunk], 0


def fit(
    lines: Sequence[str], budget: int, size: Callable[[str], int] = len
) -> tuple[list[str], int]:
    """As many leading ``lines`` as fit in ``budget``, and how many did not."""
    chunks, left_out = pack(lines, chunk_size=budget, size=size)
    return (chunks[0] if chunks else []), left_out


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8."""
    return len(text.encode("utf-8"))
