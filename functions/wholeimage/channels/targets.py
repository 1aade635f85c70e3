"""What each notification service is sent, and what its answer means.

Pure code, no I/O: ``Target.render`` turns job verdicts (``JobResult``) into one
``OutgoingMessage`` (URL, headers, body bytes) and ``Target.classify`` turns the service's
``httpx.Response`` into a ``Verdict`` (delivered, retry, permanent). Sending, throttling to
``Target.rate``, retries and the outbox belong to the caller.

One result becomes one rich message; several become ONE digest (counts per verdict at the top,
then every job, failures first) that the service's size limits allow; ``Target.digest_limit``
says how many results the caller should put into one digest so that all of them are listed.

Service behaviour follows the research notes (``docs/webhooks.md``). Three facts shape this module:
Feishu, DingTalk and WeCom answer HTTP 200 when they refuse a message, so their JSON code is
always read; the webhook URL is itself the credential, so it never reaches a ``detail`` or a log
(``redact_url``); and httpx's ``params=`` drops a URL's own query, so query parameters are merged
with ``httpx.URL.copy_merge_params``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol
from urllib.parse import unquote_plus, urlsplit

import httpx

from wholeimage.results import Channel, JobResult

Outcome = Literal["delivered", "retry", "permanent"]


@dataclass(frozen=True)
class Verdict:
    """What one delivery attempt came to.

    Attributes:
        outcome: ``delivered``; ``retry`` (later, the same message); ``permanent`` (never retry
            this message: a payload or configuration problem, or a dead webhook).
        retry_after: Seconds the service asked us to wait, when it said (``Retry-After``, Discord's
            ``retry_after``) or documents it (WeCom's frequency limit).
        detail: A short explanation for logs and operators. Never the URL or a secret; response
            text is cut to about 300 characters.
    """

    outcome: Outcome
    retry_after: float | None = None
    detail: str = ""


@dataclass(frozen=True, repr=False)
class OutgoingMessage:
    """One HTTP POST, ready to send with ``content=body`` (never re-serialise: signatures cover it).

    Attributes:
        url: Where to POST, with any query parameters already merged (DingTalk ``timestamp`` and
            ``sign``, Google Chat ``messageReplyOption``, Discord ``wait=true``). A credential.
        headers: Request headers, including the Standard Webhooks signature headers.
        body: The exact bytes to send: compact UTF-8 JSON.
    """

    url: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:
        # The URL is the webhook's credential: a message that ends up in a log shows a redaction.
        return f"OutgoingMessage(url={redact_url(self.url)!r}, body={len(self.body)} bytes)"


@dataclass(frozen=True)
class RateLimit:
    """The service's documented sending limit per webhook; ``None`` where it documents none.

    Attributes:
        per_second: Messages per second.
        per_minute: Messages per minute.
    """

    per_second: float | None
    per_minute: float | None


class Target(Protocol):
    """One notification service: its payload builder and its response classifier.

    Attributes:
        format: The channel format this target serves (a key of ``TARGETS``).
        rate: The service's documented limit, for the caller's client-side throttle.
        digest_limit: How many results one digest may carry so that every job is listed within
            the service's size limits (with names and ids of ordinary length).
    """

    format: str
    rate: RateLimit
    digest_limit: int

    def render(
        self, results: Sequence[JobResult], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """One message: a rich one for a single result, a digest for several.

        Args:
            results: The verdicts to report; at least one.
            channel: Where to: URL, signing secret, keyword.
            now: The time of this attempt (signature timestamps); naive means UTC.

        Raises:
            ValueError: No results, or the channel cannot be served (a retired Teams connector
                URL, a missing or malformed Standard Webhooks secret).
        """
        ...

    def classify(self, response: httpx.Response) -> Verdict:
        """What the service's answer to one attempt means."""
        ...


# --- how verdicts look ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Look:
    word: str
    emoji: str
    colour: str  # Slack, Mattermost, Rocket.Chat, Google Chat
    discord: int
    teams: str  # Adaptive Card Container style
    feishu: str  # card header template
    wecom: str  # <font color>
    rank: int  # digest order: failures first


_LOOKS: dict[str, _Look] = {
    "FAIL": _Look("failed", "❌", "#E01E5A", 15158332, "attention", "red", "warning", 0),
    "TIMED_OUT": _Look("timed out", "⏱", "#ECB22E", 15965202, "warning", "orange", "comment", 1),
    "SUCCESS": _Look("succeeded", "✅", "#2EB67D", 3066993, "good", "green", "info", 2),
}
_SOURCES = {"ecs": "ECS", "csbs": "CSBS backup", "cbr": "CBR backup"}
_USER_AGENT = "wholeimage-notify/0.1"
# Discord asks for this User-Agent shape; Cloudflare may block requests without a valid one.
_DISCORD_USER_AGENT = "DiscordBot (https://wholeimage.example, 0.1)"
_CONSOLE_LABEL = "Open the image list in the console"
# Digest lines clip names and details so that one very long name cannot crowd out other jobs.
_LINE_NAME_CHARS = 48
_LINE_DETAIL_CHARS = 64
_REASON_CHARS = 1000
_FACT_CHARS = 200
_DETAIL_CHARS = 300


def _look(status: str) -> _Look:
    return _LOOKS.get(status, _LOOKS["FAIL"])


def _utc(moment: datetime) -> datetime:
    # A naive time is taken as UTC: .timestamp() would otherwise read it as local time.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    """``45s``, ``12m 34s``, ``2h 03m 04s``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _one_line(text: str) -> str:
    # Values sit inline after a label: a line break in cloud or user text could start a heading,
    # a quote or a list in the services' markdown.
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _clip_bytes(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "…"


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class _Fact:
    label: str
    value: str
    code: bool = False  # an identifier, shown monospace where the service can


def _source(result: JobResult) -> str:
    kind = _SOURCES.get(result.source_kind, result.source_kind.upper())
    return _one_line(f"{kind} {result.source_id}")


def _facts(result: JobResult) -> list[_Fact]:
    """What a single-result message shows, in order: what was asked, by whom, and how it ended."""
    look = _look(result.status)
    facts = [_Fact("Image", result.image_name), _Fact("Source", _source(result))]
    if result.requested_by:
        facts.append(_Fact("Requested by", result.requested_by))
    facts.append(_Fact("Verdict", f"{look.emoji} {look.word}"))
    if result.image_id:
        facts.append(_Fact("Image ID", result.image_id, code=True))
    if result.error_code:
        facts.append(_Fact("Error code", result.error_code, code=True))
    if result.duration_s is not None:
        facts.append(_Fact("Duration", _duration(result.duration_s)))
    if result.region:
        facts.append(_Fact("Region", result.region))
    if result.job_id:
        facts.append(_Fact("IMS job", result.job_id, code=True))
    # Discord refuses an empty field value; a dash says "nothing here".
    return [_Fact(f.label, _clip(_one_line(f.value), _FACT_CHARS) or "—", f.code) for f in facts]


def _reason(result: JobResult) -> str | None:
    if not result.fail_reason:
        return None
    return _clip(_one_line(result.fail_reason), _REASON_CHARS)


def _title(result: JobResult) -> str:
    look = _look(result.status)
    return f"{look.emoji} Image {_clip(_one_line(result.image_name), 100)} {look.word}"


def _summary(result: JobResult) -> str:
    """The one-line fallback (push notifications, previews)."""
    text = _title(result)
    if result.status == "SUCCESS" and result.image_id:
        text += f" (image {result.image_id})"
    elif result.error_code:
        text += f": {result.error_code}"
    elif result.status == "TIMED_OUT" and result.duration_s is not None:
        text += f" after {_duration(result.duration_s)}"
    return _clip(_one_line(text), 300)


def _footer(result: JobResult) -> str:
    return f"Ended {_utc(result.ended_at):%Y-%m-%d %H:%M:%S} UTC · request {result.request_id}"


def _ordered(results: Sequence[JobResult]) -> list[JobResult]:
    return sorted(
        results,
        key=lambda r: (_look(r.status).rank, _utc(r.ended_at), r.image_name, r.request_id),
    )


def _worst(results: Sequence[JobResult]) -> _Look:
    return min((_look(r.status) for r in results), key=lambda look: look.rank)


def _latest(results: Sequence[JobResult]) -> datetime:
    return max(_utc(r.ended_at) for r in results)


def _digest_title(results: Sequence[JobResult]) -> str:
    """``❌ 250 image jobs ended: 2 failed, 1 timed out, 247 succeeded`` (failures first)."""
    counts = [
        f"{sum(1 for r in results if r.status == status)} {look.word}"
        for status, look in _LOOKS.items()
        if any(r.status == status for r in results)
    ]
    return f"{_worst(results).emoji} {len(results)} image jobs ended: {', '.join(counts)}"


def _line_detail(result: JobResult) -> _Fact | None:
    if result.status == "SUCCESS" and result.image_id:
        return _Fact("Image ID", result.image_id, code=True)
    if result.error_code:
        return _Fact("Error code", result.error_code, code=True)
    if result.duration_s is not None:
        return _Fact("Duration", f"after {_duration(result.duration_s)}")
    return None


def _omitted(count: int) -> str:
    return f"…and {_count(count, 'more job')} not listed: the message would exceed the service's size limit."


# Room kept free in a digest budget for the "…and N more" note.
_NOTE_RESERVE = 120


def _pack(
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


def _fit(
    lines: Sequence[str], budget: int, size: Callable[[str], int] = len
) -> tuple[list[str], int]:
    """As many leading ``lines`` as fit in ``budget``, and how many did not."""
    chunks, omitted = _pack(lines, chunk_size=budget, size=size)
    return (chunks[0] if chunks else []), omitted


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def _json_size(value: Any) -> int:
    return len(_json_bytes(value))


def _json_text_size(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string (escapes included, quotes not)."""
    return _json_size(text) - 2


# --- escaping user and cloud text ---------------------------------------------------------------

# Only what another person typed (image name, requester) or the cloud wrote (fail reason, codes)
# is escaped; our own markup is not. Each service gets the escape it documents; where none is
# documented the active characters are swapped for look-alikes that no renderer interprets.

# "@" at the start of a word is a mention; inside one ("alice@example.com") it is not.
_MENTION = re.compile(r"(?<!\w)@(?=\w)")
# What starts inline markup; "(" and "#" are left alone: without "[" there is no link, and values
# never start a line, so "#" cannot make a heading.
_COMMONMARK_ACTIVE = re.compile(r"([\\`*_~|\[\]<>])")
# Written as escapes: the look-alikes are the point, and should be visible as such in review.
_GRAVE_LOOK_ALIKE = "\u02cb"  # modifier letter grave accent
_LOOK_ALIKES = str.maketrans(
    {
        "<": "\u2039",  # single left-pointing angle quotation mark
        ">": "\u203a",
        "[": "\uff3b",  # fullwidth square brackets
        "]": "\uff3d",
        "*": "\u2217",  # asterisk operator
        "`": _GRAVE_LOOK_ALIKE,
        "|": "\u2502",  # box drawings light vertical
    }
)


def _no_mentions(text: str) -> str:
    # A zero-width space after "@" keeps "@everyone" / "@channel" / "@all" readable but inert.
    return _MENTION.sub("@\u200b", text)


def _slack_escape(text: str) -> str:
    # Slack's documented escape: mentions (<!everyone>) and links (<url|x>) need "<". A bare
    # "@channel" does not ping from a webhook; the zero-width space is belt and braces.
    return _no_mentions(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _commonmark_escape(text: str) -> str:
    # CommonMark backslash escapes (Discord, Mattermost, Adaptive Cards' markdown subset).
    return _no_mentions(_COMMONMARK_ACTIVE.sub(r"\\\1", text))


def _html_escape(text: str) -> str:
    # Google Chat card text is a small HTML subset.
    return html.escape(text, quote=False)


def _defang(text: str) -> str:
    # Feishu lark_md, DingTalk and WeCom markdown, Rocket.Chat and Google Chat's plain text
    # document no escape; look-alikes cannot open a tag (<at id=all>, <@user>, <font>), a link
    # or emphasis.
    return _no_mentions(text.translate(_LOOK_ALIKES))


def _code_span(text: str) -> str:
    # Nothing inside a code span is interpreted; only a backtick could close it early.
    return f"`{text.replace('`', _GRAVE_LOOK_ALIKE)}`"


@dataclass(frozen=True)
class _Markup:
    escape: Callable[[str], str]
    bold: Callable[[str], str]  # wraps text that is already escaped
    code: Callable[[str], str]  # raw text to escaped monospace

    def value(self, fact: _Fact) -> str:
        return self.code(fact.value) if fact.code else self.escape(fact.value)

    def line_parts(self, result: JobResult) -> tuple[str, str]:
        """A digest line's job (``❌ **name**``) and its verdict (``failed · `IMS.0001```)."""
        look = _look(result.status)
        name = self.bold(self.escape(_clip(_one_line(result.image_name), _LINE_NAME_CHARS)))
        verdict = look.word
        detail = _line_detail(result)
        if detail is not None:
            value = _clip(_one_line(detail.value), _LINE_DETAIL_CHARS)
            verdict += f" · {self.value(_Fact(detail.label, value, detail.code))}"
        return f"{look.emoji} {name}", verdict

    def line(self, result: JobResult) -> str:
        """One digest line: ``❌ **name** failed · `IMS.0001```."""
        return " ".join(self.line_parts(result))


def _double_star(text: str) -> str:
    return f"**{text}**"


def _single_star(text: str) -> str:
    return f"*{text}*"


_SLACK_MARKUP = _Markup(_slack_escape, _single_star, lambda text: _code_span(_slack_escape(text)))
_COMMONMARK_MARKUP = _Markup(_commonmark_escape, _double_star, _code_span)
# Adaptive Cards' markdown has no code spans, and FactSet titles are already bold.
_TEAMS_MARKUP = _Markup(_commonmark_escape, lambda text: text, _commonmark_escape)
_ROCKETCHAT_MARKUP = _Markup(_defang, _single_star, _code_span)
_DEFANG_MARKUP = _Markup(_defang, _double_star, _defang)
_GOOGLE_MARKUP = _Markup(_html_escape, lambda text: f"<b>{text}</b>", _html_escape)


# --- classification -----------------------------------------------------------------------------

# 408 and 425 say the request was not processed; 429 is throttling; 5xx is the service's trouble.
_RETRY_STATUSES = frozenset({408, 425, 429})


def _is_retry_status(status: int) -> bool:
    return status in _RETRY_STATUSES or status >= 500


def _text(response: httpx.Response) -> str:
    try:
        return response.text
    except httpx.ResponseNotRead:  # a streamed response the caller did not read
        return ""


def _json_of(response: httpx.Response) -> Any:
    try:
        return json.loads(_text(response))
    except ValueError:
        return None


def _secret_parts(url: httpx.URL) -> list[str]:
    """The URL and the parts of it that may be a credential: token-like path segments and values."""
    parts = [str(url)]
    candidates = [segment for segment in url.path.split("/") if segment]
    for pair in url.query.decode("ascii", "replace").split("&"):
        value = pair.partition("=")[2]
        candidates += [value, unquote_plus(value)]  # as sent, and as a server may echo it
    for candidate in candidates:
        # Plain lowercase words ("services", "messages") are structure, not secrets.
        if len(candidate) >= 8 and not re.fullmatch(r"[a-z-]+", candidate):
            parts.append(candidate)
    return sorted(parts, key=len, reverse=True)


def _scrub(text: str, response: httpx.Response) -> str:
    """``text`` without the request URL or its secret parts, should the service echo them."""
    try:
        url = response.request.url
    except RuntimeError:  # a response built without a request
        return text
    for part in _secret_parts(url):
        text = text.replace(part, "…")
    return text


def _describe(response: httpx.Response, what: str = "") -> str:
    """``HTTP 404: <start of the answer>``, or ``what`` in its place; no URL, no secret."""
    head = f"HTTP {response.status_code}"
    text = what or _one_line(_text(response))
    if not text:
        return head
    return f"{head}: {_clip(_scrub(text, response), _DETAIL_CHARS)}"


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP-date (RFC 9110)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    seconds = _seconds(value.strip())
    if seconds is not None:
        return seconds
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((_utc(moment) - datetime.now(UTC)).total_seconds(), 0.0)


def _by_status(response: httpx.Response, detail: str = "") -> Verdict:
    """The generic reading of an HTTP status, for answers no service-specific rule covers."""
    status = response.status_code
    if 200 <= status < 300:
        return Verdict("delivered", detail=detail or f"HTTP {status}")
    if _is_retry_status(status):
        return Verdict("retry", _retry_after(response), detail or _describe(response))
    if 300 <= status < 400:
        # Redirects are not followed (they would also open an SSRF path): the URL is wrong.
        detail = detail or _describe(response, "a redirect; check the webhook URL")
    return Verdict("permanent", detail=detail or _describe(response))


@dataclass(frozen=True)
class _Code:
    outcome: Outcome
    meaning: str
    retry_after: float | None = None


def _by_code(
    response: httpx.Response,
    *,
    service: str,
    code_field: str,
    message_field: str,
    codes: dict[int, _Code],
) -> Verdict:
    """Services that answer HTTP 200 to a refusal: only a JSON code of 0 means delivered.

    A code the notes do not document is permanent: retrying an unknown refusal would only
    spend the robot's small per-minute budget.
    """
    if not 200 <= response.status_code < 300:
        return _by_status(response)
    body = _json_of(response)
    body = body if isinstance(body, dict) else {}
    code = body.get(code_field)
    if isinstance(code, bool) or not isinstance(code, int):
        what = f"not a {service} answer (no {code_field})"
        return Verdict("permanent", detail=_describe(response, what))
    if code == 0:
        return Verdict("delivered", detail=f"HTTP {response.status_code}, {code_field} 0")
    known = codes.get(code, _Code("permanent", "not a documented code"))
    said = _one_line(str(body.get(message_field, "")))
    detail = f"{service} {code_field} {code}: {known.meaning}" + (f" ({said})" if said else "")
    return Verdict(known.outcome, known.retry_after, _describe(response, detail))


# --- shared target machinery --------------------------------------------------------------------


def _json_bytes(payload: Any) -> bytes:
    # Compact UTF-8: CJK text stays 3 bytes a character instead of 6 as \u escapes.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_headers(user_agent: str = _USER_AGENT) -> dict[str, str]:
    return {"Content-Type": "application/json; charset=utf-8", "User-Agent": user_agent}


def _merge_query(url: str, params: dict[str, str]) -> str:
    # Never params=: httpx 0.28 replaces the URL's own query (key, token, access_token) with it.
    return str(httpx.URL(url).copy_merge_params(params))


def _keyworded(channel: Channel, text: str) -> str:
    return f"{channel.keyword} {text}" if channel.keyword else text


class _ChatTarget:
    """A JSON-over-POST chat target: single and digest payloads, generic classification."""

    format: str
    rate: RateLimit
    digest_limit: int

    def render(
        self, results: Sequence[JobResult], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """One rich message for one result, one digest for several (see ``Target.render``)."""
        if not results:
            raise ValueError("nothing to render: results is empty")
        if len(results) == 1:
            payload = self._single(results[0], channel)
        else:
            payload = self._digest(_ordered(results), channel)
        return self._message(channel.url.get_secret_value(), payload, channel, now)

    def classify(self, response: httpx.Response) -> Verdict:
        """The generic reading: 2xx delivered; 408/425/429/5xx retry; anything else permanent."""
        return _by_status(response)

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        raise NotImplementedError

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        raise NotImplementedError

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        return OutgoingMessage(url=url, headers=_json_headers(), body=_json_bytes(payload))


# --- Slack, Mattermost, Rocket.Chat --------------------------------------------------------------

# Slack's plain-text error codes: every one but rollup_error is a payload or configuration fault.
_SLACK_CODES: dict[str, _Code] = {
    "invalid_payload": _Code("permanent", "the payload is not valid"),
    "user_not_found": _Code("permanent", "user not found"),
    "too_many_attachments": _Code("permanent", "more than 100 attachments"),
    "no_text": _Code("permanent", "the message is empty"),
    "missing_text_or_fallback_or_attachments": _Code("permanent", "the message is empty"),
    "action_prohibited": _Code("permanent", "a workspace restriction prohibits posting"),
    "posting_to_general_channel_denied": _Code("permanent", "posting to #general is not allowed"),
    "invalid_token": _Code("permanent", "the webhook token is invalid"),
    "channel_not_found": _Code("permanent", "the channel no longer exists; disable this webhook"),
    "no_service": _Code("permanent", "the webhook is disabled, removed or invalid; disable it"),
    "no_service_id": _Code("permanent", "the webhook URL is malformed"),
    "no_team": _Code("permanent", "the webhook URL is malformed"),
    "team_disabled": _Code("permanent", "the workspace is disabled"),
    "channel_is_archived": _Code("permanent", "the channel is archived; disable this webhook"),
    "rollup_error": _Code("retry", "a transient Slack error"),
}


class SlackTarget(_ChatTarget):
    """Slack incoming webhook: Block Kit inside a coloured legacy attachment, plus ``text``."""

    format = "slack"
    rate = RateLimit(per_second=1.0, per_minute=None)
    # 48 sections of 3000 characters hold far more; 200 keeps a digest readable.
    digest_limit = 200
    _markup = _SLACK_MARKUP

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        fields = [
            {"type": "mrkdwn", "text": f"*{fact.label}*\n{markup.value(fact)}"}
            for fact in _facts(result)
        ]
        blocks: list[dict[str, Any]] = [
            _slack_header(_title(result)),
            {"type": "section", "fields": fields[:10]},
        ]
        reason = _reason(result)
        if reason:
            blocks.append(_slack_section(f"*Reason*\n{_slack_escape(reason)}"))
        if result.console_url:
            blocks.append(_slack_section(f"<{_slack_escape(result.console_url)}|{_CONSOLE_LABEL}>"))
        blocks.append(_slack_context(_slack_escape(_footer(result))))
        return {
            "text": _slack_escape(_summary(result)),
            "attachments": [{"color": _look(result.status).colour, "blocks": blocks}],
        }

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        title = _digest_title(results)
        lines = [self._markup.line(result) for result in results]
        # 50 blocks at most: a header, up to 48 sections and a context for the omission note.
        chunks, omitted = _pack(lines, chunk_size=3000, chunks=48)
        blocks = [_slack_header(title)] + [_slack_section("\n".join(chunk)) for chunk in chunks]
        if omitted:
            blocks.append(_slack_context(_omitted(omitted)))
        return {
            "text": _slack_escape(title),
            "attachments": [{"color": _worst(results).colour, "blocks": blocks}],
        }

    def classify(self, response: httpx.Response) -> Verdict:
        """Delivered only on 200 ``ok``; Slack's body codes decide the rest, then the status."""
        body = _text(response).strip()
        if response.status_code == 200 and body == "ok":
            return Verdict("delivered", detail="HTTP 200 ok")
        if response.status_code == 429:
            return Verdict("retry", _retry_after(response), _describe(response, "rate limited"))
        known = _SLACK_CODES.get(body)
        if known is not None:
            detail = _describe(response, f"Slack says {body}: {known.meaning}")
            return Verdict(known.outcome, _retry_after(response), detail)
        if response.status_code == 200:
            return Verdict("permanent", detail=_describe(response, "an answer other than ok"))
        return _by_status(response)


def _slack_header(text: str) -> dict[str, Any]:
    # plain_text is never parsed for mentions or links, so it needs no escaping.
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": _clip(text, 150), "emoji": True},
    }


def _slack_section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(mrkdwn, 3000)}}


def _slack_context(mrkdwn: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(mrkdwn, 3000)}]}


class _AttachmentTarget(_ChatTarget):
    """Slack-style ``attachments`` without Block Kit (Mattermost, Rocket.Chat)."""

    _markup: _Markup
    _digest_chars: int  # characters of attachment text a digest may use

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        attachment: dict[str, Any] = {
            "fallback": markup.escape(_summary(result)),
            "color": _look(result.status).colour,
            "title": markup.escape(_title(result)),
            "fields": [
                {"short": True, "title": fact.label, "value": markup.value(fact)}
                for fact in _facts(result)
            ],
            "footer": markup.escape(_footer(result)),
        }
        if result.console_url:
            attachment["title_link"] = result.console_url
        reason = _reason(result)
        if reason:
            attachment["text"] = f"{markup.bold('Reason:')} {markup.escape(reason)}"
        return {"text": markup.escape(_summary(result)), "attachments": [attachment]}

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        title = self._markup.escape(_digest_title(results))
        lines = [self._markup.line(result) for result in results]
        listed, omitted = _fit(lines, self._digest_chars - len(title) - _NOTE_RESERVE)
        text = "\n".join(listed + ([_omitted(omitted)] if omitted else []))
        attachment = {"fallback": title, "color": _worst(results).colour, "text": text}
        return {"text": title, "attachments": [attachment]}


class MattermostTarget(_AttachmentTarget):
    """Mattermost incoming webhook: Slack-style attachments (Block Kit is not supported)."""

    format = "mattermost"
    # Only when the admin turns rate limiting on (default off): 10 per second.
    rate = RateLimit(per_second=10.0, per_minute=None)
    digest_limit = 100
    _markup = _COMMONMARK_MARKUP
    _digest_chars = 16_000  # posts hold 16383 characters

    def classify(self, response: httpx.Response) -> Verdict:
        """Delivered only on 200 ``ok``; otherwise the generic status reading."""
        if response.status_code == 200:
            if _text(response).strip() == "ok":
                return Verdict("delivered", detail="HTTP 200 ok")
            return Verdict("permanent", detail=_describe(response, "an answer other than ok"))
        return _by_status(response)


class RocketChatTarget(_AttachmentTarget):
    """Rocket.Chat incoming webhook: Slack-style attachments."""

    format = "rocketchat"
    # The API rate limiter is on by default: 10 calls a minute per route, /hooks included.
    rate = RateLimit(per_second=None, per_minute=10.0)
    digest_limit = 50
    _markup = _ROCKETCHAT_MARKUP
    _digest_chars = 5000  # the default Message_MaxAllowedSize

    def classify(self, response: httpx.Response) -> Verdict:
        """Delivered only on 2xx ``{"success": true}``; ``success: false`` is permanent."""
        body = _json_of(response)
        success = body.get("success") if isinstance(body, dict) else None
        if 200 <= response.status_code < 300:
            if success is True:
                return Verdict("delivered", detail=f"HTTP {response.status_code} success")
            return Verdict("permanent", detail=_describe(response))
        return _by_status(response)


# --- Teams -------------------------------------------------------------------------------------

_TEAMS_RETIRED = (
    "this Teams URL ({url}) is an Office 365 connector webhook, which Microsoft retired in 2026; "
    "in the channel add a Workflows webhook (Workflows → 'Send webhook alerts to a channel', "
    "trigger access 'Anyone') and configure its URL instead"
)


def _is_office_connector(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host.endswith(".webhook.office.com"):
        return True
    return host in {"outlook.office.com", "outlook.office365.com"} and parts.path.startswith(
        "/webhook"
    )


class TeamsTarget(_ChatTarget):
    """Teams through a Workflows (Power Automate) webhook: a message with an Adaptive Card."""

    format = "teams"
    rate = RateLimit(per_second=1.0, per_minute=None)
    digest_limit = 120
    _markup = _TEAMS_MARKUP
    # Teams' limit is "about 28 KB" for the whole activity: keep 2 KB in hand.
    _max_bytes = 26_000

    def render(
        self, results: Sequence[JobResult], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """As ``Target.render``; a retired Office 365 connector URL is refused (ValueError)."""
        url = channel.url.get_secret_value()
        if _is_office_connector(url):
            raise ValueError(_TEAMS_RETIRED.format(url=redact_url(url)))
        return super().render(results, channel, now)

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        body: list[dict[str, Any]] = [
            _teams_banner(_look(result.status).teams, markup.escape(_title(result))),
            {
                "type": "FactSet",
                "facts": [
                    {"title": fact.label, "value": markup.value(fact)} for fact in _facts(result)
                ],
            },
        ]
        reason = _reason(result)
        if reason:
            # TextRun text is never markdown: the reason is shown exactly as the cloud wrote it.
            body.append(
                {
                    "type": "RichTextBlock",
                    "inlines": [
                        {"type": "TextRun", "text": "Reason: ", "weight": "Bolder"},
                        {"type": "TextRun", "text": reason},
                    ],
                }
            )
        body.append(_teams_note(markup.escape(_footer(result))))
        actions = []
        if result.console_url:
            actions.append(
                {"type": "Action.OpenUrl", "title": _CONSOLE_LABEL, "url": result.console_url}
            )
        return _teams_message(body, actions)

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        markup = self._markup
        # One fact per job: the job on the left, its verdict on the right.
        facts = [dict(zip(("title", "value"), markup.line_parts(r), strict=True)) for r in results]
        title = _digest_title(results)
        overhead = _json_size(_teams_message([_teams_banner("attention", title)], []))
        encoded = [json.dumps(fact, ensure_ascii=False) for fact in facts]
        listed, omitted = _fit(
            encoded, self._max_bytes - overhead - 300 - _NOTE_RESERVE, _utf8_size
        )
        body = [
            _teams_banner(_worst(results).teams, markup.escape(title)),
            {"type": "FactSet", "facts": facts[: len(listed)]},
        ]
        if omitted:
            body.append(_teams_note(_omitted(omitted)))
        return _teams_message(body, [])

    def classify(self, response: httpx.Response) -> Verdict:
        """200 or 202 is delivered, though a 202 only says the flow was triggered."""
        if response.status_code == 202:
            # Workflows answers before it renders: a card that fails shows only in the run history.
            return Verdict(
                "delivered", detail="HTTP 202: the flow accepted it; posting is asynchronous"
            )
        return _by_status(response)


def _teams_banner(style: str, text: str) -> dict[str, Any]:
    return {
        "type": "Container",
        "style": style,
        "bleed": True,
        "items": [
            {"type": "TextBlock", "text": text, "weight": "Bolder", "size": "Medium", "wrap": True}
        ],
    }


def _teams_note(text: str) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "isSubtle": True, "size": "Small", "wrap": True}


def _teams_message(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        # 1.4, not 1.5: older Teams clients render 1.4, and nothing here needs more. No "msteams"
        # width hint either: the published schema refuses unknown card members.
        "version": "1.4",
        "body": body,
    }
    if actions:
        card["actions"] = actions
    attachment = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": card,
    }
    # The Workflows template iterates "attachments": a plain {"text": ...} body fails in the flow.
    return {"type": "message", "attachments": [attachment]}


# --- Discord -----------------------------------------------------------------------------------

_DISCORD_PAYLOAD_CODES = {
    50035: "invalid form body",
    50006: "cannot send an empty message",
    40005: "request entity too large",
}
# Discord embed limits; breaking any of them gets a 400.
_EMBED_TITLE = 256
_EMBED_DESCRIPTION = 4096
_EMBED_FIELD_VALUE = 1024
_EMBED_FOOTER = 2048
_EMBED_TOTAL = 6000


def _embed_size(embed: dict[str, Any]) -> int:
    """Characters Discord counts toward the 6000 total of a message's embeds."""
    size = len(embed.get("title", "")) + len(embed.get("description", ""))
    size += len(embed.get("footer", {}).get("text", ""))
    size += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    return size


class DiscordTarget(_ChatTarget):
    """Discord webhook: one coloured embed; mentions disabled; ``wait=true`` to see failures."""

    format = "discord"
    # Discord's limits are dynamic (read from headers); 1/s is a conservative client-side pace.
    rate = RateLimit(per_second=1.0, per_minute=None)
    # 4096 description characters hold about 50 lines of 48-character names; 40 leaves room.
    digest_limit = 40
    _markup = _COMMONMARK_MARKUP

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        embed: dict[str, Any] = {
            "title": _clip(markup.escape(_title(result)), _EMBED_TITLE),
            "color": _look(result.status).discord,
            "fields": [
                {
                    "name": fact.label,
                    "value": _clip(markup.value(fact), _EMBED_FIELD_VALUE),
                    "inline": True,
                }
                for fact in _facts(result)
            ],
            "timestamp": _iso(result.ended_at),
            # Footers are not markdown: plain text.
            "footer": {"text": _clip(_footer(result), _EMBED_FOOTER)},
        }
        if result.console_url:
            embed["url"] = result.console_url
        reason = _reason(result)
        if reason:
            room = min(_EMBED_DESCRIPTION, _EMBED_TOTAL - _embed_size(embed))
            embed["description"] = _clip(f"**Reason:** {markup.escape(reason)}", room)
        return _discord_message(embed)

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        title = _clip(self._markup.escape(_digest_title(results)), _EMBED_TITLE)
        lines = [self._markup.line(result) for result in results]
        listed, omitted = _fit(lines, _EMBED_DESCRIPTION - _NOTE_RESERVE)
        description = "\n".join(listed + ([_omitted(omitted)] if omitted else []))
        embed = {
            "title": title,
            "color": _worst(results).discord,
            "description": description,
            "timestamp": _iso(_latest(results)),
        }
        return _discord_message(embed)

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        # Without wait=true Discord answers 204 even for a message it did not save.
        return OutgoingMessage(
            url=_merge_query(url, {"wait": "true"}),
            headers=_json_headers(_DISCORD_USER_AGENT),
            body=_json_bytes(payload),
        )

    def classify(self, response: httpx.Response) -> Verdict:
        """200/204 delivered; 429 retry (JSON ``retry_after`` or headers); 404/10015 permanent."""
        status = response.status_code
        if status in (200, 204):
            return Verdict("delivered", detail=f"HTTP {status}")
        body = _json_of(response)
        body = body if isinstance(body, dict) else {}
        code = body.get("code")
        if status == 429:
            wait = _seconds(body.get("retry_after"))
            if wait is None:
                wait = _retry_after(response) or _seconds(
                    response.headers.get("X-RateLimit-Reset-After")
                )
            scope = "globally " if body.get("global") else ""
            return Verdict("retry", wait, _describe(response, f"rate limited {scope}by Discord"))
        if status == 404 or code == 10015:
            # Discord: a webhook that answered 404 must not be used again.
            return Verdict(
                "permanent", detail=_describe(response, "unknown webhook (10015); disable it")
            )
        if code in _DISCORD_PAYLOAD_CODES:
            meaning = _DISCORD_PAYLOAD_CODES[code]
            return Verdict(
                "permanent", detail=_describe(response, f"Discord code {code}: {meaning}")
            )
        return _by_status(response)


def _discord_message(embed: dict[str, Any]) -> dict[str, Any]:
    # parse: [] means no @everyone, role or user ping, whatever the text says.
    return {"allowed_mentions": {"parse": []}, "embeds": [embed]}


# --- Google Chat -------------------------------------------------------------------------------

_THREAD_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _thread_key(request_id: str) -> str:
    # One thread per job: every later message about the same request lands under it.
    if _THREAD_SAFE.fullmatch(request_id):
        return f"wholeimage-{request_id}"
    return f"wholeimage-{hashlib.sha256(request_id.encode('utf-8')).hexdigest()[:32]}"


class GoogleChatTarget(_ChatTarget):
    """Google Chat incoming webhook: a cardsV2 card in the job's own thread."""

    format = "googlechat"
    # The per-space write quota is shared by every app and webhook in the space.
    rate = RateLimit(per_second=1.0, per_minute=None)
    digest_limit = 150
    _markup = _GOOGLE_MARKUP
    _max_bytes = 32_000  # a message, text and cards, is at most 32,000 bytes
    _paragraph_bytes = 4000

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        look = _look(result.status)
        markup = self._markup
        # Cards have no accent colour: the verdict is coloured text.
        verdict = f'<font color="{look.colour}"><b>{look.emoji} {look.word.upper()}</b></font>'
        widgets: list[dict[str, Any]] = [{"textParagraph": {"text": verdict}}]
        widgets += [
            {"decoratedText": {"topLabel": fact.label, "text": markup.value(fact)}}
            for fact in _facts(result)
        ]
        reason = _reason(result)
        if reason:
            widgets.append({"textParagraph": {"text": f"<b>Reason</b><br>{_html_escape(reason)}"}})
        if result.console_url:
            button = {"text": _CONSOLE_LABEL, "onClick": {"openLink": {"url": result.console_url}}}
            widgets.append({"buttonList": {"buttons": [button]}})
        widgets.append({"textParagraph": {"text": _html_escape(_footer(result))}})
        card = {
            # Header title and subtitle are plain text.
            "header": {
                "title": _clip(_title(result), 200),
                "subtitle": _clip(_source(result), 200),
            },
            "sections": [{"widgets": widgets}],
        }
        return {
            "text": _defang(_summary(result)),
            "thread": {"threadKey": _thread_key(result.request_id)},
            "cardsV2": [{"cardId": result.key, "card": card}],
        }

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        title = _digest_title(results)
        lines = [self._markup.line(result) for result in results]
        # Digests of one day share a thread, so a burst of completions stays together.
        payload: dict[str, Any] = {
            "text": _defang(title),
            "thread": {"threadKey": f"wholeimage-digest-{_latest(results):%Y-%m-%d}"},
            "cardsV2": [
                {"cardId": "wholeimage-digest", "card": {"header": {"title": _clip(title, 200)}}}
            ],
        }
        budget = self._max_bytes - _json_size(payload) - 1000 - _NOTE_RESERVE
        chunks, omitted = _pack(
            lines,
            chunk_size=self._paragraph_bytes,
            chunks=max(budget // self._paragraph_bytes, 1),
            size=lambda line: _json_text_size(line) + 4,  # "<br>"
        )
        widgets = [{"textParagraph": {"text": "<br>".join(chunk)}} for chunk in chunks]
        if omitted:
            widgets.append({"textParagraph": {"text": _html_escape(_omitted(omitted))}})
        payload["cardsV2"][0]["card"]["sections"] = [{"widgets": widgets}]
        return payload

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        # Reply in the thread named by threadKey, or start it; the threadKey query is deprecated.
        option = {"messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"}
        return OutgoingMessage(
            url=_merge_query(url, option), headers=_json_headers(), body=_json_bytes(payload)
        )

    def classify(self, response: httpx.Response) -> Verdict:
        """200 delivered; Google's JSON error names the status (429 and 5xx retry)."""
        body = _json_of(response)
        error = body.get("error") if isinstance(body, dict) else None
        if not 200 <= response.status_code < 300 and isinstance(error, dict):
            said = f"{error.get('status', '')} {error.get('message', '')}".strip()
            return _by_status(response, _describe(response, said) if said else "")
        return _by_status(response)


# --- Feishu / Lark, DingTalk, WeCom -----------------------------------------------------------------

_FEISHU_CODES: dict[int, _Code] = {
    9499: _Code("permanent", "bad request: malformed, or over 20 KB"),
    19021: _Code(
        "permanent",
        "signature mismatch or timestamp over an hour off: check the secret and the clock",
    ),
    19022: _Code("permanent", "this IP address is not allowed"),
    19024: _Code("permanent", "the configured keyword is missing: set the channel's keyword"),
    11232: _Code("retry", "throttled"),
}


def _feishu_sign(timestamp: str, secret: str) -> str:
    """Feishu's signature: HMAC-SHA256 keyed with ``"{timestamp}\\n{secret}"`` over nothing, base64.

    Args:
        timestamp: Unix seconds, as sent.
        secret: The bot's signing secret.
    """
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


def _dingtalk_sign(timestamp: str, secret: str) -> str:
    """DingTalk's signature: HMAC-SHA256 keyed with the secret over ``"{timestamp}\\n{secret}"``.

    Args:
        timestamp: Unix milliseconds, as sent.
        secret: The robot's ``SEC…`` secret.
    """
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class FeishuTarget(_ChatTarget):
    """Feishu / Lark custom bot: an interactive card, signed when the channel has a secret."""

    format = "feishu"
    rate = RateLimit(per_second=5.0, per_minute=100.0)
    digest_limit = 100
    _markup = _DEFANG_MARKUP
    _max_bytes = 20_000  # the request body must stay under 20 KB

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        fields = [
            {"is_short": True, "text": _lark_md(f"**{fact.label}**\n{markup.value(fact)}")}
            for fact in _facts(result)
        ]
        elements: list[dict[str, Any]] = [{"tag": "div", "fields": fields}]
        reason = _reason(result)
        if reason:
            elements.append({"tag": "div", "text": _lark_md(f"**Reason**\n{_defang(reason)}")})
        if result.console_url:
            button = {
                "tag": "button",
                "text": {"tag": "plain_text", "content": _CONSOLE_LABEL},
                "type": "primary",
                "url": result.console_url,
            }
            elements.append({"tag": "action", "actions": [button]})
        elements.append(
            {"tag": "note", "elements": [{"tag": "plain_text", "content": _footer(result)}]}
        )
        header = _keyworded(channel, _title(result))
        return _feishu_card(_look(result.status).feishu, header, elements)

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        header = _keyworded(channel, _digest_title(results))
        lines = [self._markup.line(result) for result in results]
        overhead = _json_size(_feishu_card("red", header, []))
        budget = self._max_bytes - overhead - 500 - _NOTE_RESERVE
        # Inside JSON the "\n" separator is two bytes: count it twice.
        listed, omitted = _fit(lines, budget, lambda line: _json_text_size(line) + 1)
        elements: list[dict[str, Any]] = [{"tag": "div", "text": _lark_md("\n".join(listed))}]
        if omitted:
            elements.append(
                {"tag": "note", "elements": [{"tag": "plain_text", "content": _omitted(omitted)}]}
            )
        return _feishu_card(_worst(results).feishu, header, elements)

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        if channel.secret is not None:
            # Feishu's sign covers only the timestamp (not the body) and goes in the JSON body.
            timestamp = str(int(_utc(now).timestamp()))
            sign = _feishu_sign(timestamp, channel.secret.get_secret_value())
            payload = {"timestamp": timestamp, "sign": sign, **payload}
        return super()._message(url, payload, channel, now)

    def classify(self, response: httpx.Response) -> Verdict:
        """Delivered only when the JSON ``code`` is 0: Feishu refuses with HTTP 200."""
        return _by_code(
            response, service="Feishu", code_field="code", message_field="msg", codes=_FEISHU_CODES
        )


def _lark_md(content: str) -> dict[str, str]:
    return {"tag": "lark_md", "content": content}


def _feishu_card(template: str, title: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            # plain_text: the title is never interpreted, and it carries the keyword.
            "header": {
                "template": template,
                "title": {"tag": "plain_text", "content": _clip(title, 200)},
            },
            "elements": elements,
        },
    }


# Throttled robots are blocked for 10 minutes, so an earlier retry only extends the block.
_DINGTALK_THROTTLED = _Code("retry", "throttled: over 20 messages a minute", 600.0)
_DINGTALK_CODES: dict[int, _Code] = {
    310000: _Code(
        "permanent",
        "security check failed: keyword missing, wrong signature, clock over an hour off, or IP not allowed",
    ),
    410100: _DINGTALK_THROTTLED,
    130101: _DINGTALK_THROTTLED,
    -1: _Code("retry", "system busy"),
}


class DingTalkTarget(_ChatTarget):
    """DingTalk custom robot: markdown, signed in the query when the channel has a secret."""

    format = "dingtalk"
    rate = RateLimit(per_second=None, per_minute=20.0)
    digest_limit = 100
    _markup = _DEFANG_MARKUP
    # The reference gives no markdown size limit [unconfirmed]; stay well below Feishu's 20 KB.
    _text_bytes = 15_000

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        # The keyword is never escaped: the robot looks for it exactly as configured.
        lines = [f"### {_keyworded(channel, _defang(_title(result)))}", ""]
        lines += [f"- **{fact.label}:** {markup.value(fact)}" for fact in _facts(result)]
        reason = _reason(result)
        if reason:
            lines.append(f"- **Reason:** {_defang(reason)}")
        if result.console_url:
            lines.append(f"- [{_CONSOLE_LABEL}]({result.console_url})")
        lines += ["", f"> {_defang(_footer(result))}"]
        # The title is only the preview; DingTalk shows the text, so the text repeats it.
        return _dingtalk_markdown(_keyworded(channel, _summary(result)), "\n".join(lines))

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        title = _keyworded(channel, _digest_title(results))
        lines = [f"- {self._markup.line(result)}" for result in results]
        budget = self._text_bytes - _utf8_size(title) - _NOTE_RESERVE
        listed, omitted = _fit(lines, budget, lambda line: _json_text_size(line) + 1)
        text = f"### {title}\n\n" + "\n".join(listed)
        if omitted:
            text += f"\n\n> {_omitted(omitted)}"
        return _dingtalk_markdown(title, text)

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        if channel.secret is not None:
            timestamp = str(int(_utc(now).timestamp() * 1000))
            sign = _dingtalk_sign(timestamp, channel.secret.get_secret_value())
            # The raw base64 goes in: httpx encodes it once (a pre-quoted value would be %252B).
            url = _merge_query(url, {"timestamp": timestamp, "sign": sign})
        return super()._message(url, payload, channel, now)

    def classify(self, response: httpx.Response) -> Verdict:
        """Delivered only when ``errcode`` is 0: DingTalk refuses with HTTP 200."""
        return _by_code(
            response,
            service="DingTalk",
            code_field="errcode",
            message_field="errmsg",
            codes=_DINGTALK_CODES,
        )


def _dingtalk_markdown(title: str, text: str) -> dict[str, Any]:
    return {
        "msgtype": "markdown",
        # The title is only the preview in notifications: plain text, never rendered.
        "markdown": {"title": _clip(title, 100), "text": text},
        "at": {"isAtAll": False},
    }


_WECOM_CODES: dict[int, _Code] = {
    93000: _Code(
        "permanent", "invalid webhook URL: wrong key, or the robot was removed; disable it"
    ),
    45009: _Code("retry", "over the frequency limit (20 messages a minute)", 60.0),
    -1: _Code("retry", "system busy"),
}


class WeComTarget(_ChatTarget):
    """WeCom (WeChat Work) group robot: markdown with ``<font color>``."""

    format = "wecom"
    rate = RateLimit(per_second=None, per_minute=20.0)
    digest_limit = 35
    _markup = _DEFANG_MARKUP
    _content_bytes = 4096  # markdown.content is at most 4096 bytes of UTF-8

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        look = _look(result.status)
        markup = self._markup
        name = _defang(_clip(_one_line(result.image_name), 100))
        headline = f'**{look.emoji} Image {name} <font color="{look.wecom}">{look.word}</font>**'
        lines = [_keyworded(channel, headline)]
        lines += [f"> {fact.label}: {markup.value(fact)}" for fact in _facts(result)]
        reason = _reason(result)
        if reason:
            lines.append(f"> Reason: {_defang(_clip(reason, 600))}")
        if result.console_url:
            lines.append(f"> [{_CONSOLE_LABEL}]({result.console_url})")
        lines.append(f'<font color="comment">{_defang(_footer(result))}</font>')
        return _wecom_markdown(_clip_bytes("\n".join(lines), self._content_bytes))

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        worst = _worst(results)
        title = _defang(_digest_title(results))
        head = _keyworded(channel, f'**<font color="{worst.wecom}">{title}</font>**')
        lines = [self._markup.line(result) for result in results]
        budget = self._content_bytes - _utf8_size(head) - _NOTE_RESERVE
        listed, omitted = _fit(lines, budget, _utf8_size)
        if omitted:
            listed.append(f'<font color="comment">{_omitted(omitted)}</font>')
        return _wecom_markdown("\n".join([head, *listed]))

    def classify(self, response: httpx.Response) -> Verdict:
        """Delivered only when ``errcode`` is 0: WeCom refuses with HTTP 200."""
        return _by_code(
            response,
            service="WeCom",
            code_field="errcode",
            message_field="errmsg",
            codes=_WECOM_CODES,
        )


def _wecom_markdown(content: str) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"content": content}}


# --- Standard Webhooks -------------------------------------------------------------------------

_EVENT_TYPES = {
    "SUCCESS": "wholeimage.job.succeeded",
    "FAIL": "wholeimage.job.failed",
    "TIMED_OUT": "wholeimage.job.timed_out",
}
DIGEST_EVENT_TYPE = "wholeimage.jobs.digest"
_WHSEC = "whsec_"


def _signing_key(channel: Channel) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; messages never quote the secret."""
    secret = channel.secret.get_secret_value() if channel.secret is not None else ""
    if not secret:
        raise ValueError(f"channel {channel.name}: the standard format needs a secret (whsec_…)")
    if not secret.startswith(_WHSEC):
        raise ValueError(
            f"channel {channel.name}: the secret must be a Standard Webhooks secret, whsec_<base64>"
        )
    encoded = secret.removeprefix(_WHSEC)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"channel {channel.name}: the secret after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"channel {channel.name}: the secret must hold 24 to 64 random bytes")
    return key


def digest_id(results: Sequence[JobResult]) -> str:
    """The stable ``webhook-id`` of a digest: a hash of its results' notification keys, sorted.

    Args:
        results: The digest's results, in any order.
    """
    keys = "\n".join(sorted(result.key for result in results))
    return f"wi_digest_{hashlib.sha256(keys.encode('utf-8')).hexdigest()[:32]}"


class StandardWebhookTarget:
    """A receiver's own HTTPS endpoint, signed as Standard Webhooks (``webhook-*`` headers).

    The event is the ``notification-event`` schema: ``wholeimage.job.<verdict>`` with a
    ``job-result`` as data, or ``wholeimage.jobs.digest`` with every result (machine data is
    never cut to fit; ``digest_limit`` keeps an event near the spec's 20 KB).
    """

    format = "standard"
    rate = RateLimit(per_second=None, per_minute=None)
    digest_limit = 25

    def render(
        self, results: Sequence[JobResult], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """The signed event (see ``Target.render``); ValueError without a ``whsec_`` secret."""
        key = _signing_key(channel)
        if not results:
            raise ValueError("nothing to render: results is empty")
        if len(results) == 1:
            only = results[0]
            event_id = only.key
            event = {
                "type": _EVENT_TYPES[only.status],
                "timestamp": _iso(only.ended_at),
                "data": only.to_json(),
            }
        else:
            ordered = _ordered(results)
            event_id = digest_id(results)
            counts = {
                status: sum(1 for r in results if r.status == status) for status in _EVENT_TYPES
            }
            event = {
                "type": DIGEST_EVENT_TYPE,
                "timestamp": _iso(_latest(results)),
                "data": {"counts": counts, "results": [r.to_json() for r in ordered]},
            }
        body = _json_bytes(event)
        # Seconds of this attempt; the id stays the same across retries so receivers de-duplicate.
        timestamp = str(int(_utc(now).timestamp()))
        signed = f"{event_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        headers = {
            **_json_headers(),
            "webhook-id": event_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": f"v1,{signature}",
        }
        return OutgoingMessage(url=channel.url.get_secret_value(), headers=headers, body=body)

    def classify(self, response: httpx.Response) -> Verdict:
        """Any 2xx delivered; 410 stop; 429/502/503/504 (and 5xx, 408, 425) retry; else permanent."""
        if response.status_code == 410:
            return Verdict(
                "permanent",
                detail=_describe(
                    response, "410 Gone: the receiver asks us to stop; disable this endpoint"
                ),
            )
        return _by_status(response)


# --- the registry --------------------------------------------------------------------------------

_ALL_TARGETS: tuple[Target, ...] = (
    SlackTarget(),
    TeamsTarget(),
    DiscordTarget(),
    GoogleChatTarget(),
    MattermostTarget(),
    RocketChatTarget(),
    FeishuTarget(),
    DingTalkTarget(),
    WeComTarget(),
    StandardWebhookTarget(),
)
TARGETS: dict[str, Target] = {target.format: target for target in _ALL_TARGETS}


def target_for(format: str) -> Target:
    """The target serving ``format``.

    Raises:
        ValueError: ``format`` is not one of ``TARGETS``; the message names the allowed ones.
    """
    target = TARGETS.get(format)
    if target is None:
        allowed = ", ".join(sorted(TARGETS))
        raise ValueError(f"unknown notification format {format!r}; the formats are {allowed}")
    return target


def redact_url(url: str) -> str:
    """A loggable stand-in for a webhook URL: ``scheme://host/first-segment/…#<sha256[:8]>``.

    The host and first path segment say which service it is; the fingerprint tells two URLs
    apart in logs. Tokens (path, query, user info) never appear, and neither does a first
    segment that looks like a token rather than a word such as ``services`` or ``hooks``.
    """
    fingerprint = hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return f"…#{fingerprint}"
    if not parts.scheme or not host:
        return f"…#{fingerprint}"
    segments = [segment for segment in parts.path.split("/") if segment]
    first = segments[0] if segments else ""
    if first and not _plain_segment(first):
        first = "…"
    shown = f"{parts.scheme}://{host}"
    if first:
        shown += f"/{first}"
    if len(segments) > 1 or parts.query or parts.fragment:
        shown += "/…"
    return f"{shown}#{fingerprint}"


def _plain_segment(segment: str) -> bool:
    return (
        len(segment) <= 16
        and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", segment) is not None
        and sum(character.isdigit() for character in segment) <= 2
    )
