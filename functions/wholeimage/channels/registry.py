"""Which target serves which channel format: ``CHANNEL_TARGETS`` and ``target_for``.

A new service is one module with its target, one line here and its name in
``formats.ChannelFormat`` (a unit test checks that the two agree).
"""

from __future__ import annotations

from wholeimage.channels.base import Target
from wholeimage.channels.dingtalk import DingTalkTarget
from wholeimage.channels.discord import DiscordTarget
from wholeimage.channels.feishu import FeishuTarget
from wholeimage.channels.googlechat import GoogleChatTarget
from wholeimage.channels.mattermost import MattermostTarget
from wholeimage.channels.rocketchat import RocketChatTarget
from wholeimage.channels.slack import SlackTarget
from wholeimage.channels.standard import StandardWebhookTarget
from wholeimage.channels.teams import TeamsTarget
from wholeimage.channels.wecom import WeComTarget

_ALL_TARGETS: tuple[Target, ...] = (
    SlackTarget(),
    TeamsTarget(),
    DiscordTarget(),
    GoogleChatTarget(),
    MattermostTarget(),
    RocketChatTarget(),
    FeishuTarget(),
    DingTalkTarget(),
    WeComTarget(),
    StandardWebhookTarget(),
)
CHANNEL_TARGETS: dict[str, Target] = {target.format: target for target in _ALL_TARGETS}


def target_for(format: str) -> Target:
    """The target serving ``format``.

    Raises:
        ValueError: ``format`` is not one of ``CHANNEL_TARGETS``; the message names the allowed
            ones.
    """
    target = CHANNEL_TARGETS.get(format)
    if target is None:
        allowed = ", ".join(sorted(CHANNEL_TARGETS))
        raise ValueError(f"unknown notification format {format!r}; the formats are {allowed}")
    return target
