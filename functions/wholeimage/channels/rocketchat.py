"""Rocket.Chat incoming webhooks: Slack-style attachments, answered with ``{"success": …}``."""

from __future__ import annotations

import httpx

from wholeimage.channels.attachments import AttachmentTarget
from wholeimage.channels.base import Delivery, RateLimit
from wholeimage.channels.classify import by_status, describe, json_of
from wholeimage.channels.escape import code_span, defang
from wholeimage.channels.render import Markup, single_star

# Rocket.Chat documents no escape: look-alikes, with real code spans for identifiers.
ROCKETCHAT_MARKUP = Markup(defang, single_star, code_span)


class RocketChatTarget(AttachmentTarget):
    """Rocket.Chat incoming webhook: Slack-style attachments."""

    format = "rocketchat"
    # The API rate limiter is on by default: 10 calls a minute per route, /hooks included.
    rate = RateLimit(per_second=None, per_minute=10.0)
    digest_limit = 50
    _markup = ROCKETCHAT_MARKUP
    _digest_chars = 5000  # the default Message_MaxAllowedSize

    def classify(self, response: httpx.Response) -> Delivery:
        """Delivered only on 2xx ``{"success": true}``; ``success: false`` is permanent."""
        body = json_of(response)
        success = body.get("success") if isinstance(body, dict) else None
        if 200 <= response.status_code < 300:
            if success is True:
                return Delivery("delivered", detail=f"HTTP {response.status_code} success")
            return Delivery("permanent", detail=describe(response))
        return by_status(response)
