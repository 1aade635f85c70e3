"""Discord webhooks: one coloured embed, mentions disabled, ``wait=true`` to see failures.

Discord's limits are dynamic: a 429 says how long to wait in its JSON ``retry_after`` (else the
``Retry-After`` or ``X-RateLimit-Reset-After`` header), and a webhook that answered 404 must not
be used again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from wholeimage.channels.base import Delivery, OutgoingMessage, RateLimit
from wholeimage.channels.classify import by_status, describe, json_of, seconds
from wholeimage.channels.render import (
    COMMONMARK_MARKUP,
    ChatTarget,
    json_bytes,
    json_headers,
    merge_query,
)
from wholeimage.channels.text import (
    NOTE_RESERVE,
    clip,
    digest_title,
    facts,
    fit,
    footer,
    iso,
    latest,
    look,
    omitted,
    reason,
    title,
    worst,
)
from wholeimage.httputil import retry_after_seconds
from wholeimage.results import Channel, JobResult, Verdict

# Discord asks for this User-Agent shape; Cloudflare may block requests without a valid one.
_USER_AGENT = "DiscordBot (https://wholeimage.example, 0.1)"
_COLOUR: dict[Verdict, int] = {
    "FAIL": 15158332,
    "TIMED_OUT": 15965202,
    "UNCONFIRMED": 15965202,
    "SUCCESS": 3066993,
}
_PAYLOAD_CODES = {
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


class DiscordTarget(ChatTarget):
    """Discord webhook: one coloured embed; mentions disabled; ``wait=true`` to see failures."""

    format = "discord"
    # Discord's limits are dynamic (read from headers); 1/s is a conservative client-side pace.
    rate = RateLimit(per_second=1.0, per_minute=None)
    # 4096 description characters hold about 50 lines of 48-character names; 40 leaves room.
    digest_limit = 40
    _markup = COMMONMARK_MARKUP

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        embed: dict[str, Any] = {
            "title": clip(markup.escape(title(result)), _EMBED_TITLE),
            "color": _COLOUR[look(result.status).verdict],
            "fields": [
                {
                    "name": fact.label,
                    "value": clip(markup.value(fact), _EMBED_FIELD_VALUE),
                    "inline": True,
                }
                for fact in facts(result)
            ],
            "timestamp": iso(result.ended_at),
            # Footers are not markdown: plain text.
            "footer": {"text": clip(footer(result), _EMBED_FOOTER)},
        }
        if result.console_url:
            embed["url"] = result.console_url
        fail_reason = reason(result)
        if fail_reason:
            room = min(_EMBED_DESCRIPTION, _EMBED_TOTAL - _embed_size(embed))
            embed["description"] = clip(f"**Reason:** {markup.escape(fail_reason)}", room)
        return _message_payload(embed)

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        heading = clip(self._markup.escape(digest_title(results)), _EMBED_TITLE)
        lines = [self._markup.line(result) for result in results]
        listed, left_out = fit(lines, _EMBED_DESCRIPTION - NOTE_RESERVE)
        description = "\n".join(listed + ([omitted(left_out)] if left_out else []))
        embed = {
            "title": heading,
            "color": _COLOUR[worst(results).verdict],
            "description": description,
            "timestamp": iso(latest(results)),
        }
        return _message_payload(embed)

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        # Without wait=true Discord answers 204 even for a message it did not save.
        return OutgoingMessage(
            url=merge_query(url, {"wait": "true"}),
            headers=json_headers(_USER_AGENT),
            body=json_bytes(payload),
        )

    def classify(self, response: httpx.Response) -> Delivery:
        """200/204 delivered; 429 retry (JSON ``retry_after`` or headers); 404/10015 permanent."""
        status = response.status_code
        if status in (200, 204):
            return Delivery("delivered", detail=f"HTTP {status}")
        body = json_of(response)
        body = body if isinstance(body, dict) else {}
        code = body.get("code")
        if status == 429:
            scope = "globally " if body.get("global") else ""
            detail = describe(response, f"rate limited {scope}by Discord")
            return Delivery("retry", _wait_asked(response, body), detail)
        if status == 404 or code == 10015:
            # Discord: a webhook that answered 404 must not be used again.
            return Delivery(
                "permanent", detail=describe(response, "unknown webhook (10015); disable it")
            )
        if code in _PAYLOAD_CODES:
            meaning = _PAYLOAD_CODES[code]
            return Delivery(
                "permanent", detail=describe(response, f"Discord code {code}: {meaning}")
            )
        return by_status(response)


def _wait_asked(response: httpx.Response, body: dict[str, Any]) -> float | None:
    """Seconds a 429 asks for: the JSON ``retry_after``, else ``Retry-After``, else the reset."""
    wait = seconds(body.get("retry_after"))
    if wait is None:
        wait = retry_after_seconds(response) or seconds(
            response.headers.get("X-RateLimit-Reset-After")
        )
    return wait


def _message_payload(embed: dict[str, Any]) -> dict[str, Any]:
    # parse: [] means no @everyone, role or user ping, whatever the text says.
    return {"allowed_mentions": {"parse": []}, "embeds": [embed]}
