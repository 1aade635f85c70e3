"""HTTP helpers every outbound client shares: IMS, IAM, the poller and the webhooks alike.

Neutral on purpose: none of it knows IMS or a chat service, so the notifier need not import the
IMS client for its SSL context, nor the poller for its token bucket.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import certifi
import httpx

USER_AGENT = "wholeimage/0.1"


def retry_after_seconds(response: httpx.Response, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP-date), or None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # "-0000" (RFC 5322): UTC
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


_SHARED_SSL_CONTEXT: ssl.SSLContext | None = None
_SSL_LOCK = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """One SSL context per process: loading the CA bundle is most of an httpx client's cost."""
    global _SHARED_SSL_CONTEXT  # noqa: PLW0603 (a lazy per-process singleton)
    with _SSL_LOCK:
        if _SHARED_SSL_CONTEXT is None:
            _SHARED_SSL_CONTEXT = ssl.create_default_context(cafile=certifi.where())
        return _SHARED_SSL_CONTEXT


class RateLimiter:
    """A token bucket shared by all workers polling one IMS account, pausable on 429.

    ``rate`` is requests per second (0 = unlimited); ``burst`` tokens may be spent at once.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        """Stop everyone for ``seconds`` (IMS said 429 / flow control)."""
        until = self._clock() + max(seconds, 0.0)
        if until > self._paused_until:
            self._paused_until = until
            self.pauses += 1

    def wait_time(self) -> float:
        """Seconds until a request may go, without taking a token."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        if self.rate <= 0:
            return 0.0
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        """Spend one token (after ``wait_time`` said 0)."""
        if self.rate > 0:
            self._tokens -= 1

    def delay_needed(self) -> float:
        """Seconds to wait before a request may go; 0 means a token was taken now."""
        delay = self.wait_time()
        if delay <= 0:
            self.take()
        return delay

    async def acquire(self, max_wait: float = float("inf")) -> bool:
        """Wait until a request may be sent; False (without waiting) if that is past ``max_wait`` s."""
        waited = 0.0
        # Single-threaded event loop: check-and-take is atomic between awaits.
        while (delay := self.delay_needed()) > 0:
            if waited + delay > max_wait:
                return False
            await asyncio.sleep(delay)
            waited += delay
        return True
