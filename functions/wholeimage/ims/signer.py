"""AK/SK request signing, ``SDK-HMAC-SHA256``, exactly as ``huaweicloudsdkcore``'s ``Signer`` does it.

Hand-written because the official SDK is not a run-time dependency; ``tests/unit/test_signer.py``
proves it byte-equal to the SDK's signer over generated requests.

The algorithm (docs/ims-api.md §4.2):

1. canonical request = method, canonical URI (each segment percent-encoded, always ending in
   ``/``), canonical query (pairs sorted, ``k=v`` encoded with ``safe='~'``), canonical headers
   (``name:value`` lower-cased and trimmed, one per line), signed header names joined by ``;``,
   hex SHA-256 of the body, or the value of an ``X-Sdk-Content-Sha256`` header when one is set
   (the SDK sets it to ``UNSIGNED-PAYLOAD`` for a non-JSON content type: ``with_content_sha256``);
2. string to sign = ``SDK-HMAC-SHA256\\n<X-Sdk-Date>\\n<hex sha256(canonical request)>``;
3. signature = hex HMAC-SHA256(SK, string to sign).

Unlike the SDK, nothing here adds headers behind the caller's back: the caller passes ``Host``,
``X-Sdk-Date`` and (through ``with_content_sha256``) ``X-Sdk-Content-Sha256`` itself, and sends
exactly the headers it signed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote, unquote

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
CONTENT_SHA256_HEADER = "X-Sdk-Content-Sha256"


def format_sdk_date(moment: datetime) -> str:
    """Format a moment as the ``X-Sdk-Date`` header value (UTC, basic ISO 8601)."""
    return moment.astimezone(UTC).strftime(DATE_FORMAT)


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(path: str) -> str:
    """Percent-encode each segment of ``path`` and make sure it ends with ``/``."""
    encoded = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Sort decoded query pairs by key, then value, and join them encoded."""
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in sorted(pairs))


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Names the SDK signs: every header whose name has no ``_``, lower-cased and sorted."""
    return sorted(name.lower() for name in headers if "_" not in name)


def with_content_sha256(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` where the SDK adds it.

    The SDK adds it whenever a ``Content-Type`` header (that exact spelling) is set and is neither
    JSON nor BSON, whatever the body; the header is then signed and must be sent.
    """
    result = dict(headers)
    content_type = result.get("Content-Type")
    if content_type and not content_type.startswith(("application/json", "application/bson")):
        result[CONTENT_SHA256_HEADER] = UNSIGNED_PAYLOAD
    return result


def payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    """Hex SHA-256 of the body, or the value of ``X-Sdk-Content-Sha256`` when one is set.

    Like the SDK, the header value counts trimmed, and a blank one is ignored; the SDK reads it
    after re-encoding it from UTF-8 to ISO-8859-1, which only matters for non-ASCII values.
    """
    if not body:
        return EMPTY_BODY_SHA256
    declared = next(
        (str(v) for k, v in headers.items() if k.lower() == CONTENT_SHA256_HEADER.lower()), None
    )
    if declared is not None:
        trimmed = declared.strip().encode("utf-8").decode("iso-8859-1")
        if trimmed:
            return trimmed
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
) -> tuple[str, list[str]]:
    """Build the canonical request and the list of signed header names."""
    names = signed_header_names(headers)
    lowered = {name.lower(): str(value).strip() for name, value in headers.items()}
    header_block = "".join(f"{name}:{lowered[name]}\n" for name in names)
    text = "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            header_block,
            ";".join(names),
            payload_hash(headers, body),
        ]
    )
    return text, names


def signature(secret_key: str, sdk_date: str, canonical: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed by the secret key."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{sdk_date}\n{digest}"
    return hmac.new(
        secret_key.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def authorization_header(
    *,
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
) -> str:
    """The ``Authorization`` value for a request whose headers already hold ``X-Sdk-Date``.

    ``headers`` must be exactly the headers to sign (``Host``, ``X-Sdk-Date`` and the others);
    the caller sends them all.

    Raises:
        ValueError: when a key is empty, or ``X-Sdk-Date`` is missing or not in
            ``YYYYMMDDTHHMMSSZ`` form (the SDK rejects such a date too).
    """
    if not access_key or not secret_key:
        raise ValueError("access key and secret key are required")
    sdk_date = next((v for k, v in headers.items() if k.lower() == "x-sdk-date"), None)
    if sdk_date is None:
        raise ValueError("X-Sdk-Date must be set before signing")
    try:
        # The SDK parses the header and signs the date re-formatted, not the raw text.
        signed_date = datetime.strptime(sdk_date, DATE_FORMAT).strftime(DATE_FORMAT)
    except ValueError as error:
        raise ValueError(f"X-Sdk-Date {sdk_date!r} is not in {DATE_FORMAT} form") from error
    canonical, names = canonical_request(method, path, query, headers, body)
    sig = signature(secret_key, signed_date, canonical)
    return f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(names)}, Signature={sig}"


def parse_authorization(value: str) -> dict[str, str]:
    """Split ``SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…`` into its parts.

    Raises:
        ValueError: when the value is not of that shape.
    """
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        raise ValueError("unsupported signing algorithm")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise ValueError("malformed Authorization header")
        parts[key] = val
    if not {"Access", "SignedHeaders", "Signature"} <= parts.keys():
        raise ValueError("Authorization header lacks Access, SignedHeaders or Signature")
    return parts
