"""HTTP helpers every outbound client shares: IMS, IAM, the poller and the webhooks alike.

Neutral on purpose: none of it knows IMS or a chat service, so the notifier need not import the
IMS client for its SSL context, nor the poller for its token bucket.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import certifi
import httpx

from wholeimage.errors import ConfigurationError

USER_AGENT = "wholeimage/0.1"


# The longest wait a Retry-After is read as. Every caller gives up sooner (the IMS retry budget, a
# tick's budget, notify's max age), and a longer one ("9" * 400 reads as infinity) would overflow
# the time arithmetic after it.
MAX_RETRY_AFTER = 86_400.0


def retry_after_seconds(response: httpx.Response, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP-date), or None when absent or unreadable.

    At most ``MAX_RETRY_AFTER``; delta-seconds are ASCII digits (RFC 9110), so ``"²"``, which
    ``str.isdigit`` takes and ``float`` does not, is unreadable.
    """
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # "-0000" (RFC 5322): UTC
        moment = moment.replace(tzinfo=UTC)
    return min(MAX_RETRY_AFTER, max(0.0, (moment - (now or datetime.now(UTC))).total_seconds()))


CA_FILE_VARIABLE = "SSL_CERT_FILE"
CA_DIR_VARIABLE = "SSL_CERT_DIR"


def build_ssl_context(environ: Mapping[str, str]) -> ssl.SSLContext:
    """The context every outbound TLS connection verifies with, from ``environ``'s trust settings.

    In order: ``SSL_CERT_FILE`` (a PEM bundle, e.g. a TLS-inspecting proxy's CA), ``SSL_CERT_DIR``
    (a hashed certificate directory), the system's hashed directory, else certifi's bundle. A
    directory is read lazily, one certificate when a connection needs it, where a bundle is parsed
    whole: about 1 ms against 50-85 ms of cold start (docs/performance.md §2.3).
    """
    # Not ssl.create_default_context(): it parses the system bundle whole before we choose.
    # PROTOCOL_TLS_CLIENT verifies certificates and host names, as create_default_context does.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if environ.get(CA_FILE_VARIABLE):
        _trust(context, CA_FILE_VARIABLE, cafile=environ[CA_FILE_VARIABLE])
    elif environ.get(CA_DIR_VARIABLE):
        _trust(context, CA_DIR_VARIABLE, capath=environ[CA_DIR_VARIABLE])
    elif (system := _system_certificate_dir()) is not None:
        context.load_verify_locations(capath=system)
    else:
        context.load_verify_locations(cafile=certifi.where())
    return context


def _trust(context: ssl.SSLContext, variable: str, **location: str) -> None:
    try:
        context.load_verify_locations(**location)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"{variable} names no readable certificates: {exc}") from None


def _system_certificate_dir() -> str | None:
    """OpenSSL's hashed certificate directory, when it holds any hashed certificate."""
    directory = Path(ssl.get_default_verify_paths().openssl_capath)
    try:
        hashed = any(entry.suffix == ".0" for entry in directory.iterdir())
    except OSError:
        return None
    return str(directory) if hashed else None


_SHARED_SSL_CONTEXT: ssl.SSLContext | None = None
_SSL_LOCK = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """One SSL context per process, built from the environment on first use and then shared by
    every client (IMS, IAM, the pollers, the webhooks): building one is most of a client's cost."""
    global _SHARED_SSL_CONTEXT  # noqa: PLW0603 (a lazy per-process singleton)
    with _SSL_LOCK:
        if _SHARED_SSL_CONTEXT is None:
            _SHARED_SSL_CONTEXT = build_ssl_context(os.environ)
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
