"""DingTalk custom robots: markdown, signed in the query when the channel has a secret.

DingTalk answers HTTP 200 when it refuses a message: only an ``errcode`` of 0 is a delivery.
A robot with a keyword rule refuses messages without the keyword, so title and text carry it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from typing import Any

import httpx

from wholeimage.channels.base import Delivery, OutgoingMessage, RateLimit
from wholeimage.channels.classify import KnownCode, by_code
from wholeimage.channels.escape import defang
from wholeimage.channels.render import (
    DEFANG_MARKUP,
    ChatTarget,
    json_text_size,
    keyworded,
    merge_query,
)
from wholeimage.channels.text import (
    CONSOLE_LABEL,
    NOTE_RESERVE,
    clip,
    digest_title,
    facts,
    fit,
    footer,
    omitted,
    reason,
    summary,
    title,
    utc,
    utf8_size,
)
from wholeimage.results import Channel, JobResult

# Throttled robots are blocked for 10 minutes, so an earlier retry only extends the block.
_THROTTLED = KnownCode("retry", "throttled: over 20 messages a minute", 600.0)
_CODES: dict[int, KnownCode] = {
    310000: KnownCode(
        "permanent",
        "security check failed: keyword missing, wrong signature, clock over an hour off, or IP not allowed",
    ),
    410100: _THROTTLED,
    130101: _THROTTLED,
    -1: KnownCode("retry", "system busy"),
}


def _sign(timestamp: str, secret: str) -> str:
    """DingTalk's signature: HMAC-SHA256 keyed with the secret over ``"{timestamp}\\n{secret}"``.

    Args:
        timestamp: Unix milliseconds, as sent.
        secret: The robot's ``SEC…`` secret.
    """
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class DingTalkTarget(ChatTarget):
    """DingTalk custom robot: markdown, signed in the query when the channel has a secret."""

    format = "dingtalk"
    rate = RateLimit(per_second=None, per_minute=20.0)
    digest_limit = 100
    _markup = DEFANG_MARKUP
    # The reference gives no markdown size limit [unconfirmed]; stay well below Feishu's 20 KB.
    _text_bytes = 15_000

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        # The keyword is never escaped: the robot looks for it exactly as configured.
        lines = [f"### {keyworded(channel, defang(title(result)))}", ""]
        lines += [f"- **{fact.label}:** {markup.value(fact)}" for fact in facts(result)]
        fail_reason = reason(result)
        if fail_reason:
            lines.append(f"- **Reason:** {defang(fail_reason)}")
        if result.console_url:
            lines.append(f"- [{CONSOLE_LABEL}]({result.console_url})")
        lines += ["", f"> {defang(footer(result))}"]
        # The title is only the preview; DingTalk shows the text, so the text repeats it.
        return _markdown(keyworded(channel, summary(result)), "\n".join(lines))

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        heading = keyworded(channel, digest_title(results))
        lines = [f"- {self._markup.line(result)}" for result in results]
        budget = self._text_bytes - utf8_size(heading) - NOTE_RESERVE
        listed, left_out = fit(lines, budget, lambda line: json_text_size(line) + 1)
        text = f"### {heading}\n\n" + "\n".join(listed)
        if left_out:
            text += f"\n\n> {omitted(left_out)}"
        return _markdown(heading, text)

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        if channel.secret is not None:
            timestamp = str(int(utc(now).timestamp() * 1000))
            sign = _sign(timestamp, channel.secret.get_secret_value())
            # The raw base64 goes in: httpx encodes it once (a pre-quoted value would be %252B).
            url = merge_query(url, {"timestamp": timestamp, "sign": sign})
        return super()._message(url, payload, channel, now)

    def classify(self, response: httpx.Response) -> Delivery:
        """Delivered only when ``errcode`` is 0: DingTalk refuses with HTTP 200."""
        return by_code(
            response,
            service="DingTalk",
            code_field="errcode",
            message_field="errmsg",
            codes=_CODES,
        )


def _markdown(heading: str, text: str) -> dict[str, Any]:
    return {
        "msgtype": "markdown",
        # The title is only the preview in notifications: plain text, never rendered.
        "markdown": {"title": clip(heading, 100), "text": text},
        "at": {"isAtAll": False},
    }
