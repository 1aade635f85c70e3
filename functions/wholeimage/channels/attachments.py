"""Slack-style ``attachments`` without Block Kit: the payload Mattermost and Rocket.Chat share.

Each service sets its markup dialect and how many characters a digest may use.
"""

from __future__ import annotations

from typing import Any

from wholeimage.channels.render import ChatTarget, Markup
from wholeimage.channels.text import (
    NOTE_RESERVE,
    digest_title,
    facts,
    fit,
    footer,
    look,
    omitted,
    reason,
    summary,
    title,
    worst,
)
from wholeimage.results import Channel, JobResult


class AttachmentTarget(ChatTarget):
    """Slack-style ``attachments`` without Block Kit (Mattermost, Rocket.Chat)."""

    _markup: Markup
    _digest_chars: int  # characters of attachment text a digest may use

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        attachment: dict[str, Any] = {
            "fallback": markup.escape(summary(result)),
            "color": look(result.status).colour,
            "title": markup.escape(title(result)),
            "fields": [
                {"short": True, "title": fact.label, "value": markup.value(fact)}
                for fact in facts(result)
            ],
            "footer": markup.escape(footer(result)),
        }
        if result.console_url:
            attachment["title_link"] = result.console_url
        fail_reason = reason(result)
        if fail_reason:
            attachment["text"] = f"{markup.bold('Reason:')} {markup.escape(fail_reason)}"
        return {"text": markup.escape(summary(result)), "attachments": [attachment]}

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        heading = self._markup.escape(digest_title(results))
        lines = [self._markup.line(result) for result in results]
        listed, left_out = fit(lines, self._digest_chars - len(heading) - NOTE_RESERVE)
        text = "\n".join(listed + ([omitted(left_out)] if left_out else []))
        attachment = {"fallback": heading, "color": worst(results).colour, "text": text}
        return {"text": heading, "attachments": [attachment]}
