"""How wholeimage authenticates to IMS: AK/SK signing, a static token, or an IAM password.

Each auth is an ``httpx.Auth`` for the synchronous client and, for the poller's hand-written
transport, a ``HeaderSigner`` that answers one request's headers directly:

- ``AkSkAuth``: each request signed with ``SDK-HMAC-SHA256``, as the official SDK signs it
  (``wholeimage.ims.signer``);
- ``StaticTokenAuth``: a given IAM token as ``X-Auth-Token``;
- ``IamPasswordAuth``: a project-scoped token obtained from IAM with user, password and domain
  (docs/ims-api.md §4.1), cached until 30 minutes before it expires and fetched once more when
  IMS answers 401.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx

from wholeimage.errors import UpstreamAuthError
from wholeimage.ims import signer
from wholeimage.ims.client import JSON_CONTENT_TYPE, upstream_code_and_message
from wholeimage.logs import register_secrets

# Refresh an IAM token this long before it expires (tokens live 24 h; docs/ims-api.md §4.1).
TOKEN_REFRESH_MARGIN = timedelta(minutes=30)


class HeaderSigner(Protocol):
    """An auth that can produce one request's auth headers directly (no ``httpx.Request``)."""

    def signed_headers(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: list[tuple[str, str]],
        body: bytes = b"",
        content_type: str | None = None,
    ) -> dict[str, str]:
        """The headers that authenticate the request."""
        ...


class AkSkAuth(httpx.Auth):
    """Sign each request with AK/SK (``SDK-HMAC-SHA256``), as the official SDK does."""

    requires_request_body = True

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        project_id: str,
        security_token: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._project_id = project_id
        self._security_token = security_token
        self._now = now

    def signed_headers(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: list[tuple[str, str]],
        body: bytes = b"",
        content_type: str | None = None,
    ) -> dict[str, str]:
        """The headers that sign one request, ``Authorization`` included."""
        signed = {"Host": host, "X-Sdk-Date": signer.format_sdk_date(self._now())}
        if body:
            signed["Content-Type"] = content_type or JSON_CONTENT_TYPE
        signed["X-Project-Id"] = self._project_id
        if self._security_token:
            signed["X-Security-Token"] = self._security_token
        signed = signer.with_content_sha256(signed)  # a non-JSON body is signed as UNSIGNED-PAYLOAD
        signed["Authorization"] = signer.authorization_header(
            access_key=self._access_key,
            secret_key=self._secret_key,
            method=method,
            path=path,
            query=query,
            headers=signed,
            body=body,
        )
        return signed

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the signed headers and the ``Authorization`` header."""
        request.headers.update(
            self.signed_headers(
                method=request.method,
                host=request.url.netloc.decode("ascii"),
                path=request.url.path,
                query=request.url.params.multi_items(),
                body=request.content,
                content_type=request.headers.get("Content-Type"),
            )
        )
        yield request


class StaticTokenAuth(httpx.Auth):
    """Send a given IAM token as ``X-Auth-Token``."""

    def __init__(self, token: str) -> None:
        self._token = token

    def signed_headers(self, **_: object) -> dict[str, str]:
        """The token header (the same for every request)."""
        return {"X-Auth-Token": self._token}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the token header."""
        request.headers["X-Auth-Token"] = self._token
        yield request


@dataclass
class _CachedToken:
    value: str
    expires_at: datetime


@dataclass
class IamPasswordAuth(httpx.Auth):
    """Obtain a project-scoped IAM token with user/password/domain, cache it until near expiry."""

    # The flow parses IAM's answer; a real transport streams it, so httpx must read it first.
    requires_response_body = True

    iam_endpoint: str
    user: str
    password: str = field(repr=False)
    domain: str
    project_id: str
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _cached: _CachedToken | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _token_request(self) -> httpx.Request:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.user,
                            "password": self.password,
                            "domain": {"name": self.domain},
                        }
                    },
                },
                "scope": {"project": {"id": self.project_id}},
            }
        }
        return httpx.Request(
            "POST",
            f"{self.iam_endpoint}/v3/auth/tokens?nocatalog=true",
            content=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json;charset=utf8"},
        )

    def _remember(self, response: httpx.Response) -> str:
        if response.status_code != 201 or "X-Subject-Token" not in response.headers:
            code, message = upstream_code_and_message(response)
            raise UpstreamAuthError(
                f"IAM refused to issue a token ({response.status_code})",
                upstream={"status": response.status_code, "code": code, "message": message},
            )
        token = response.headers["X-Subject-Token"]
        # An error text that quotes our request back must not hand the token on (logs.redact).
        register_secrets([token])
        try:
            expires_at = datetime.fromisoformat(
                response.json()["token"]["expires_at"].replace("Z", "+00:00")
            )
        except (ValueError, KeyError, TypeError):
            expires_at = self.now() + timedelta(hours=1)  # unknown expiry: keep it only briefly
        self._cached = _CachedToken(token, expires_at)
        return token

    def _valid_token(self) -> str | None:
        cached = self._cached
        if cached is not None and cached.expires_at - TOKEN_REFRESH_MARGIN > self.now():
            return cached.value
        return None

    def current_token(self, client_factory: Callable[[], httpx.Client]) -> str:
        """A valid token, fetched with a new client when needed (for async callers, see below).

        The flow below holds a thread lock across its token request, which would deadlock two
        coroutines on one event loop; async pollers take a token from here first and send it
        as a ``StaticTokenAuth`` (valid for 30 minutes more, far longer than a tick).
        """
        with self._lock:
            token = self._valid_token()
            if token is None:
                with client_factory() as client:
                    response = client.send(self._token_request())
                    response.read()
                token = self._remember(response)
            return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Use the cached token; fetch one first when there is none or it is near expiry."""
        # The lock spans the token fetch so concurrent threads fetch one token, not one each.
        with self._lock:
            token = self._valid_token()
            if token is None:
                token = self._remember((yield self._token_request()))
        request.headers["X-Auth-Token"] = token
        response = yield request
        if response.status_code == 401:
            # Tokens are revoked early when a password or permission changes: fetch once more.
            with self._lock:
                if self._cached is None or self._cached.value == token:
                    self._cached = None
                    token = self._remember((yield self._token_request()))
                else:
                    token = self._cached.value  # another thread has refreshed it meanwhile
            request.headers["X-Auth-Token"] = token
            yield request
