"""Slack incoming webhooks: Block Kit inside a coloured legacy attachment, plus ``text``.

Slack answers ``ok`` in plain text, or an error code in plain text (``no_service``,
``channel_is_archived``, …): the body decides, then the status.
"""

from __future__ import annotations

from typing import Any

import httpx

from wholeimage.channels.base import Delivery, RateLimit
from wholeimage.channels.classify import KnownCode, by_status, describe, response_text
from wholeimage.channels.escape import code_span, slack_escape
from wholeimage.channels.render import ChatTarget, Markup, single_star
from wholeimage.channels.text import (
    CONSOLE_LABEL,
    clip,
    digest_title,
    facts,
    footer,
    look,
    omitted,
    pack,
    reason,
    summary,
    title,
    worst,
)
from wholeimage.httputil import retry_after_seconds
from wholeimage.results import Channel, JobResult

SLACK_MARKUP = Markup(slack_escape, single_star, lambda text: code_span(slack_escape(text)))

# Slack's plain-text error codes: every one but rollup_error is a payload or configuration fault.
_SLACK_CODES: dict[str, KnownCode] = {
    "invalid_payload": KnownCode("permanent", "the payload is not valid"),
    "user_not_found": KnownCode("permanent", "user not found"),
    "too_many_attachments": KnownCode("permanent", "more than 100 attachments"),
    "no_text": KnownCode("permanent", "the message is empty"),
    "missing_text_or_fallback_or_attachments": KnownCode("permanent", "the message is empty"),
    "action_prohibited": KnownCode("permanent", "a workspace restriction prohibits posting"),
    "posting_to_general_channel_denied": KnownCode(
        "permanent", "posting to #general is not allowed"
    ),
    "invalid_token": KnownCode("permanent", "the webhook token is invalid"),
    "channel_not_found": KnownCode(
        "permanent", "the channel no longer exists; disable this webhook"
    ),
    "no_service": KnownCode("permanent", "the webhook is disabled, removed or invalid; disable it"),
    "no_service_id": KnownCode("permanent", "the webhook URL is malformed"),
    "no_team": KnownCode("permanent", "the webhook URL is malformed"),
    "team_disabled": KnownCode("permanent", "the workspace is disabled"),
    "channel_is_archived": KnownCode("permanent", "the channel is archived; disable this webhook"),
    "rollup_error": KnownCode("retry", "a transient Slack error"),
}


class SlackTarget(ChatTarget):
    """Slack incoming webhook: Block Kit inside a coloured legacy attachment, plus ``text``."""

    format = "slack"
    rate = RateLimit(per_second=1.0, per_minute=None)
    # 48 sections of 3000 characters hold far more; 200 keeps a digest readable.
    digest_limit = 200
    _markup = SLACK_MARKUP

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        fields = [
            {"type": "mrkdwn", "text": f"*{fact.label}*\n{markup.value(fact)}"}
            for fact in facts(result)
        ]
        blocks: list[dict[str, Any]] = [
            _header(title(result)),
            {"type": "section", "fields": fields[:10]},
        ]
        fail_reason = reason(result)
        if fail_reason:
            blocks.append(_section(f"*Reason*\n{slack_escape(fail_reason)}"))
        if result.console_url:
            blocks.append(_section(f"<{slack_escape(result.console_url)}|{CONSOLE_LABEL}>"))
        blocks.append(_context(slack_escape(footer(result))))
        return {
            "text": slack_escape(summary(result)),
            "attachments": [{"color": look(result.status).colour, "blocks": blocks}],
        }

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        heading = digest_title(results)
        lines = [self._markup.line(result) for result in results]
        # 50 blocks at most: a header, up to 48 sections and a context for the omission note.
        chunks, left_out = pack(lines, chunk_size=3000, chunks=48)
        blocks = [_header(heading)] + [_section("\n".join(chunk)) for chunk in chunks]
        if left_out:
            blocks.append(_context(omitted(left_out)))
        return {
            "text": slack_escape(heading),
            "attachments": [{"color": worst(results).colour, "blocks": blocks}],
        }

    def classify(self, response: httpx.Response) -> Delivery:
        """Delivered only on 200 ``ok``; Slack's body codes decide the rest, then the status."""
        body = response_text(response).strip()
        if response.status_code == 200 and body == "ok":
            return Delivery("delivered", detail="HTTP 200 ok")
        if response.status_code == 429:
            return Delivery(
                "retry", retry_after_seconds(response), describe(response, "rate limited")
            )
        known = _SLACK_CODES.get(body)
        if known is not None:
            detail = describe(response, f"Slack says {body}: {known.meaning}")
            return Delivery(known.outcome, retry_after_seconds(response), detail)
        if response.status_code == 200:
            return Delivery("permanent", detail=describe(response, "an answer other than ok"))
        return by_status(response)


def _header(text: str) -> dict[str, Any]:
    # plain_text is never parsed for mentions or links, so it needs no escaping.
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": clip(text, 150), "emoji": True},
    }


def _section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(mrkdwn, 3000)}}


def _context(mrkdwn: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(mrkdwn, 3000)}]}
