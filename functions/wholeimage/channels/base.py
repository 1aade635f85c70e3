"""What every target is: a payload builder and a response classifier, over these types.

Pure code, no I/O: ``Target.render`` turns job results (``JobResult``) into one
``OutgoingMessage`` (URL, headers, body bytes) and ``Target.classify`` turns the service's
``httpx.Response`` into a ``Delivery`` (delivered, retry, permanent). Sending, throttling to
``Target.rate``, retries and the outbox belong to the caller (``wholeimage.notify``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

import httpx

from wholeimage.channels.urls import redact_url
from wholeimage.results import Channel, JobResult

Outcome = Literal["delivered", "retry", "permanent"]


@dataclass(frozen=True)
class Delivery:
    """What one delivery attempt came to.

    Attributes:
        outcome: ``delivered``; ``retry`` (later, the same message); ``permanent`` (never retry
            this message: a payload or configuration problem, or a dead webhook).
        retry_after: Seconds the service asked us to wait, when it said (``Retry-After``, Discord's
            ``retry_after``) or documents it (WeCom's frequency limit).
        detail: A short explanation for logs and operators. Never the URL or a secret; response
            text is cut to about 300 characters.
    """

    outcome: Outcome
    retry_after: float | None = None
    detail: str = ""


@dataclass(frozen=True, repr=False)
class OutgoingMessage:
    """One HTTP POST, ready to send with ``content=body`` (never re-serialise: signatures cover it).

    Attributes:
        url: Where to POST, with any query parameters already merged (DingTalk ``timestamp`` and
            ``sign``, Google Chat ``messageReplyOption``, Discord ``wait=true``). A credential.
        headers: Request headers, including the Standard Webhooks signature headers.
        body: The exact bytes to send: compact UTF-8 JSON.
    """

    url: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:
        # The URL is the webhook's credential: a message that ends up in a log shows a redaction.
        return f"OutgoingMessage(url={redact_url(self.url)!r}, body={len(self.body)} bytes)"


@dataclass(frozen=True)
class RateLimit:
    """The service's documented sending limit per webhook; ``None`` where it documents none.

    Attributes:
        per_second: Messages per second.
        per_minute: Messages per minute.
    """

    per_second: float | None
    per_minute: float | None


class Target(Protocol):
    """One notification service: its payload builder and its response classifier.

    Attributes:
        format: The channel format this target serves (a key of ``registry.CHANNEL_TARGETS``).
        rate: The service's documented limit, for the caller's client-side throttle.
        digest_limit: How many results one digest may carry so that every job is listed within
            the service's size limits (with names and ids of ordinary length); 1 means one
            message per result, never a digest (Standard Webhooks).
    """

    format: str
    rate: RateLimit
    digest_limit: int

    def render(
        self, results: Sequence[JobResult], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """One message: a rich one for a single result, a digest for several.

        Args:
            results: The results to report; at least one, at most ``digest_limit``.
            channel: Where to: URL, signing secret, keyword.
            now: The time of this attempt (signature timestamps); naive means UTC.

        Raises:
            ValueError: No results, several for a target without digests, or the channel
                cannot be served (a retired Teams connector URL, a missing or malformed Standard
                Webhooks secret).
        """
        ...

    def classify(self, response: httpx.Response) -> Delivery:
        """What the service's answer to one attempt means."""
        ...
