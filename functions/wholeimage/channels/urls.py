"""What a webhook URL says before anything is sent: its format, a retired Teams connector, a log stand-in.

Standard library only, like ``formats``: settings refuses at configuration time, with these same
functions, what the targets would refuse at send time.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from wholeimage.channels.formats import ChannelFormat

# Hosts that tell the format of a webhook URL given without a format.
_FORMAT_BY_HOST: dict[str, ChannelFormat] = {
    "hooks.slack.com": "slack",
    "discord.com": "discord",
    "discordapp.com": "discord",
    "chat.googleapis.com": "googlechat",
    "open.feishu.cn": "feishu",
    "open.larksuite.com": "feishu",
    "oapi.dingtalk.com": "dingtalk",
    "qyapi.weixin.qq.com": "wecom",
}
# Teams Workflows (Power Automate) webhooks live under these host suffixes.
_WORKFLOWS_HOST_SUFFIXES = (".logic.azure.com", ".powerplatform.com", ".logic.azure.us")

OFFICE_CONNECTOR_RETIRED = (
    "an Office 365 connector webhook, which Microsoft retired in 2026; in the Teams channel add "
    "a Workflows webhook (Workflows → 'Send webhook alerts to a channel', trigger access "
    "'Anyone') and use its URL instead"
)


def guess_format(url: str) -> ChannelFormat:
    """The format a webhook URL's host implies; ``standard`` when it implies none."""
    host = urlsplit(url).hostname or ""
    if host.endswith(_WORKFLOWS_HOST_SUFFIXES):
        return "teams"
    return _FORMAT_BY_HOST.get(host, "standard")


def is_office_connector(url: str) -> bool:
    """Is ``url`` a retired Office 365 connector webhook (``OFFICE_CONNECTOR_RETIRED``)?

    Both forms Microsoft handed out: ``https://<tenant>.webhook.office.com/webhookb2/…`` and the
    older ``https://outlook.office.com/webhook/…`` (or ``outlook.office365.com``).
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host.endswith(".webhook.office.com"):
        return True
    return host in {"outlook.office.com", "outlook.office365.com"} and parts.path.startswith(
        "/webhook"
    )


def redact_url(url: str) -> str:
    """A loggable stand-in for a webhook URL: ``scheme://host/first-segment/…#<sha256[:8]>``.

    The URL is the webhook's credential. The host and first path segment say which service it
    is; the fingerprint tells two URLs apart in logs. Tokens (path, query, user info) never
    appear, and neither does a first segment that looks like a token rather than a word such as
    ``services`` or ``hooks``.
    """
    fingerprint = hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return f"…#{fingerprint}"
    if not parts.scheme or not host:
        return f"…#{fingerprint}"
    segments = [segment for segment in parts.path.split("/") if segment]
    first = segments[0] if segments else ""
    if first and not _plain_segment(first):
        first = "…"
    shown = f"{parts.scheme}://{host}"
    if first:
        shown += f"/{first}"
    if len(segments) > 1 or parts.query or parts.fragment:
        shown += "/…"
    return f"{shown}#{fingerprint}"


def _plain_segment(segment: str) -> bool:
    return (
        len(segment) <= 16
        and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", segment) is not None
        and sum(character.isdigit() for character in segment) <= 2
    )
