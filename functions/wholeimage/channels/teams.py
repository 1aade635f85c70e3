"""Microsoft Teams through a Workflows (Power Automate) webhook: a message with an Adaptive Card.

Office 365 connector URLs were retired; they are refused here and in settings by the one rule
in ``urls.is_office_connector``. Workflows answers 202 before it renders the card.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx

from wholeimage.channels.base import Delivery, OutgoingMessage, RateLimit
from wholeimage.channels.classify import by_status
from wholeimage.channels.escape import commonmark_escape
from wholeimage.channels.render import ChatTarget, Markup, json_size
from wholeimage.channels.text import (
    CONSOLE_LABEL,
    NOTE_RESERVE,
    digest_title,
    facts,
    fit,
    footer,
    look,
    omitted,
    reason,
    title,
    utf8_size,
    worst,
)
from wholeimage.channels.urls import OFFICE_CONNECTOR_RETIRED, is_office_connector, redact_url
from wholeimage.results import Channel, JobResult, Verdict

# Adaptive Cards' markdown has no code spans, and FactSet titles are already bold.
TEAMS_MARKUP = Markup(commonmark_escape, lambda text: text, commonmark_escape)
# The Container style of each verdict's banner.
_BANNER_STYLE: dict[Verdict, str] = {
    "FAIL": "attention",
    "TIMED_OUT": "warning",
    "UNCONFIRMED": "warning",
    "SUCCESS": "good",
}


class TeamsTarget(ChatTarget):
    """Teams through a Workflows (Power Automate) webhook: a message with an Adaptive Card."""

    format = "teams"
    rate = RateLimit(per_second=1.0, per_minute=None)
    digest_limit = 120
    _markup = TEAMS_MARKUP
    # Teams' limit is "about 28 KB" for the whole activity: keep 2 KB in hand.
    _max_bytes = 26_000

    def render(
        self, results: Sequence[JobResult], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """As ``Target.render``; a retired Office 365 connector URL is refused (ValueError)."""
        url = channel.url.get_secret_value()
        if is_office_connector(url):
            raise ValueError(f"this Teams URL ({redact_url(url)}) is {OFFICE_CONNECTOR_RETIRED}")
        return super().render(results, channel, now)

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        style = _BANNER_STYLE[look(result.status).verdict]
        body: list[dict[str, Any]] = [
            _banner(style, markup.escape(title(result))),
            {
                "type": "FactSet",
                "facts": [
                    {"title": fact.label, "value": markup.value(fact)} for fact in facts(result)
                ],
            },
        ]
        fail_reason = reason(result)
        if fail_reason:
            # TextRun text is never markdown: the reason is shown exactly as the cloud wrote it.
            body.append(
                {
                    "type": "RichTextBlock",
                    "inlines": [
                        {"type": "TextRun", "text": "Reason: ", "weight": "Bolder"},
                        {"type": "TextRun", "text": fail_reason},
                    ],
                }
            )
        body.append(_note(markup.escape(footer(result))))
        actions = []
        if result.console_url:
            actions.append(
                {"type": "Action.OpenUrl", "title": CONSOLE_LABEL, "url": result.console_url}
            )
        return _message(body, actions)

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        markup = self._markup
        # One fact per job: the job on the left, its verdict on the right.
        listed_facts = [
            dict(zip(("title", "value"), markup.line_parts(r), strict=True)) for r in results
        ]
        heading = digest_title(results)
        overhead = json_size(_message([_banner("attention", heading)], []))
        encoded = [json.dumps(fact, ensure_ascii=False) for fact in listed_facts]
        listed, left_out = fit(encoded, self._max_bytes - overhead - 300 - NOTE_RESERVE, utf8_size)
        body = [
            _banner(_BANNER_STYLE[worst(results).verdict], markup.escape(heading)),
            {"type": "FactSet", "facts": listed_facts[: len(listed)]},
        ]
        if left_out:
            body.append(_note(omitted(left_out)))
        return _message(body, [])

    def classify(self, response: httpx.Response) -> Delivery:
        """200 or 202 is delivered, though a 202 only says the flow was triggered."""
        if response.status_code == 202:
            # Workflows answers before it renders: a card that fails shows only in the run history.
            return Delivery(
                "delivered", detail="HTTP 202: the flow accepted it; posting is asynchronous"
            )
        return by_status(response)


def _banner(style: str, text: str) -> dict[str, Any]:
    return {
        "type": "Container",
        "style": style,
        "bleed": True,
        "items": [
            {"type": "TextBlock", "text": text, "weight": "Bolder", "size": "Medium", "wrap": True}
        ],
    }


def _note(text: str) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "isSubtle": True, "size": "Small", "wrap": True}


def _message(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
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
