"""HTTP helpers every outbound client shares: IMS, IAM, the poller and the webhooks alike.

Neutral on purpose: none of it knows IMS or a chat service, so the notifier need not import the
IMS client for its SSL context, nor the poller for its token bucket. ``Egress`` is how every
outbound call leaves the process: the proxies the environment names (``HTTPS_PROXY``,
``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, as httpx reads them) and the certificates TLS trusts
(``SSL_CERT_FILE``, ``SSL_CERT_DIR``); docs/egress.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.request import getproxies

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
_SHARED_EGRESS: Egress | None = None
_SSL_LOCK = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """One SSL context per process, built from the environment on first use and then shared by
    every client (IMS, IAM, the pollers, the webhooks): building one is most of a client's cost."""
    global _SHARED_SSL_CONTEXT  # noqa: PLW0603 (a lazy per-process singleton)
    with _SSL_LOCK:
        if _SHARED_SSL_CONTEXT is None:
            _SHARED_SSL_CONTEXT = build_ssl_context(os.environ)
        return _SHARED_SSL_CONTEXT


# --- the proxies ----------------------------------------------------------------------------

# The proxy schemes httpx 0.28 speaks (httpx.Proxy); socks5 needs the optional socksio package.
PROXY_SCHEMES = frozenset({"http", "https", "socks5", "socks5h"})


def environment_proxy_mounts(proxy_info: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The environment's proxy variables as httpx mount patterns: pattern -> proxy URL, or None
    for "direct" (a ``NO_PROXY`` entry).

    ``proxy_info`` is what ``urllib.request.getproxies()`` answers (the default): scheme ->
    value, from ``<scheme>_proxy`` in either case, lower case winning. These are httpx 0.28's
    rules (its ``get_environment_proxies``) restated over that public function, so that nothing
    reaches into httpx's private module; tests/unit/test_egress.py keeps httpx as the referee.
    Per curl's rules for ``NO_PROXY``, ``example.com`` bypasses example.com and its subdomains,
    ``.example.com`` only the subdomains, ``*`` everything.
    """
    info = getproxies() if proxy_info is None else proxy_info
    mounts: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        if value := info.get(scheme):
            mounts[f"{scheme}://"] = value if "://" in value else f"http://{value}"
    for entry in (host.strip() for host in info.get("no", "").split(",")):
        if entry == "*":
            return {}
        if not entry:
            continue
        if "://" in entry:
            mounts[entry] = None
        elif _is_ip(entry, ipaddress.IPv4Address) or entry.lower() == "localhost":
            mounts[f"all://{entry}"] = None
        elif _is_ip(entry, ipaddress.IPv6Address):
            mounts[f"all://[{entry}]"] = None
        else:
            mounts[f"all://*{entry}"] = None
    return mounts


def _is_ip(entry: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        # As httpx reads it: "10.0.0.0/8" is taken for the address 10.0.0.0 alone, not a range.
        kind(entry.split("/", maxsplit=1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _Route:
    """One mount pattern and where it sends a matching URL (httpx's ``URLPattern`` rules)."""

    pattern: str
    proxy: str | None
    scheme: str
    host: str
    port: int | None
    host_regex: re.Pattern[str] | None

    @classmethod
    def of(cls, pattern: str, proxy: str | None) -> _Route:
        url = httpx.URL(pattern)
        host = "" if url.host == "*" else url.host
        regex: re.Pattern[str] | None = None
        if host.startswith("*."):  # subdomains only
            regex = re.compile(rf"^.+\.{re.escape(host[2:])}$")
        elif host.startswith("*"):  # the domain and its subdomains
            regex = re.compile(rf"^(.+\.)?{re.escape(host[1:])}$")
        elif host:
            regex = re.compile(rf"^{re.escape(host)}$")
        scheme = "" if url.scheme == "all" else url.scheme
        return cls(pattern, proxy, scheme, host, url.port, regex)

    def matches(self, url: httpx.URL) -> bool:
        return (
            (not self.scheme or self.scheme == url.scheme)
            and (self.host_regex is None or self.host_regex.match(url.host) is not None)
            and (self.port is None or self.port == url.port)
        )

    @property
    def priority(self) -> tuple[int, int, int]:
        # As httpx orders its mounts: with a port first, then longer hosts, then longer schemes.
        return (0 if self.port is not None else 1, -len(self.host), -len(self.scheme))


@dataclass(frozen=True)
class Egress:
    """How outbound calls leave the process: the TLS trust, and which proxy (if any) a URL takes.

    Every client is built from one: the httpx clients by ``client``/``async_client`` (the
    environment's proxies as explicit mounts, so the proxy's own TLS trusts ``SSL_CERT_FILE``
    too), the h11 poller by asking ``proxy_for``.
    """

    ssl_context: ssl.SSLContext
    routes: tuple[_Route, ...] = ()

    @classmethod
    def from_environment(cls) -> Egress:
        """The egress ``os.environ`` describes now: its CA variables and its proxy variables.

        Raises:
            ConfigurationError: a CA variable names no certificates, or a proxy URL is unusable.
        """
        return cls.from_mounts(build_ssl_context(os.environ), environment_proxy_mounts())

    @classmethod
    def from_mounts(cls, ssl_context: ssl.SSLContext, mounts: Mapping[str, str | None]) -> Egress:
        """An egress over these mount patterns (``environment_proxy_mounts``).

        Raises:
            ConfigurationError: a proxy URL has a scheme no client speaks (its URL, which may
                hold a password, is not quoted).
        """
        for pattern, proxy in mounts.items():
            if proxy is not None and httpx.URL(proxy).scheme not in PROXY_SCHEMES:
                variable = f"{pattern.partition(':')[0].upper()}_PROXY"
                raise ConfigurationError(
                    f"{variable}: a proxy URL must start with http://, https:// or socks5://"
                )
        routes = sorted((_Route.of(p, proxy) for p, proxy in mounts.items()), key=_priority)
        return cls(ssl_context, tuple(routes))

    def proxy_for(self, url: str | httpx.URL) -> str | None:
        """The proxy URL a request to ``url`` goes through; None: straight to the host."""
        target = httpx.URL(url)
        for route in self.routes:
            if route.matches(target):
                return route.proxy
        return None

    def _mounts(self, transport: Callable[..., Any]) -> dict[str, Any]:
        return {
            route.pattern: None
            if route.proxy is None
            else transport(verify=self.ssl_context, proxy=self._proxy(route.proxy))
            for route in self.routes
        }

    def _proxy(self, url: str) -> httpx.Proxy:
        # TLS to an https:// proxy trusts what IMS's TLS trusts (httpx alone would use certifi's
        # bundle there); httpcore refuses a context for a plain http:// proxy.
        if httpx.URL(url).scheme == "https":
            return httpx.Proxy(url, ssl_context=self.ssl_context)
        return httpx.Proxy(url)

    def client(self, **options: Any) -> httpx.Client:
        """An ``httpx.Client`` that leaves as the environment says (``options``: the rest)."""
        return httpx.Client(
            verify=self.ssl_context,
            trust_env=False,  # the environment is read once, here, for every client alike
            mounts=self._mounts(httpx.HTTPTransport),
            **options,
        )

    def async_client(self, **options: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` that leaves as the environment says."""
        return httpx.AsyncClient(
            verify=self.ssl_context,
            trust_env=False,
            mounts=self._mounts(httpx.AsyncHTTPTransport),
            **options,
        )


def _priority(route: _Route) -> tuple[int, int, int]:
    return route.priority


def shared_egress() -> Egress:
    """The process's egress, from the environment on first use, over ``shared_ssl_context``:
    what a client built outside ``Dependencies`` (a script, a test helper) leaves by."""
    global _SHARED_EGRESS  # noqa: PLW0603 (a lazy per-process singleton)
    context = shared_ssl_context()
    with _SSL_LOCK:
        if _SHARED_EGRESS is None:
            _SHARED_EGRESS = Egress.from_mounts(context, environment_proxy_mounts())
        return _SHARED_EGRESS


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
