"""WeCom (WeChat Work) group robots: markdown with ``<font color>``.

WeCom answers HTTP 200 when it refuses a message: only an ``errcode`` of 0 is a delivery.
"""

from __future__ import annotations

from typing import Any

import httpx

from wholeimage.channels.base import Delivery, RateLimit
from wholeimage.channels.classify import KnownCode, by_code
from wholeimage.channels.escape import defang
from wholeimage.channels.render import DEFANG_MARKUP, ChatTarget, keyworded
from wholeimage.channels.text import (
    CONSOLE_LABEL,
    NOTE_RESERVE,
    clip,
    clip_bytes,
    digest_title,
    facts,
    fit,
    footer,
    look,
    omitted,
    one_line,
    reason,
    utf8_size,
    worst,
)
from wholeimage.results import Channel, JobResult, Verdict

# The <font color> of each verdict: WeCom knows three named colours.
_FONT_COLOUR: dict[Verdict, str] = {
    "FAIL": "warning",
    "TIMED_OUT": "comment",
    "UNCONFIRMED": "comment",
    "SUCCESS": "info",
}
_CODES: dict[int, KnownCode] = {
    93000: KnownCode(
        "permanent", "invalid webhook URL: wrong key, or the robot was removed; disable it"
    ),
    45009: KnownCode("retry", "over the frequency limit (20 messages a minute)", 60.0),
    -1: KnownCode("retry", "system busy"),
}


class WeComTarget(ChatTarget):
    """WeCom (WeChat Work) group robot: markdown with ``<font color>``."""

    format = "wecom"
    rate = RateLimit(per_second=None, per_minute=20.0)
    digest_limit = 35
    _markup = DEFANG_MARKUP
    _content_bytes = 4096  # markdown.content is at most 4096 bytes of UTF-8

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        shown = look(result.status)
        colour = _FONT_COLOUR[shown.verdict]
        markup = self._markup
        name = defang(clip(one_line(result.image_name), 100))
        headline = f'**{shown.emoji} Image {name} <font color="{colour}">{shown.word}</font>**'
        lines = [keyworded(channel, headline)]
        lines += [f"> {fact.label}: {markup.value(fact)}" for fact in facts(result)]
        fail_reason = reason(result)
        if fail_reason:
            lines.append(f"> Reason: {defang(clip(fail_reason, 600))}")
        if result.console_url:
            lines.append(f"> [{CONSOLE_LABEL}]({result.console_url})")
        lines.append(f'<font color="comment">{defang(footer(result))}</font>')
        return _markdown(clip_bytes("\n".join(lines), self._content_bytes))

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        colour = _FONT_COLOUR[worst(results).verdict]
        heading = defang(digest_title(results))
        head = keyworded(channel, f'**<font color="{colour}">{heading}</font>**')
        lines = [self._markup.line(result) for result in results]
        budget = self._content_bytes - utf8_size(head) - NOTE_RESERVE
        listed, left_out = fit(lines, budget, utf8_size)
        if left_out:
            listed.append(f'<font color="comment">{omitted(left_out)}</font>')
        return _markdown("\n".join([head, *listed]))

    def classify(self, response: httpx.Response) -> Delivery:
        """Delivered only when ``errcode`` is 0: WeCom refuses with HTTP 200."""
        return by_code(
            response,
            service="WeCom",
            code_field="errcode",
            message_field="errmsg",
            codes=_CODES,
        )


def _markdown(content: str) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"content": content}}
