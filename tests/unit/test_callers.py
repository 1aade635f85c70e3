"""Who may call the functions (``wholeimage.callers``): the API token, and Google-signed OIDC ID
tokens checked against a local key set (``tests/local_oidc.py``: an RSA key made here, its JWK
set served by ``httpx.MockTransport``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest

from tests.local_oidc import AUDIENCE, PUSHER, SCHEDULER, STRANGER, LocalGoogle, rsa_key
from wholeimage.callers import (
    DEFAULT_KEYS_MAX_AGE,
    MAX_KEYS_MAX_AGE,
    MIN_KEYS_MAX_AGE,
    REFETCH_FLOOR_SECONDS,
    Caller,
    HttpKeySource,
    IdTokenVerifier,
    authenticate_caller,
    bearer_of,
    max_age_of,
)
from wholeimage.errors import UnauthorizedError, UpstreamUnavailableError

API_TOKEN = "caller-api-token-0123456789abcdef"


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def google() -> LocalGoogle:
    return LocalGoogle()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(google: LocalGoogle, clock: Clock) -> IdTokenVerifier:
    return google.verifier(clock=clock)


def b64(part: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def refused(verifier: IdTokenVerifier, token: str) -> str:
    """The 401's message; it never quotes the token nor what it claims."""
    with pytest.raises(UnauthorizedError) as caught:
        verifier.verify(token)
    message = caught.value.message
    body = json.dumps(caught.value.body())
    assert token not in body
    assert token.split(".")[1] not in body
    assert SCHEDULER not in body
    assert STRANGER not in body
    return message


# --- a good token -----------------------------------------------------------------------------


@pytest.mark.parametrize("account", [SCHEDULER, PUSHER])
def test_a_google_signed_token_for_our_audience_from_an_allowed_account_is_let_in(
    google, verifier, account
):
    assert verifier.verify(google.token(email=account)) == Caller("id_token", account=account)


def test_the_issuer_may_be_spelt_without_https_and_the_account_in_any_case(google, verifier):
    token = google.token(iss="accounts.google.com", email=SCHEDULER.upper())

    assert verifier.verify(token).account == SCHEDULER


def test_an_audience_list_holding_ours_is_accepted(google, verifier):
    assert verifier.verify(google.token(aud=["https://elsewhere.example", AUDIENCE])).account


def test_any_of_several_configured_audiences_is_accepted(google, clock):
    verifier = google.verifier(audiences=(AUDIENCE, "https://check.example.com"), clock=clock)

    assert verifier.verify(google.token(aud="https://check.example.com")).account == SCHEDULER


def test_a_token_within_the_clock_skew_is_still_accepted(google, verifier):
    assert verifier.verify(google.token(exp=int(time.time()) - 30)).account == SCHEDULER


# --- refused tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "https://another-service.a.run.app"}, "another audience"),
        ({"iss": "https://evil.example.com"}, "not issued by Google"),
        ({"iss": "https://securetoken.google.com/my-project"}, "not issued by Google"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "future"),
        ({"email": STRANGER}, "not from an allowed service account"),
        ({"email_verified": False}, "not verified"),
        ({"email_verified": "true"}, "not verified"),
        ({"email_verified": None}, "not verified"),
        ({"email": None}, "lacks a required claim"),
        ({"exp": None}, "lacks a required claim"),
        ({"aud": None}, "lacks a required claim"),
        ({"iss": None}, "lacks a required claim"),
    ],
    ids=[
        "wrong-audience",
        "wrong-issuer",
        "firebase-issuer",
        "expired",
        "issued-in-the-future",
        "unknown-service-account",
        "email-not-verified",
        "email-verified-a-string",
        "no-email-verified",
        "no-email",
        "no-exp",
        "no-aud",
        "no-iss",
    ],
)
def test_a_token_with_a_wrong_claim_is_refused_saying_why(google, verifier, claims, reason):
    assert reason in refused(verifier, google.token(**claims))


def test_a_token_signed_by_another_key_under_googles_key_id_is_refused(google, verifier):
    forged = google.token(key=rsa_key("attacker"))

    assert "signature does not verify" in refused(verifier, forged)


def test_a_token_naming_a_key_google_does_not_list_is_refused(google, verifier):
    assert "no key" in refused(verifier, google.token(kid="made-up"))


@pytest.mark.parametrize("alg", ["HS256", "none"])
def test_a_token_not_signed_rs256_is_refused_before_any_key_is_fetched(google, verifier, alg):
    header = {"alg": alg, "kid": google.kid, "typ": "JWT"}
    token = ".".join([b64(header), b64(google.claims()), "c2lnbmF0dXJl"])

    assert "not signed RS256" in refused(verifier, token)
    assert google.fetches == 0


def test_an_hmac_key_in_the_set_never_verifies_a_token(google, clock):
    # Given a key set that also lists a symmetric key under a key id of its own
    google.extra_keys = [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0", "alg": "HS256"}]
    verifier = google.verifier(clock=clock)
    verifier.verify(google.token())  # the set is loaded
    # When a token claims RS256 under that key id but is signed with the shared secret
    signing_input = ".".join(
        b64(part) for part in ({"alg": "RS256", "kid": "shared"}, google.claims())
    )
    mac = hmac.new(b"secret", signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    # Then no key verifies it: only RSA keys are kept
    assert "no key" in refused(verifier, forged)


def test_a_token_whose_signature_cloud_run_removed_is_refused_naming_the_cause(google, verifier):
    stripped = ".".join([*google.token().split(".")[:2], "SIGNATURE_REMOVED_BY_GOOGLE"])

    message = refused(verifier, stripped)

    assert "Cloud Run" in message
    assert "docs/platforms.md §2" in message
    assert google.fetches == 0


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "a.b.c d", "a.b.c=", "ä.b.c", "x" * 5000 + ".b.c"],
    ids=["empty", "one-part", "two-parts", "four-parts", "space", "padding", "non-ascii", "long"],
)
def test_what_is_not_a_jwt_is_refused_without_a_fetch(google, verifier, token):
    with pytest.raises(UnauthorizedError):
        verifier.verify(token)
    assert google.fetches == 0


def test_a_jwt_shaped_token_with_an_unreadable_header_is_refused(verifier):
    assert "header is malformed" in refused(verifier, "bm90LWpzb24.e30.c2ln")


# --- Google's keys: fetched once, kept as long as they may be ----------------------------------


def test_the_keys_are_fetched_once_and_kept_for_their_max_age(google, verifier, clock):
    for _ in range(3):
        verifier.verify(google.token())
    assert google.fetches == 1

    clock.now += 21600 - 1
    verifier.verify(google.token())
    assert google.fetches == 1

    clock.now += 2
    verifier.verify(google.token())
    assert google.fetches == 2


def test_a_new_key_id_fetches_the_set_again_so_a_rotation_is_followed(google, verifier, clock):
    verifier.verify(google.token())
    google.kid, google.key_name = "local-key-2", "rotated"
    clock.now += REFETCH_FLOOR_SECONDS

    assert verifier.verify(google.token()).account == SCHEDULER
    assert google.fetches == 2


def test_made_up_key_ids_fetch_the_set_at_most_once_per_floor(google, verifier, clock):
    verifier.verify(google.token())
    clock.now += REFETCH_FLOOR_SECONDS

    for index in range(5):
        refused(verifier, google.token(kid=f"made-up-{index}"))

    assert google.fetches == 2


def test_without_any_key_a_failed_fetch_is_503_with_retry_after(google, verifier):
    google.answers = [httpx.Response(503)]

    with pytest.raises(UpstreamUnavailableError) as caught:
        verifier.verify(google.token())

    assert caught.value.http_status == 503
    assert int(caught.value.headers()["Retry-After"]) > 0


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json=["not", "a", "set"]),
        httpx.Response(200, json={"keys": "none"}),
        httpx.Response(200, json={"keys": [{"kty": "EC", "kid": "x"}]}),
    ],
    ids=["500", "not-json", "a-list", "keys-not-a-list", "no-rsa-key"],
)
def test_held_keys_serve_while_google_cannot_be_asked(google, verifier, clock, answer):
    verifier.verify(google.token())
    clock.now += 21600 + 1
    google.answers = [answer]

    assert verifier.verify(google.token()).account == SCHEDULER
    assert google.fetches == 2


def test_a_transport_failure_is_a_failed_fetch_too(google, clock):
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route", request=request)

    http = httpx.Client(transport=httpx.MockTransport(unreachable))
    verifier = IdTokenVerifier(
        audiences=[AUDIENCE], accounts=[SCHEDULER], keys=HttpKeySource(http), clock=clock
    )

    with pytest.raises(UpstreamUnavailableError):
        verifier.verify(google.token())


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=19742, must-revalidate, no-transform", 19742.0),
        ("max-age=5", MIN_KEYS_MAX_AGE),
        ("max-age=99999999", MAX_KEYS_MAX_AGE),
        ('max-age="600"', 600.0),
        ("no-store", DEFAULT_KEYS_MAX_AGE),
        (None, DEFAULT_KEYS_MAX_AGE),
        ("s-maxage=10", DEFAULT_KEYS_MAX_AGE),
    ],
)
def test_the_keys_max_age_comes_from_cache_control_within_bounds(header, seconds):
    assert max_age_of(header) == seconds


def test_a_verifier_needs_audiences_and_accounts(google):
    with pytest.raises(ValueError, match="audiences and accounts"):
        google.verifier(audiences=())
    with pytest.raises(ValueError, match="audiences and accounts"):
        google.verifier(accounts=())


# --- the API token, ID tokens, or both ---------------------------------------------------------


def caller(*, authorization=None, x_api_token=None, api_token=None, id_tokens=None) -> Caller:
    return authenticate_caller(
        authorization=authorization,
        x_api_token=x_api_token,
        api_token=api_token,
        id_tokens=id_tokens,
    )


def test_with_nothing_configured_anyone_is_let_in():
    assert caller() == Caller("open")


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {API_TOKEN}"},
        {"authorization": f"bearer   {API_TOKEN} "},
        {"x_api_token": API_TOKEN},
        {"x_api_token": "wrong", "authorization": f"Bearer {API_TOKEN}"},
        {"x_api_token": API_TOKEN, "authorization": "Bearer a.b.c"},
    ],
    ids=["bearer", "bearer-spaced", "x-api-token", "x-wrong-bearer-right", "x-right-other-bearer"],
)
def test_the_api_token_lets_a_caller_in(headers):
    assert caller(api_token=API_TOKEN, **headers) == Caller("api_token")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": API_TOKEN},
        {"authorization": f"Basic {API_TOKEN}"},
        {"x_api_token": "wrong"},
    ],
    ids=["none", "wrong-bearer", "no-scheme", "basic", "wrong-x-api-token"],
)
def test_without_the_api_token_a_caller_is_refused(headers):
    with pytest.raises(UnauthorizedError):
        caller(api_token=API_TOKEN, **headers)


def test_with_both_configured_either_lets_a_caller_in(google, verifier):
    def verifiers():
        return verifier

    both = {"api_token": API_TOKEN, "id_tokens": verifiers}
    assert caller(x_api_token=API_TOKEN, **both) == Caller("api_token")
    assert caller(authorization=f"Bearer {google.token()}", **both).method == "id_token"
    with pytest.raises(UnauthorizedError):
        caller(authorization=f"Bearer {google.token(email=STRANGER)}", **both)
    with pytest.raises(UnauthorizedError):
        caller(authorization="Bearer not-a-jwt", **both)


def test_with_id_tokens_only_the_verifier_is_built_only_for_a_bearer_shaped_as_a_jwt(google):
    built: list[IdTokenVerifier] = []

    def verifiers() -> IdTokenVerifier:
        built.append(google.verifier())
        return built[-1]

    with pytest.raises(UnauthorizedError):
        caller(id_tokens=verifiers)
    with pytest.raises(UnauthorizedError):
        caller(authorization="Bearer opaque-token", id_tokens=verifiers)
    assert built == []
    assert caller(authorization=f"Bearer {google.token()}", id_tokens=verifiers).account


@pytest.mark.parametrize(
    ("header", "credentials"),
    [("Bearer x", "x"), ("BEARER  x ", "x"), ("Basic x", None), ("Bearer", None), (None, None)],
)
def test_bearer_credentials_are_read_from_authorization(header, credentials):
    assert bearer_of(header) == credentials
