"""Mattermost incoming webhooks: Slack-style attachments (Block Kit is not supported).

Mattermost answers ``ok`` in plain text; any other 200 answer is not a delivery.
"""

from __future__ import annotations

import httpx

from wholeimage.channels.attachments import AttachmentTarget
from wholeimage.channels.base import Delivery, RateLimit
from wholeimage.channels.classify import by_status, describe, response_text
from wholeimage.channels.render import COMMONMARK_MARKUP


class MattermostTarget(AttachmentTarget):
    """Mattermost incoming webhook: Slack-style attachments (Block Kit is not supported)."""

    format = "mattermost"
    # Only when the admin turns rate limiting on (default off): 10 per second.
    rate = RateLimit(per_second=10.0, per_minute=None)
    digest_limit = 100
    _markup = COMMONMARK_MARKUP
    _digest_chars = 16_000  # posts hold 16383 characters

    def classify(self, response: httpx.Response) -> Delivery:
        """Delivered only on 200 ``ok``; otherwise the generic status reading."""
        if response.status_code == 200:
            if response_text(response).strip() == "ok":
                return Delivery("delivered", detail="HTTP 200 ok")
            return Delivery("permanent", detail=describe(response, "an answer other than ok"))
        return by_status(response)
