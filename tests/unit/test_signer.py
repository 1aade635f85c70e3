"""``wholeimage.ims.signer`` is byte-equal to the official SDK's ``SDK-HMAC-SHA256`` signer.

The referee is ``huaweicloudsdkcore.signer.signer.Signer`` (a test-only dependency): for many
generated requests both sides sign the same method, path, query, headers and body, and the
``Authorization`` values (and the canonical requests behind them) must match byte for byte.

Where the SDK adds headers itself (``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` for a non-JSON
content type), our caller adds them through ``with_content_sha256``; the SDK side gets the bare
headers, so that helper is refereed too.
"""

from __future__ import annotations

import hashlib
import json
import string
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from random import Random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wholeimage.ims.signer import (
    EMPTY_BODY_SHA256,
    UNSIGNED_PAYLOAD,
    authorization_header,
    canonical_query,
    canonical_request,
    canonical_uri,
    format_sdk_date,
    parse_authorization,
    payload_hash,
    signed_header_names,
    with_content_sha256,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

PARITY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

IMS_HOST = "ims.eu-de.otc.t-systems.com"
PROJECT_ID = "0123456789abcdef0123456789abcdef"
ACCESS_KEY = "AKEXAMPLE0000000000"
SECRET_KEY = "SKEXAMPLEsecretkey0000000000000000000000"
WHOLE_IMAGE_BODY = (
    b'{"name":"web-01-full","instance_id":"8c9a3b8e-6f0e-4f5e-9a51-1a2b3c4d5e6f",'
    b'"vault_id":"3b5c1d2e-0f9a-4b8c-8d7e-6f5a4b3c2d1e"}'
)


# ---------------------------------------------------------------------------------------------
# The SDK side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What ``Signer`` reads from ``BasicCredentials``: ``.ak`` and ``.sk``."""

    ak: str
    sk: str


class RecordingSigner(Signer):  # type: ignore[misc]
    """The SDK signer, remembering the canonical request it hashed into the string to sign."""

    canonical: str | None = None

    def _process_string_to_sign(self, canonical_request: str, time: datetime) -> str:
        self.canonical = canonical_request
        result: str = super()._process_string_to_sign(canonical_request, time)
        return result


@dataclass(frozen=True)
class SdkSigned:
    authorization: str
    canonical: str
    headers: dict[str, str]


def sdk_sign(
    *,
    access_key: str,
    secret_key: str,
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, Any]],
    headers: dict[str, str],
    body: bytes | str | None,
) -> SdkSigned:
    """Sign with the official SDK; it gets its own copies, since it mutates what it is given."""
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        query_params=sdk_query_params(query),
        header_params=dict(headers),
        body=body,
    )
    signer = RecordingSigner(Credentials(ak=access_key, sk=secret_key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        signer.sign(request)
    assert signer.canonical is not None
    sent = dict(request.header_params)
    return SdkSigned(
        authorization=sent.pop("Authorization"), canonical=signer.canonical, headers=sent
    )


def sdk_query_params(query: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A fresh copy of the SDK's query form: the SDK sorts list values in place."""
    return [(key, list(value) if isinstance(value, list) else value) for key, value in query]


def flatten_query(query: list[tuple[str, str | list[str]]]) -> list[tuple[str, str]]:
    """The SDK's ``(key, value-or-list-of-values)`` form as the decoded pairs ours takes."""
    return [
        (key, item)
        for key, value in query
        for item in (value if isinstance(value, list) else [value])
    ]


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

UNICODE_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
HEX_IDS = st.text("0123456789abcdef", min_size=32, max_size=32)
NON_ASCII_CHARACTER = st.characters(codec="utf-8", min_codepoint=0x80)
UNRESERVED_AND_SPECIAL = string.ascii_letters + string.digits + "-._~ +=:@!$&'()*,;?#[]"
# Valid escapes (also of "/", "%" and UTF-8), and broken ones that unquote leaves alone.
PERCENT_ESCAPES = ["%20", "%2F", "%2f", "%41", "%7E", "%C3%A9", "%E2%82%AC", "%25"]
PERCENT_ESCAPES += ["%zz", "%", "%2"]

path_token = st.one_of(
    st.sampled_from(list(UNRESERVED_AND_SPECIAL)),
    NON_ASCII_CHARACTER,
    st.sampled_from(PERCENT_ESCAPES),
)
path_segment = st.lists(path_token, max_size=6).map("".join)


@st.composite
def generated_paths(draw: st.DrawFn) -> str:
    segments = draw(st.lists(path_segment, min_size=1, max_size=5))
    trailing = "/" if draw(st.booleans()) else ""
    return "/" + "/".join(segments) + trailing


@st.composite
def api_paths(draw: st.DrawFn) -> str:
    project = draw(HEX_IDS)
    job = draw(HEX_IDS)
    template = draw(
        st.sampled_from(
            [
                "/v1/cloudimages/wholeimages/action",
                "/v1/cloudimages/wholeimages/action/",
                "/v1/{project}/jobs/{job}",
                "/v2/cloudimages",
                "/v3/auth/tokens",
                "/",
            ]
        )
    )
    return template.format(project=project, job=job)


paths = st.one_of(api_paths(), generated_paths())

query_text = st.one_of(
    UNICODE_TEXT,
    st.sampled_from(
        ["", "a b", "a+b", "a=b&c", "100%", "%20", "~tilde", "é", "€", "/", "__system__"]
    ),
)
queries = st.dictionaries(
    keys=query_text,
    values=st.one_of(query_text, st.lists(query_text, max_size=3)),
    max_size=5,
).map(lambda mapping: list(mapping.items()))

methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "get", "post"])

CONTENT_TYPES = [
    "application/json;charset=UTF-8",
    "application/json",
    "application/bson",
    "text/plain",
    "text/plain; charset=utf-8",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    " application/json",
    "Application/JSON",
    "",
]
# Values a caller might put in X-Sdk-Content-Sha256 itself: the SDK trims them, skips blank ones.
DECLARED_CONTENT_HASHES = [UNSIGNED_PAYLOAD, f" {UNSIGNED_PAYLOAD} ", "", "  ", "é", "abc"]
whitespace = st.sampled_from(["", " ", "  ", "\t", " \t "])
header_value = st.one_of(
    UNICODE_TEXT,
    st.text(string.ascii_letters + string.digits + "+/=._-", max_size=40),
)


def padded(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Values with optional surrounding whitespace, which both sides must trim."""
    return st.tuples(whitespace, values, whitespace).map("".join)


content_types = st.one_of(st.sampled_from(CONTENT_TYPES), padded(st.sampled_from(CONTENT_TYPES)))


sdk_dates = st.datetimes(
    min_value=datetime(2000, 1, 1),  # naive bounds; the zone comes from ``timezones``
    max_value=datetime(2099, 12, 31),
    timezones=st.just(UTC),
).map(format_sdk_date)


@st.composite
def header_sets(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """The host, and headers as a caller would set them before signing."""
    host = draw(st.sampled_from([IMS_HOST, "ims.eu-de.otc.t-systems.com:443", "iam.example.com"]))
    headers: dict[str, str] = {draw(st.sampled_from(["Host", "host"])): draw(padded(st.just(host)))}
    headers[draw(st.sampled_from(["X-Sdk-Date", "x-sdk-date", "X-SDK-DATE"]))] = draw(sdk_dates)
    if draw(st.booleans()):
        name = draw(st.sampled_from(["Content-Type", "Content-Type", "content-type"]))
        headers[name] = draw(content_types)
    if draw(st.booleans()):
        headers["X-Project-Id"] = draw(padded(HEX_IDS))
    if draw(st.booleans()):
        headers["X-Security-Token"] = draw(padded(header_value))
    if draw(st.booleans()):
        underscored = draw(st.sampled_from(["X_Custom_Header", "x_request_id", "_", "X-Trace_Id"]))
        headers[underscored] = draw(header_value)
    if draw(st.integers(0, 4)) == 0:
        name = draw(st.sampled_from(["X-Sdk-Content-Sha256", "x-sdk-content-sha256"]))
        headers[name] = draw(st.sampled_from(DECLARED_CONTENT_HASHES))
    extra_names = st.tuples(
        st.sampled_from(string.ascii_letters),
        st.text(string.ascii_letters + string.digits + "_-", max_size=15),
    ).map("".join)
    for name, value in draw(st.dictionaries(extra_names, padded(header_value), max_size=3)).items():
        # Extra headers never replace a header set above nor add a second, competing date.
        if name not in headers and name.lower() != "x-sdk-date":
            headers[name] = value
    return host, headers


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | UNICODE_TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(UNICODE_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)
# (what the SDK is given, the bytes we hash)
bodies: st.SearchStrategy[tuple[bytes | str | None, bytes]] = st.one_of(
    st.just((b"", b"")),
    st.just((None, b"")),
    st.just(("", b"")),
    st.just((WHOLE_IMAGE_BODY, WHOLE_IMAGE_BODY)),
    json_values.map(lambda value: json.dumps(value).encode()).map(lambda raw: (raw, raw)),
    st.binary(min_size=1, max_size=200).map(lambda raw: (raw, raw)),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=50).map(
        lambda text: (text, text.encode("utf-8"))
    ),
)
access_keys = st.text(string.ascii_uppercase + string.digits, min_size=20, max_size=20)
secret_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


@dataclass(frozen=True)
class GeneratedRequest:
    access_key: str
    secret_key: str
    method: str
    host: str
    path: str
    sdk_query: list[tuple[str, Any]]
    our_query: list[tuple[str, str]]
    headers: dict[str, str]
    sdk_body: bytes | str | None
    body: bytes


@st.composite
def generated_requests(draw: st.DrawFn) -> GeneratedRequest:
    host, headers = draw(header_sets())
    sdk_query = draw(queries)
    sdk_body, body = draw(bodies)
    return GeneratedRequest(
        access_key=draw(access_keys),
        secret_key=draw(secret_keys),
        method=draw(methods),
        host=host,
        path=draw(paths),
        sdk_query=sdk_query,
        # Our side takes decoded pairs in any order: hand them over shuffled.
        our_query=draw(st.permutations(flatten_query(sdk_query))),
        headers=headers,
        sdk_body=sdk_body,
        body=body,
    )


def sign_both(request: GeneratedRequest) -> tuple[SdkSigned, dict[str, str], str, str]:
    """The SDK's result, and our headers, canonical request and Authorization for the same request."""
    ours_headers = with_content_sha256(request.headers)
    canonical, _ = canonical_request(
        request.method, request.path, request.our_query, ours_headers, request.body
    )
    authorization = authorization_header(
        access_key=request.access_key,
        secret_key=request.secret_key,
        method=request.method,
        path=request.path,
        query=request.our_query,
        headers=ours_headers,
        body=request.body,
    )
    sdk = sdk_sign(
        access_key=request.access_key,
        secret_key=request.secret_key,
        method=request.method,
        host=request.host,
        path=request.path,
        query=request.sdk_query,
        headers=request.headers,
        body=request.sdk_body,
    )
    return sdk, ours_headers, canonical, authorization


# ---------------------------------------------------------------------------------------------
# Parity over generated requests
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_requests())
def test_generated_requests_are_signed_byte_equal_to_the_sdk(generated: GeneratedRequest) -> None:
    # Given a generated request, When both sides sign it
    sdk, ours_headers, canonical, authorization = sign_both(generated)

    # Then the canonical request hashed into the string to sign is the same text,
    assert canonical == sdk.canonical
    # the Authorization value is the same bytes,
    assert authorization == sdk.authorization
    # the SDK added no header (Host, date, content hash) that our caller does not send too,
    assert sdk.headers.keys() == ours_headers.keys()
    # and what we sign is every header we send whose name has no underscore.
    signed = parse_authorization(authorization)["SignedHeaders"]
    assert signed == ";".join(sorted(n.lower() for n in ours_headers if "_" not in n))


@pytest.mark.slow
@PARITY
@given(paths)
def test_canonical_uri_equals_the_sdks_for_any_path(path: str) -> None:
    # Given
    request = SdkRequest(resource_path=path)

    # When
    ours = canonical_uri(path)

    # Then
    assert ours == Signer(Credentials(ak="a", sk="s"))._process_canonical_uri(request)
    assert ours.endswith("/")


@pytest.mark.slow
@PARITY
@given(queries, st.randoms(use_true_random=False))
def test_canonical_query_equals_the_sdks_whatever_the_pair_order(
    query: list[tuple[str, str | list[str]]], rng: Random
) -> None:
    # Given decoded pairs in some order, and the SDK's form of them (repeated keys as lists)
    pairs = flatten_query(query)
    rng.shuffle(pairs)
    request = SdkRequest(query_params=sdk_query_params(query))

    # When
    ours = canonical_query(pairs)

    # Then
    assert ours == Signer.process_canonical_query_string(request)


@pytest.mark.slow
@PARITY
@given(
    st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE"]),
    st.one_of(content_types, UNICODE_TEXT),
)
def test_unsigned_payload_header_is_added_exactly_where_the_sdk_adds_it(
    name: str, content_type: str
) -> None:
    # Given
    headers = {"Host": IMS_HOST, name: content_type}
    request = SdkRequest(header_params=dict(headers))

    # When
    ours = with_content_sha256(headers)
    Signer._process_content_header(request)

    # Then
    assert ours == request.header_params
    assert headers == {"Host": IMS_HOST, name: content_type}  # the input is left alone


# ---------------------------------------------------------------------------------------------
# Known vectors
# ---------------------------------------------------------------------------------------------


def whole_image_headers() -> dict[str, str]:
    return {
        "Host": IMS_HOST,
        "Content-Type": "application/json;charset=UTF-8",
        "X-Project-Id": PROJECT_ID,
        "X-Sdk-Date": "20240101T000000Z",
    }


def test_canonical_request_for_creating_a_whole_image_is_exactly_this_text() -> None:
    # Given
    headers = whole_image_headers()

    # When
    canonical, names = canonical_request(
        "POST", "/v1/cloudimages/wholeimages/action", [], headers, WHOLE_IMAGE_BODY
    )

    # Then
    assert canonical == (
        "POST\n"
        "/v1/cloudimages/wholeimages/action/\n"
        "\n"
        "content-type:application/json;charset=UTF-8\n"
        "host:ims.eu-de.otc.t-systems.com\n"
        "x-project-id:0123456789abcdef0123456789abcdef\n"
        "x-sdk-date:20240101T000000Z\n"
        "\n"
        "content-type;host;x-project-id;x-sdk-date\n"
        "7970252a9727dd8c5650dd6f3d84641a057215483c1e86a12e1b404f1b1dcc40"
    )
    assert names == ["content-type", "host", "x-project-id", "x-sdk-date"]


def test_authorization_for_creating_a_whole_image_is_the_known_value_the_sdk_also_gives() -> None:
    # Given
    headers = whole_image_headers()
    expected = (
        "SDK-HMAC-SHA256 Access=AKEXAMPLE0000000000, "
        "SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
        "Signature=29003ed64049c2d5bf416f262a586007b5b4cfcb72dd64e27ff32c9d8df4ff8b"
    )

    # When
    ours = authorization_header(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        method="POST",
        path="/v1/cloudimages/wholeimages/action",
        query=[],
        headers=headers,
        body=WHOLE_IMAGE_BODY,
    )
    sdk = sdk_sign(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        method="POST",
        host=IMS_HOST,
        path="/v1/cloudimages/wholeimages/action",
        query=[],
        headers=headers,
        body=WHOLE_IMAGE_BODY,
    )

    # Then
    assert ours == expected
    assert sdk.authorization == expected


def test_canonical_query_sorts_by_key_then_value_and_encodes_everything_but_tilde() -> None:
    # Given
    pairs = [("marker", "b c"), ("limit", "10"), ("marker", "a/b"), ("name", "é~")]

    # When
    query = canonical_query(pairs)

    # Then
    assert query == "limit=10&marker=a%2Fb&marker=b%20c&name=%C3%A9~"


def test_canonical_uri_re_encodes_each_segment_and_ends_with_a_slash() -> None:
    assert canonical_uri("/v1/a b/%41~/é") == "/v1/a%20b/A~/%C3%A9/"
    assert canonical_uri("/v1/jobs/") == "/v1/jobs/"
    assert canonical_uri("/") == "/"


def test_empty_body_hash_is_the_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").hexdigest() == EMPTY_BODY_SHA256
    assert payload_hash({}, b"") == EMPTY_BODY_SHA256
    # An empty body hashes as empty even when a content hash is declared.
    assert payload_hash({"X-Sdk-Content-Sha256": UNSIGNED_PAYLOAD}, b"") == EMPTY_BODY_SHA256


def test_payload_hash_uses_a_declared_content_hash_trimmed_and_ignores_a_blank_one() -> None:
    body = b"plain text"
    declared = payload_hash({"x-sdk-content-sha256": f"  {UNSIGNED_PAYLOAD} "}, body)
    blank = payload_hash({"X-Sdk-Content-Sha256": "  "}, body)
    assert declared == UNSIGNED_PAYLOAD
    assert blank == hashlib.sha256(body).hexdigest()


def test_headers_with_an_underscore_are_not_signed() -> None:
    headers = {"Host": IMS_HOST, "X_Custom_Header": "v", "X-Sdk-Date": "20240101T000000Z"}
    assert signed_header_names(headers) == ["host", "x-sdk-date"]


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 1, 1, tzinfo=UTC), "20240101T000000Z"),
        (datetime(2024, 1, 1, 2, 30, 5, tzinfo=timezone(timedelta(hours=2))), "20240101T003005Z"),
    ],
)
def test_sdk_date_is_formatted_in_utc(moment: datetime, expected: str) -> None:
    assert format_sdk_date(moment) == expected


# ---------------------------------------------------------------------------------------------
# Parsing and errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_requests())
def test_parse_authorization_gives_back_what_authorization_header_put_in(
    generated: GeneratedRequest,
) -> None:
    # Given
    headers = with_content_sha256(generated.headers)
    value = authorization_header(
        access_key=generated.access_key,
        secret_key=generated.secret_key,
        method=generated.method,
        path=generated.path,
        query=generated.our_query,
        headers=headers,
        body=generated.body,
    )

    # When
    parts = parse_authorization(value)

    # Then
    assert parts["Access"] == generated.access_key
    assert parts["SignedHeaders"].split(";") == signed_header_names(headers)
    assert len(parts["Signature"]) == 64
    assert value == (
        f"SDK-HMAC-SHA256 Access={parts['Access']}, "
        f"SignedHeaders={parts['SignedHeaders']}, Signature={parts['Signature']}"
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "SDK-HMAC-SHA256",
        "AWS4-HMAC-SHA256 Access=a, SignedHeaders=host, Signature=00",
        "SDK-HMAC-SM3 Access=a, SignedHeaders=host, Signature=00",
        "SDK-HMAC-SHA256 Access=a, SignedHeaders=host",
        "SDK-HMAC-SHA256 Access=a SignedHeaders=host Signature=00",
        "SDK-HMAC-SHA256 Access=a, SignedHeaders, Signature=00",
        "Bearer token",
    ],
)
def test_parse_authorization_rejects_a_malformed_value(value: str) -> None:
    with pytest.raises(ValueError, match=r"algorithm|malformed|lacks"):
        parse_authorization(value)


def test_authorization_header_refuses_to_sign_without_a_date() -> None:
    with pytest.raises(ValueError, match="X-Sdk-Date"):
        authorization_header(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            method="GET",
            path="/v3/auth/tokens",
            query=[],
            headers={"Host": IMS_HOST},
            body=b"",
        )


@pytest.mark.parametrize(
    "sdk_date",
    [
        " 20240101T000000Z",
        "20240101T000000Z ",
        "2024-01-01T00:00:00Z",
        "20240101T000000",
        "yesterday",
    ],
)
def test_a_date_the_sdk_cannot_parse_is_refused_by_both(sdk_date: str) -> None:
    # Given
    headers = {"Host": IMS_HOST, "X-Sdk-Date": sdk_date}

    # When / Then
    with pytest.raises(ValueError, match="X-Sdk-Date"):
        authorization_header(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            method="GET",
            path="/",
            query=[],
            headers=headers,
            body=b"",
        )
    with pytest.raises(ValueError, match=r"time data|unconverted data"):
        sdk_sign(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            method="GET",
            host=IMS_HOST,
            path="/",
            query=[],
            headers=headers,
            body=b"",
        )


def test_a_loosely_written_date_is_signed_as_the_sdk_re_formats_it() -> None:
    # Given a date strptime accepts without zero padding
    headers = {"Host": IMS_HOST, "X-Sdk-Date": "2024111T1200Z"}
    common: dict[str, Any] = {
        "method": "GET",
        "path": "/",
        "query": [],
        "headers": headers,
        "body": b"",
    }

    # When
    ours = authorization_header(access_key=ACCESS_KEY, secret_key=SECRET_KEY, **common)
    sdk = sdk_sign(access_key=ACCESS_KEY, secret_key=SECRET_KEY, host=IMS_HOST, **common)

    # Then
    assert ours == sdk.authorization


@pytest.mark.parametrize(("access_key", "secret_key"), [("", SECRET_KEY), (ACCESS_KEY, "")])
def test_an_empty_key_is_refused_by_both(access_key: str, secret_key: str) -> None:
    common: dict[str, Any] = {
        "access_key": access_key,
        "secret_key": secret_key,
        "method": "GET",
        "path": "/",
        "query": [],
        "headers": {"Host": IMS_HOST, "X-Sdk-Date": "20240101T000000Z"},
        "body": b"",
    }
    with pytest.raises(ValueError, match="key"):
        authorization_header(**common)
    with pytest.raises(ValueError, match="required"):
        sdk_sign(host=IMS_HOST, **common)
