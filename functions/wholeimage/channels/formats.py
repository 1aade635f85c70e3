"""The channel formats: one name per notification service, and what the standard one needs.

Standard library only, on purpose: settings (which the ``create`` function loads) validates
formats from here without importing any service module. ``registry.CHANNEL_TARGETS`` has one
target per name, in this order; a unit test holds the two together.
"""

from __future__ import annotations

from typing import Literal, get_args

ChannelFormat = Literal[
    "slack",
    "teams",
    "discord",
    "googlechat",
    "mattermost",
    "rocketchat",
    "feishu",
    "dingtalk",
    "wecom",
    "standard",
]
FORMATS: tuple[ChannelFormat, ...] = get_args(ChannelFormat)

# A Standard Webhooks signing secret is "whsec_" and the base64 of the key.
WHSEC_PREFIX = "whsec_"
