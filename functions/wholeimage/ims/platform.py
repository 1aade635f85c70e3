"""FunctionGraph's temporary credentials, as the platform hands them to one HTTP request.

With "Include Keys" (``enable_auth_in_header``) FunctionGraph sends an HTTP function the temporary
AK/SK and security token of the function's agency, and an IAM token, as request headers, never as
environment variables (docs/ims-api.md §4.4). They sign that request's IMS calls when no static
credentials are configured (``WHOLEIMAGE_PLATFORM_CREDENTIALS``, docs/platform-credentials.md):
held by the request's own connection, never logged, stored or kept after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import httpx

from wholeimage.errors import RequestInvalidError
from wholeimage.ims.auth import AkSkAuth, StaticTokenAuth

ACCESS_KEY_HEADER = "X-CFF-Security-Access-Key"
SECRET_KEY_HEADER = "X-CFF-Security-Secret-Key"  # noqa: S105 (a header name)
SECURITY_TOKEN_HEADER = "X-CFF-Security-Token"  # noqa: S105 (a header name)
AUTH_TOKEN_HEADER = "X-CFF-Auth-Token"  # noqa: S105 (a header name)
_TEMPORARY_KEY_HEADERS = (ACCESS_KEY_HEADER, SECRET_KEY_HEADER, SECURITY_TOKEN_HEADER)
_VALUE_RULE = "printable ASCII without spaces"


class Headers(Protocol):
    """A request's headers, looked up by name without regard to case (Werkzeug's, a test's)."""

    def get(self, key: str) -> str | None:
        """The header's value, None when absent."""
        ...


@dataclass(frozen=True)
class PlatformCredentials:
    """One request's temporary credentials: the AK/SK + security token, and/or an IAM token."""

    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    auth_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_headers(cls, headers: Headers) -> PlatformCredentials | None:
        """The credentials the headers carry; None when they carry none.

        Raises:
            RequestInvalidError: a value is not a credential's shape, or the temporary AK/SK come
                without their security token (or the other way round) and no IAM token stands
                in; the details name the headers, never a value.
        """
        values = {
            name: headers.get(name) or None for name in (*_TEMPORARY_KEY_HEADERS, AUTH_TOKEN_HEADER)
        }
        if not any(values.values()):
            return None
        malformed = [
            {"path": f"header:{name}", "message": _VALUE_RULE}
            for name, value in values.items()
            if value is not None and not _credential_shaped(value)
        ]
        if malformed:
            raise RequestInvalidError(
                "a platform credential header is malformed", details=malformed
            )
        given = [name for name in _TEMPORARY_KEY_HEADERS if values[name]]
        if given and len(given) < len(_TEMPORARY_KEY_HEADERS) and not values[AUTH_TOKEN_HEADER]:
            # FunctionGraph documents the three as one set: "must be used together".
            raise RequestInvalidError(
                "the platform's temporary AK/SK and security token must come together",
                details=[
                    {"path": f"header:{name}", "message": "required with the other two"}
                    for name in _TEMPORARY_KEY_HEADERS
                    if not values[name]
                ],
            )
        complete = len(given) == len(_TEMPORARY_KEY_HEADERS)
        return cls(
            access_key=values[ACCESS_KEY_HEADER] if complete else None,
            secret_key=values[SECRET_KEY_HEADER] if complete else None,
            security_token=values[SECURITY_TOKEN_HEADER] if complete else None,
            auth_token=values[AUTH_TOKEN_HEADER],
        )

    def auth(self, project_id: str) -> httpx.Auth:
        """AK/SK signing with the security token when the request has them, else the IAM token."""
        if self.access_key and self.secret_key and self.security_token:
            return AkSkAuth(self.access_key, self.secret_key, project_id, self.security_token)
        if self.auth_token:
            return StaticTokenAuth(self.auth_token)
        raise AssertionError("from_headers builds credentials with one kind or the other")

    def secret_values(self) -> list[str]:
        """What the log filter must redact while the request lasts."""
        values = (self.access_key, self.secret_key, self.security_token, self.auth_token)
        return [value for value in values if value]


def _credential_shaped(value: str) -> bool:
    # Keys and tokens are base64 or hex text; anything else cannot be one (and a CR/LF or a
    # space must never reach a header we send).
    return value.isascii() and value.isprintable() and " " not in value
