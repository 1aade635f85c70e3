"""Google Chat incoming webhooks: a cardsV2 card, each job's messages in the job's own thread.

Card text is a small HTML subset; header titles and the fallback ``text`` are plain text.
Errors come as Google's JSON error, whose ``status`` names the problem.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

import httpx

from wholeimage.channels.base import Delivery, OutgoingMessage, RateLimit
from wholeimage.channels.classify import by_status, describe, json_of
from wholeimage.channels.escape import defang, html_escape
from wholeimage.channels.render import (
    ChatTarget,
    Markup,
    json_bytes,
    json_headers,
    json_size,
    json_text_size,
    merge_query,
)
from wholeimage.channels.text import (
    CONSOLE_LABEL,
    NOTE_RESERVE,
    clip,
    digest_title,
    facts,
    footer,
    latest,
    look,
    omitted,
    pack,
    reason,
    source,
    summary,
    title,
)
from wholeimage.results import Channel, JobResult

GOOGLE_MARKUP = Markup(html_escape, lambda text: f"<b>{text}</b>", html_escape)
_THREAD_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _thread_key(request_id: str) -> str:
    # One thread per job: every later message about the same request lands under it.
    if _THREAD_SAFE.fullmatch(request_id):
        return f"wholeimage-{request_id}"
    return f"wholeimage-{hashlib.sha256(request_id.encode('utf-8')).hexdigest()[:32]}"


class GoogleChatTarget(ChatTarget):
    """Google Chat incoming webhook: a cardsV2 card in the job's own thread."""

    format = "googlechat"
    # The per-space write quota is shared by every app and webhook in the space.
    rate = RateLimit(per_second=1.0, per_minute=None)
    digest_limit = 150
    _markup = GOOGLE_MARKUP
    _max_bytes = 32_000  # a message, text and cards, is at most 32,000 bytes
    _paragraph_bytes = 4000

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        shown = look(result.status)
        markup = self._markup
        # Cards have no accent colour: the verdict is coloured text.
        verdict = f'<font color="{shown.colour}"><b>{shown.emoji} {shown.word.upper()}</b></font>'
        widgets: list[dict[str, Any]] = [{"textParagraph": {"text": verdict}}]
        widgets += [
            {"decoratedText": {"topLabel": fact.label, "text": markup.value(fact)}}
            for fact in facts(result)
        ]
        fail_reason = reason(result)
        if fail_reason:
            widgets.append(
                {"textParagraph": {"text": f"<b>Reason</b><br>{html_escape(fail_reason)}"}}
            )
        if result.console_url:
            button = {"text": CONSOLE_LABEL, "onClick": {"openLink": {"url": result.console_url}}}
            widgets.append({"buttonList": {"buttons": [button]}})
        widgets.append({"textParagraph": {"text": html_escape(footer(result))}})
        card = {
            # Header title and subtitle are plain text.
            "header": {
                "title": clip(title(result), 200),
                "subtitle": clip(source(result), 200),
            },
            "sections": [{"widgets": widgets}],
        }
        return {
            "text": defang(summary(result)),
            "thread": {"threadKey": _thread_key(result.request_id)},
            "cardsV2": [{"cardId": result.key, "card": card}],
        }

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        heading = digest_title(results)
        lines = [self._markup.line(result) for result in results]
        # Digests of one day share a thread, so a burst of completions stays together.
        payload: dict[str, Any] = {
            "text": defang(heading),
            "thread": {"threadKey": f"wholeimage-digest-{latest(results):%Y-%m-%d}"},
            "cardsV2": [
                {"cardId": "wholeimage-digest", "card": {"header": {"title": clip(heading, 200)}}}
            ],
        }
        budget = self._max_bytes - json_size(payload) - 1000 - NOTE_RESERVE
        chunks, left_out = pack(
            lines,
            chunk_size=self._paragraph_bytes,
            chunks=max(budget // self._paragraph_bytes, 1),
            size=lambda line: json_text_size(line) + 4,  # "<br>"
        )
        widgets = [{"textParagraph": {"text": "<br>".join(chunk)}} for chunk in chunks]
        if left_out:
            widgets.append({"textParagraph": {"text": html_escape(omitted(left_out))}})
        payload["cardsV2"][0]["card"]["sections"] = [{"widgets": widgets}]
        return payload

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        # Reply in the thread named by threadKey, or start it; the threadKey query is deprecated.
        option = {"messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"}
        return OutgoingMessage(
            url=merge_query(url, option), headers=json_headers(), body=json_bytes(payload)
        )

    def classify(self, response: httpx.Response) -> Delivery:
        """200 delivered; Google's JSON error names the status (429 and 5xx retry)."""
        body = json_of(response)
        error = body.get("error") if isinstance(body, dict) else None
        if not 200 <= response.status_code < 300 and isinstance(error, dict):
            said = f"{error.get('status', '')} {error.get('message', '')}".strip()
            return by_status(response, describe(response, said) if said else "")
        return by_status(response)
