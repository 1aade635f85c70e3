"""Feishu / Lark custom bots: an interactive card, signed when the channel has a secret.

Feishu answers HTTP 200 when it refuses a message: only a JSON ``code`` of 0 is a delivery.
A bot with a keyword rule refuses messages without the keyword, so the header carries it.
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
    json_size,
    json_text_size,
    keyworded,
)
from wholeimage.channels.text import (
    CONSOLE_LABEL,
    NOTE_RESERVE,
    clip,
    digest_title,
    facts,
    fit,
    footer,
    look,
    omitted,
    reason,
    title,
    utc,
    worst,
)
from wholeimage.results import Channel, JobResult, Verdict

# The card header template of each verdict.
_TEMPLATE: dict[Verdict, str] = {
    "FAIL": "red",
    "TIMED_OUT": "orange",
    "UNCONFIRMED": "orange",
    "SUCCESS": "green",
}
_CODES: dict[int, KnownCode] = {
    9499: KnownCode("permanent", "bad request: malformed, or over 20 KB"),
    19021: KnownCode(
        "permanent",
        "signature mismatch or timestamp over an hour off: check the secret and the clock",
    ),
    19022: KnownCode("permanent", "this IP address is not allowed"),
    19024: KnownCode("permanent", "the configured keyword is missing: set the channel's keyword"),
    11232: KnownCode("retry", "throttled"),
}


def _sign(timestamp: str, secret: str) -> str:
    """Feishu's signature: HMAC-SHA256 keyed with ``"{timestamp}\\n{secret}"`` over nothing, base64.

    Args:
        timestamp: Unix seconds, as sent.
        secret: The bot's signing secret.
    """
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


class FeishuTarget(ChatTarget):
    """Feishu / Lark custom bot: an interactive card, signed when the channel has a secret."""

    format = "feishu"
    rate = RateLimit(per_second=5.0, per_minute=100.0)
    digest_limit = 100
    _markup = DEFANG_MARKUP
    _max_bytes = 20_000  # the request body must stay under 20 KB

    def _single(self, result: JobResult, channel: Channel) -> dict[str, Any]:
        markup = self._markup
        fields = [
            {"is_short": True, "text": _lark_md(f"**{fact.label}**\n{markup.value(fact)}")}
            for fact in facts(result)
        ]
        elements: list[dict[str, Any]] = [{"tag": "div", "fields": fields}]
        fail_reason = reason(result)
        if fail_reason:
            elements.append({"tag": "div", "text": _lark_md(f"**Reason**\n{defang(fail_reason)}")})
        if result.console_url:
            button = {
                "tag": "button",
                "text": {"tag": "plain_text", "content": CONSOLE_LABEL},
                "type": "primary",
                "url": result.console_url,
            }
            elements.append({"tag": "action", "actions": [button]})
        elements.append(
            {"tag": "note", "elements": [{"tag": "plain_text", "content": footer(result)}]}
        )
        header = keyworded(channel, title(result))
        return _card(_TEMPLATE[look(result.status).verdict], header, elements)

    def _digest(self, results: list[JobResult], channel: Channel) -> dict[str, Any]:
        header = keyworded(channel, digest_title(results))
        lines = [self._markup.line(result) for result in results]
        overhead = json_size(_card("red", header, []))
        budget = self._max_bytes - overhead - 500 - NOTE_RESERVE
        # Inside JSON the "\n" separator is two bytes: count it twice.
        listed, left_out = fit(lines, budget, lambda line: json_text_size(line) + 1)
        elements: list[dict[str, Any]] = [{"tag": "div", "text": _lark_md("\n".join(listed))}]
        if left_out:
            elements.append(
                {"tag": "note", "elements": [{"tag": "plain_text", "content": omitted(left_out)}]}
            )
        return _card(_TEMPLATE[worst(results).verdict], header, elements)

    def _message(
        self, url: str, payload: dict[str, Any], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        if channel.secret is not None:
            # Feishu's sign covers only the timestamp (not the body) and goes in the JSON body.
            timestamp = str(int(utc(now).timestamp()))
            sign = _sign(timestamp, channel.secret.get_secret_value())
            payload = {"timestamp": timestamp, "sign": sign, **payload}
        return super()._message(url, payload, channel, now)

    def classify(self, response: httpx.Response) -> Delivery:
        """Delivered only when the JSON ``code`` is 0: Feishu refuses with HTTP 200."""
        return by_code(
            response, service="Feishu", code_field="code", message_field="msg", codes=_CODES
        )


def _lark_md(content: str) -> dict[str, str]:
    return {"tag": "lark_md", "content": content}


def _card(template: str, heading: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            # plain_text: the title is never interpreted, and it carries the keyword.
            "header": {
                "template": template,
                "title": {"tag": "plain_text", "content": clip(heading, 200)},
            },
            "elements": elements,
        },
    }
