"""Escaping what other people and the cloud wrote, in each service's markup.

Only what another person typed (image name, requester) or the cloud wrote (fail reason, codes)
is escaped; our own markup is not. Each service gets the escape it documents: Slack's mrkdwn
(``slack_escape``), CommonMark backslashes (``commonmark_escape``), HTML (``html_escape``);
where none is documented the active characters are swapped for look-alikes that no renderer
interprets (``defang``). Every scheme neutralises mentions (``no_mentions``).
"""

from __future__ import annotations

import html
import re

# "@" at the start of a word is a mention; inside one ("alice@example.com") it is not.
_MENTION = re.compile(r"(?<!\w)@(?=\w)")
# What starts inline markup; "(" and "#" are left alone: without "[" there is no link, and values
# never start a line, so "#" cannot make a heading.
_COMMONMARK_ACTIVE = re.compile(r"([\\`*_~|\[\]<>])")
# Written as escapes: the look-alikes are the point, and should be visible as such in review.
_GRAVE_LOOK_ALIKE = "\u02cb"  # modifier letter grave accent
_LOOK_ALIKES = str.maketrans(
    {
        "<": "\u2039",  # single left-pointing angle quotation mark
        ">": "\u203a",
        "[": "\uff3b",  # fullwidth square brackets
        "]": "\uff3d",
        "*": "\u2217",  # asterisk operator
        "`": _GRAVE_LOOK_ALIKE,
        "|": "\u2502",  # box drawings light vertical
    }
)


def no_mentions(text: str) -> str:
    """``text`` with every ``@word`` inert."""
    # A zero-width space after "@" keeps "@everyone" / "@channel" / "@all" readable but inert.
    return _MENTION.sub("@\u200b", text)


def slack_escape(text: str) -> str:
    """Slack mrkdwn: ``&``, ``<`` and ``>`` as entities, mentions inert."""
    # Slack's documented escape: mentions (<!everyone>) and links (<url|x>) need "<". A bare
    # "@channel" does not ping from a webhook; the zero-width space is belt and braces.
    return no_mentions(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def commonmark_escape(text: str) -> str:
    """CommonMark backslash escapes (Discord, Mattermost, Adaptive Cards' markdown subset)."""
    return no_mentions(_COMMONMARK_ACTIVE.sub(r"\\\1", text))


def html_escape(text: str) -> str:
    """HTML entities: Google Chat card text is a small HTML subset."""
    return html.escape(text, quote=False)


def defang(text: str) -> str:
    """Active characters swapped for look-alikes, mentions inert.

    Feishu lark_md, DingTalk and WeCom markdown, Rocket.Chat and Google Chat's plain text
    document no escape; look-alikes cannot open a tag (``<at id=all>``, ``<@user>``, ``<font>``),
    a link or emphasis.
    """
    return no_mentions(text.translate(_LOOK_ALIKES))


def code_span(text: str) -> str:
    """``text`` in a markdown code span."""
    # Nothing inside a code span is interpreted; only a backtick could close it early.
    return f"`{text.replace('`', _GRAVE_LOOK_ALIKE)}`"
