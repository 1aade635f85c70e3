"""Who may call the functions: our API token, or a Google-signed OIDC ID token.

Cloud Scheduler and Pub/Sub push authenticate only with the OIDC ID token Google makes for their
service account, sent as ``Authorization: Bearer``; a push cannot send a header of ours
(docs/platforms.md §2). So a caller is let in when it presents

- ``WHOLEIMAGE_API_TOKEN``, as ``Authorization: Bearer <token>`` or ``X-Api-Token: <token>``; or,
- with ``WHOLEIMAGE_OIDC_AUDIENCE`` and ``WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS`` set, an ID token in
  ``Authorization: Bearer`` signed RS256 by a key Google lists, issued by accounts.google.com,
  for one of the audiences, unexpired, whose ``email`` is verified and one of the service
  accounts.

When both are configured either one lets a caller in. PyJWT (over cryptography) checks the
signature and the registered claims; importing it costs about 100 ms, so it is imported when
the first ID token is checked, never by a process without the OIDC settings. Google's keys are
fetched once and kept as long as their ``Cache-Control`` says. Nothing here logs or quotes a
presented token, nor a library's words about one.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from wholeimage.errors import UnauthorizedError, UpstreamUnavailableError
from wholeimage.httputil import USER_AGENT, shared_ssl_context

if TYPE_CHECKING:
    from jwt import PyJWK

log = logging.getLogger("wholeimage.callers")

# Google's ID tokens name either spelling as their issuer, and Google's keys are published as a
# JWK set at this address (its OpenID discovery document's jwks_uri): docs/platforms.md §2.
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
ALGORITHMS = ("RS256",)
# Cloud Run puts this in place of the signature after its own IAM check admitted the token.
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"
CLOCK_SKEW_SECONDS = 60
# A Google ID token is about a kilobyte; anything far longer is not one.
MAX_TOKEN_CHARS = 8192
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "email"]

# How long fetched keys are kept: what Cache-Control's max-age says, within these bounds.
DEFAULT_KEYS_MAX_AGE = 3600.0
MIN_KEYS_MAX_AGE = 60.0
MAX_KEYS_MAX_AGE = 86400.0
# A token naming a key we do not hold fetches the set again, at most this often: made-up key ids
# cannot make every request a fetch.
REFETCH_FLOOR_SECONDS = 30.0
KEYS_TIMEOUT_SECONDS = 5.0
KEYS_RETRY_AFTER = 30
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Caller:
    """Who was let in: with no authentication configured, by the API token, or by an ID token
    (then ``account`` is its service account, lower case)."""

    method: Literal["open", "api_token", "id_token"]
    account: str | None = None


class KeyFetchError(Exception):
    """The key set could not be had (network, status, or not a JWK set). Never shown to callers."""


@dataclass(frozen=True)
class FetchedKeys:
    """A JWK set document and how many seconds it may be kept."""

    document: Any
    max_age: float = DEFAULT_KEYS_MAX_AGE


class KeySource(Protocol):
    """The port the verifier reads Google's keys through."""

    def fetch(self) -> FetchedKeys:
        """The current key set.

        Raises:
            KeyFetchError: it could not be had.
        """
        ...


def max_age_of(cache_control: str | None) -> float:
    """Seconds a response may be kept, from its ``Cache-Control``; the default without one."""
    found = _MAX_AGE.search(cache_control or "")
    seconds = float(found.group(1)) if found else DEFAULT_KEYS_MAX_AGE
    return min(max(seconds, MIN_KEYS_MAX_AGE), MAX_KEYS_MAX_AGE)


class HttpKeySource:
    """A JWK set fetched over HTTPS (Google's, unless told otherwise)."""

    def __init__(self, http: httpx.Client, url: str = GOOGLE_JWKS_URL) -> None:
        self._http = http
        self._url = url

    def fetch(self) -> FetchedKeys:
        """``GET`` the key set; it is kept for its ``Cache-Control: max-age``.

        Raises:
            KeyFetchError: no answer, a status other than 200, or no JSON object.
        """
        try:
            response = self._http.get(self._url)
        except httpx.HTTPError as exc:
            raise KeyFetchError(type(exc).__name__) from None
        if response.status_code != 200:
            raise KeyFetchError(f"status {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise KeyFetchError("not JSON") from None
        if not isinstance(document, dict):
            raise KeyFetchError("not a JWK set")
        return FetchedKeys(document, max_age_of(response.headers.get("Cache-Control")))


def _refused(reason: str) -> UnauthorizedError:
    return UnauthorizedError(f"the ID token was refused: {reason}")


class IdTokenVerifier:
    """Checks Google-signed OIDC ID tokens against the configured audiences and accounts.

    Thread-safe; one per process (``Dependencies.id_tokens``). ``clock`` (monotonic seconds)
    only times the key cache; the token's own times are read against the wall clock by PyJWT.
    """

    def __init__(
        self,
        *,
        audiences: Iterable[str],
        accounts: Iterable[str],
        keys: KeySource,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audiences = frozenset(audiences)
        self.accounts = frozenset(account.lower() for account in accounts)
        if not self.audiences or not self.accounts:
            raise ValueError("an ID token verifier needs audiences and accounts")
        self._source = keys
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, PyJWK] = {}
        self._fresh_until = -math.inf
        self._fetched_at = -math.inf

    def verify(self, token: str) -> Caller:
        """The service account ``token`` authenticates.

        Raises:
            UnauthorizedError: the token is not one we accept (the message says why, never what
                the token holds).
            UpstreamUnavailableError: Google's keys could not be fetched, and none we hold
                verifies the token.
        """
        if len(token) > MAX_TOKEN_CHARS or not _JWT.fullmatch(token):
            raise _refused("it is not a JWT")
        if token.rsplit(".", 1)[1] == SIGNATURE_REMOVED:
            raise _refused(
                "it came without its signature: Cloud Run removes it after its own IAM check, so "
                "it cannot be verified here; turn Cloud Run's invoker check off for this service "
                "or use the API token (docs/platforms.md §2)"
            )
        import jwt  # noqa: PLC0415 (about 100 ms, for processes configured for ID tokens only)

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("its header is malformed") from None
        kid = header.get("kid")
        if header.get("alg") not in ALGORITHMS or not isinstance(kid, str):
            raise _refused("it is not signed RS256 with a named key")
        key = self._key(kid)
        claims = self._claims(jwt, token, key)
        email = claims.get("email")
        if claims.get("email_verified") is not True or not isinstance(email, str):
            raise _refused("its e-mail is not verified")
        if email.lower() not in self.accounts:
            raise _refused("it is not from an allowed service account")
        return Caller("id_token", account=email.lower())

    def _claims(self, jwt: Any, token: str, key: PyJWK) -> dict[str, Any]:
        """The token's claims once PyJWT has checked its signature, times, issuer and audience."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=sorted(self.audiences),
                issuer=GOOGLE_ISSUERS,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("it has expired") from None
        except jwt.ImmatureSignatureError:
            raise _refused("it is dated in the future") from None
        except jwt.InvalidAudienceError:
            raise _refused("it was made for another audience") from None
        except jwt.InvalidIssuerError:
            raise _refused("it was not issued by Google (accounts.google.com)") from None
        except jwt.MissingRequiredClaimError:
            raise _refused("it lacks a required claim (exp, iat, iss, aud, email)") from None
        except jwt.InvalidSignatureError:
            raise _refused("its signature does not verify") from None
        except jwt.PyJWTError:
            raise _refused("it is malformed") from None
        return claims

    def _key(self, kid: str) -> PyJWK:
        """The key ``kid`` names: held and fresh, or fetched again.

        Raises:
            UnauthorizedError: Google lists no such key.
            UpstreamUnavailableError: the keys could not be fetched and ``kid`` is not held.
        """
        with self._lock:
            now = self._clock()
            fresh = now < self._fresh_until
            if fresh and kid in self._keys:
                return self._keys[kid]
            if not fresh or now - self._fetched_at >= REFETCH_FLOOR_SECONDS:
                try:
                    self._load(now)
                except KeyFetchError as exc:
                    log.warning("Google's ID token keys could not be fetched: %s", exc)
                    if kid in self._keys:
                        return self._keys[kid]  # held keys serve while Google cannot be asked
                    raise UpstreamUnavailableError(
                        "the keys that verify Google ID tokens could not be fetched",
                        retry_after=KEYS_RETRY_AFTER,
                    ) from None
            if kid not in self._keys:
                raise _refused("Google lists no key by the id it names")
            return self._keys[kid]

    def _load(self, now: float) -> None:
        """Fetch the key set and keep its RSA keys (an HMAC or other key never verifies here)."""
        from jwt import PyJWK, PyJWTError  # noqa: PLC0415 (see verify)

        self._fetched_at = now
        fetched = self._source.fetch()
        entries = fetched.document.get("keys") if isinstance(fetched.document, dict) else None
        if not isinstance(entries, list):
            raise KeyFetchError("not a JWK set")
        keys: dict[str, PyJWK] = {}
        for entry in entries:
            if not (isinstance(entry, dict) and entry.get("kty") == "RSA"):
                continue
            if not isinstance(entry.get("kid"), str):
                continue
            try:
                keys[entry["kid"]] = PyJWK(entry, algorithm=ALGORITHMS[0])
            except PyJWTError:
                continue
        if not keys:
            raise KeyFetchError("no usable RSA key")
        self._keys = keys
        self._fresh_until = now + fetched.max_age


def google_id_tokens(audiences: Iterable[str], accounts: Iterable[str]) -> IdTokenVerifier:
    """The verifier of Google-signed ID tokens, reading Google's published keys."""
    http = httpx.Client(
        verify=shared_ssl_context(),
        timeout=KEYS_TIMEOUT_SECONDS,
        headers={"User-Agent": USER_AGENT},
    )
    return IdTokenVerifier(audiences=audiences, accounts=accounts, keys=HttpKeySource(http))


def _same(presented: str, expected: str) -> bool:
    # compare_digest on bytes: constant time whatever the presented value holds.
    return hmac.compare_digest(presented.strip().encode("utf-8"), expected.encode("utf-8"))


def bearer_of(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header; None for any other scheme."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def authenticate_caller(
    *,
    authorization: str | None,
    x_api_token: str | None,
    api_token: str | None,
    id_tokens: Callable[[], IdTokenVerifier] | None,
) -> Caller:
    """Who the caller is, by the headers it sent (``Authorization``, ``X-Api-Token``).

    ``api_token`` is ``WHOLEIMAGE_API_TOKEN`` (None: not configured); ``id_tokens`` gives the
    verifier when ID tokens are configured (None: they are not). With neither, anyone is let in.

    Raises:
        UnauthorizedError: no presented credential is acceptable.
        UpstreamUnavailableError: an ID token could not be checked for want of Google's keys.
    """
    if not api_token and id_tokens is None:
        return Caller("open")
    bearer = bearer_of(authorization)
    if api_token:
        for presented in (x_api_token, bearer):
            if presented is not None and _same(presented, api_token):
                return Caller("api_token")
    if id_tokens is not None and bearer is not None and _JWT.fullmatch(bearer):
        return id_tokens().verify(bearer)
    raise UnauthorizedError("a valid bearer token is required")
