"""What the chat targets share: markup dialects, the JSON on the wire, and ``ChatTarget``.

``ChatTarget`` is the base of every chat service: one rich message for one result, one digest
for several (see ``text``), POSTed as compact UTF-8 JSON, answers read by ``by_status`` unless
the service says more. A service module fills in ``_single`` and ``_digest``, and overrides
``_message`` (query parameters, signatures) or ``classify`` where its service differs.

httpx's ``params=`` drops a URL's own query, so query parameters are merged with
``merge_query`` (``httpx.URL.copy_merge_params``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from wholeimage.channels.base import Delivery, OutgoingMessage, RateLimit
from wholeimage.channels.classify import by_status
from wholeimage.channels.escape import code_span, commonmark_escape, defang
from wholeimage.channels.text import (
    LINE_DETAIL_CHARS,
    LINE_NAME_CHARS,
    Fact,
    clip,
    line_detail,
    look,
    one_line,
    ordered,
)
from wholeimage.results import Channel, JobResult

_USER_AGENT = "wholeimage-notify/0.1"


@dataclass(frozen=True)
class Markup:
    """A service's markup dialect: how it escapes text, writes bold and writes an identifier."""

    escape: Callable[[str], str]
    bold: Callable[[str], str]  # wraps text that is already escaped
    code: Callable[[str], str]  # raw text to escaped monospace

    def value(self, fact: Fact) -> str:
        """A fact's value, escaped, monospace when it is an identifier."""
        return self.code(fact.value) if fact.code else self.escape(fact.value)

    def line_parts(self, result: JobResult) -> tuple[str, str]:
        """A digest line's job (``❌ **name**``) and its verdict (``failed · `IMS.0001```)."""
        shown = look(result.status)
        name = self.bold(self.escape(clip(one_line(result.image_name), LINE_NAME_CHARS)))
        verdict = shown.word
        detail = line_detail(result)
        if detail is not None:
            value = clip(one_line(detail.value), LINE_DETAIL_CHARS)
            verdict += f" · {self.value(Fact(detail.label, value, detail.code))}"
        return f"{shown.emoji} {name}", verdict

    def line(self, result: JobResult) -> str:
        """One digest line: ``❌ **name** failed · `IMS.0001```."""
        return " ".join(self.line_parts(result))


def double_star(text: str) -> str:
    """``**text**``: bold in CommonMark and most chat markdown."""
    return f"**{text}**"


def single_star(text: str) -> str:
    """``*text*``: bold in Slack mrkdwn and Rocket.Chat."""
    return f"*{text}*"


# The two dialects several services share; the others live with their service.
COMMONMARK_MARKUP = Markup(commonmark_escape, double_star, code_span)
DEFANG_MARKUP = Markup(defang, double_star, defang)


def json_bytes(payload: Any) -> bytes:
    """Compact UTF-8 JSON: CJK text stays 3 bytes a character instead of 6 as ``\\u`` escapes."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_size(value: Any) -> int:
    """Bytes ``value`` takes as ``json_bytes``."""
    return len(json_bytes(value))


def json_text_size(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string (escapes included, quotes not)."""
    return json_size(text) - 2


def json_headers(user_agent: str = _USER_AGENT) -> dict[str, str]:
    """The headers of a JSON POST."""
    return {"Content-Type": "application/json; charset=utf-8", "User-Agent": user_agent}


def merge_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its own query."""
    # Never params=: httpx 0.28 replaces the URL's own query (key, token, access_token) with it.
    return str(httpx.URL(url).copy_merge_params(params))


def keyworded(channel: Channel, text: str) -> str:
    """``text`` after the channel's keyword, for robots that only accept messages containing it."""
    return f"{channel.keyword} {text}" if channel.keyword else text


class ChatTarget:
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
            payload = self._digest(ordered(results), channel)
        return self._message(channel.url.get_secret_value(), payload, channel, now)

    def classify(self, response: httpx.Response) -> Delivery:
        """The generic reading: 2xx delivered; 408/425/429/5xx retry; anything else permanent."""
        return by_status(response)

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        """The payload of one result's message."""
        raise NotImplementedError

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        """The payload of a digest of ``results``, already in digest order."""
        raise NotImplementedError

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """The POST of ``payload`` to ``url``."""
        return OutgoingMessage(url=url, headers=json_headers(), body=json_bytes(payload))
