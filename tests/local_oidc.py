"""A local stand-in for Google's ID token issuer: an RSA key made in the test, its JWK set served
through ``httpx.MockTransport``, and ID tokens signed with it. No network.

The verifier under test is the real one (``wholeimage.callers``), over the real ``HttpKeySource``;
only the address it fetches answers from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from wholeimage.callers import GOOGLE_JWKS_URL, HttpKeySource, IdTokenVerifier

AUDIENCE = "https://wholeimage-check-abc123-ew.a.run.app"
SCHEDULER = "wholeimage-scheduler@my-project.iam.gserviceaccount.com"
PUSHER = "wholeimage-push@my-project.iam.gserviceaccount.com"
STRANGER = "someone-else@other-project.iam.gserviceaccount.com"


@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """One 2048-bit key per name for the whole run (making one takes tens of milliseconds)."""
    del name
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class LocalGoogle:
    """Signs ID tokens as Google would and serves the JWK set that verifies them."""

    kid: str = "local-key-1"
    key_name: str = "google"
    max_age: int | None = 21600
    fetches: int = 0
    answers: list[httpx.Response] = field(default_factory=list)  # served before the key set
    extra_keys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        return rsa_key(self.key_name)

    def jwks(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return {"keys": [*self.extra_keys, jwk]}

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == GOOGLE_JWKS_URL
        self.fetches += 1
        if self.answers:
            return self.answers.pop(0)
        headers = (
            {} if self.max_age is None else {"Cache-Control": f"public, max-age={self.max_age}"}
        )
        return httpx.Response(200, json=self.jwks(), headers=headers)

    def verifier(
        self,
        *,
        audiences: tuple[str, ...] = (AUDIENCE,),
        accounts: tuple[str, ...] = (SCHEDULER, PUSHER),
        clock: Callable[[], float] = time.monotonic,
    ) -> IdTokenVerifier:
        http = httpx.Client(transport=httpx.MockTransport(self.handler))
        return IdTokenVerifier(
            audiences=audiences, accounts=accounts, keys=HttpKeySource(http), clock=clock
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "azp": "112233445566778899000",
            "sub": "112233445566778899000",
            "email": SCHEDULER,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(
        self,
        *,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        **claims: Any,
    ) -> str:
        """An ID token with these claims (None leaves one out), signed RS256 with our key."""
        return jwt.encode(
            self.claims(**claims),
            key or self.private_key,
            algorithm="RS256",
            headers={"kid": kid or self.kid},
        )
