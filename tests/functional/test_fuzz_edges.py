"""Issue 9's figure: no request makes ``create`` or ``notify`` crash, no answer holds a secret.

At least 10,000 ``create`` and 3,000 ``notify`` requests, made by a seeded generator (``SEED``;
``WHOLEIMAGE_FUZZ_SEED`` tries another; the digest printed with ``-s`` shows two runs sent the
same requests), go through functions-framework's own apps (``create_app(...).test_client()``) as
a WSGI server hands them over: raw header values (CR/LF, NUL, UTF-8 read as Latin-1), raw query
strings and raw bytes. They are valid bodies built after ``schemas/create-request.schema.json``
and ``schemas/job-result.schema.json``, and mutations of them: wrong types, missing and unknown
members, lengths at and past each bound, lone surrogates (JSON escapes, and bytes that are no
UTF-8), nesting from 10 to 5,000 levels, huge integers and floats (``1e400``, ``NaN``,
``Infinity``), duplicate keys, BOMs, empty and non-JSON bodies, wrong or missing
``Content-Type``, binary and structured CloudEvents with empty, non-string or huge
``id``/``source``/``type``, huge headers, odd ``Idempotency-Key`` values and tokens, other
methods, odd ``?job_id=``, ``?limit=`` and ``?redrive=`` values.

IMS is the real ``HttpImsClient``, AK/SK-signed with a security token, over an
``httpx.MockTransport``; the webhook receivers are a ``MockTransport`` behind the ``webhooks``
client. Both sometimes refuse quoting the request back: headers (``Authorization`` with its
``Access=`` and ``Signature=``, ``X-Security-Token``), URL (the webhook's token) and body.

Every answer is checked:

- no request raised (``got_request_exception``), none got functions-framework's crash answer or a
  traceback, and every status is 2xx or 4xx;
- a 4xx is a JSON error body with a machine-readable ``code`` (``wholeimage.errors``) and details
  that each have a path and a message; a 400 ``invalid_request`` or ``unsupported_media_type``
  names at least one; a mutation that breaks one field, sent plainly, is answered with that
  field's JSON path; a schema-valid body, sent plainly, is never ``invalid_request``;
- no answer (body or header) and no log line holds a configured secret (AK, SK, security token,
  API token, webhook URLs, their tokens, signing secrets), percent-encoded or not, nor a request
  signature IMS saw.

``test_a_failing_ims_and_failing_receivers_still_crash_nothing`` is the mixed case: IMS also drops
connections, times out, throttles (with odd ``Retry-After`` values) through the retries, refuses
our credentials and answers bodies that cannot be read; the receivers do the same. A 5xx is then
allowed only from ``create`` and only as one of the documented upstream mappings of
``wholeimage.errors`` (README, ``create``'s answer table), each with its code:

- 502 ``upstream_error``: IMS answered something unexpected or unreadable;
- 502 ``upstream_auth_failed``: IMS refused *our* credentials;
- 503 ``upstream_unavailable``, with ``Retry-After``: throttled or down through the retries;
- 504 ``upstream_timeout``.

Never a 500 (``internal``; nor ``misconfigured``: the configuration is good), never a traceback,
and no 5xx at all from ``notify``, where a failed delivery is a retry counted in its 200 summary.
What the IMS client makes of an unreadable answer (today a 502, or a ``202 SUBMIT_UNCERTAIN``) is
either way an allowed answer.

Rerun, with the counts per status: ``.venv/bin/pytest tests/functional/test_fuzz_edges.py -q -s``
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import string
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from flask import Flask, got_request_exception
from flask.testing import FlaskClient
from functions_framework import create_app

from tests.fakes import make_settings
from wholeimage import notify
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.ims.auth import AkSkAuth
from wholeimage.ims.client import HttpImsClient, RetryPolicy
from wholeimage.jsonbody import member_path
from wholeimage.logs import REDACTED, JsonFormatter, register_secrets
from wholeimage.notify import ChannelLimiters
from wholeimage.store.sqlite import SqliteJobStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
SEED = int(os.environ.get("WHOLEIMAGE_FUZZ_SEED", "20260909"))
CREATE_REQUESTS = 10_000
NOTIFY_REQUESTS = 3_000
MIXED_CREATE_REQUESTS = 2_000
MIXED_NOTIFY_REQUESTS = 1_000

# Recognisable secrets: none of them may appear in any answer or log line.
PROJECT = "0123456789abcdef0123456789abcdef"
IMS_URL = "https://ims.fuzz.example"
AK = "AKFUZZ0ACCESS0KEY0123456"
SK = "skFuzzSecretKey0123456789abcdefXYZ"
# Temporary credentials' tokens are long and base64-like: "+", "/" and "=" change when quoted.
SECURITY_TOKEN = "fuzzSecurityToken0+/" + "AbCdEf0123456789" * 8 + "=="
API_TOKEN = "fuzz-api-token-0123456789abcdef"
HOOK_TOKEN = "fuzzReceiverToken0123456789"
HOOK_URL = f"https://receiver.fuzz.example/hooks/{HOOK_TOKEN}"
WHSEC = "whsec_" + base64.b64encode(bytes(range(80, 112))).decode()
DING_TOKEN = "fuzzdingtalk0access0token0123456789abcdef"
DING_URL = f"https://oapi.dingtalk.com/robot/send?access_token={DING_TOKEN}"
DING_SECRET = "SECfuzzDingtalkSigningSecret0123456789"
SECRETS = (AK, SK, SECURITY_TOKEN, API_TOKEN, HOOK_TOKEN, HOOK_URL, WHSEC, DING_TOKEN, DING_SECRET)
SECRET_FORMS = sorted(
    {form for secret in SECRETS for form in (secret, quote(secret), quote(secret, safe=""))}
    | {WHSEC[6:]}
)
SIGNATURE = re.compile(r"Signature=([0-9a-f]{64})")
HEX64 = re.compile(r"[0-9a-f]{64}")
# Every signature the fake IMS saw: none may come back either.
SEEN_SIGNATURES: set[str] = set()

# The documented 5xx answers of an upstream failure (wholeimage.errors), for the mixed run.
UPSTREAM_ANSWERS = frozenset(
    {
        (502, "upstream_error"),
        (502, "upstream_auth_failed"),
        (503, "upstream_unavailable"),
        (504, "upstream_timeout"),
    }
)
CODE = re.compile(r"[a-z][a-z_]*")
# Where a detail may point: the body (a JSON path), a header or a query parameter.
WHERE = re.compile(r"^(\$|header:|query:)")
VALIDATION_CODES = ("invalid_request", "unsupported_media_type")


# === requests and answers ========================================================================


@dataclass
class Call:
    """One HTTP request as a WSGI server hands it to the app: raw header values and query."""

    case: str
    method: str = "POST"
    body: bytes = b""
    query: str = ""
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    # A mutation that breaks one field, sent plainly: the 400 must name this path.
    expect_path: str | None = None
    # A schema-valid body, sent plainly: never a 400 invalid_request.
    valid: bool = False

    def compact(self) -> str:
        """The request in at most 200 characters, for a failure report."""
        headers = " ".join(f"{name}={value[:24]!r}" for name, value in self.headers.items())
        where = f"{self.path}?{self.query[:40]!r}"
        return f"[{self.case}] {self.method} {where} {headers} {self.body[:80]!r}"[:200]

    def fingerprint(self) -> bytes:
        return repr((self.method, self.path, self.query, self.headers, self.body)).encode()


def latin_1(value: str) -> str:
    """``value`` as a WSGI server hands it over: its UTF-8 bytes, each read as Latin-1."""
    return value.encode("utf-8").decode("latin-1")


def environ_of(call: Call) -> dict[str, str]:
    """The WSGI environ entries of ``call`` (PEP 3333): Latin-1 strings, unchecked."""
    environ = {"QUERY_STRING": latin_1(call.query)}
    for name, value in call.headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = latin_1(
            value
        )
    return environ


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raised: list[str]

    def text(self) -> str:
        """Headers and body, to look for secrets and tracebacks in."""
        headers = "\n".join(f"{name}: {value}" for name, value in self.headers)
        return headers + "\n\n" + self.body.decode("utf-8", "replace")

    def error(self) -> Any:
        """The ``error`` member of a JSON body, if there is one."""
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        return payload.get("error") if isinstance(payload, dict) else None


def send(client: FlaskClient, call: Call, raised: list[str]) -> Answer:
    response = client.open(
        call.path, method=call.method, data=call.body, environ_overrides=environ_of(call)
    )
    answer = Answer(
        response.status_code, list(response.headers.items()), response.get_data(), raised[:]
    )
    raised.clear()
    return answer


# === text and values =============================================================================

LETTERS = string.ascii_letters + string.digits
NAME_CHARS = LETTERS + " ._-" + "图像备份镜像"
TAG_CHARS = LETTERS + "_-" + "标签"
FREE_TEXT = LETTERS + " .,;:!?'\"()[]{}#@&%$+*~^`|\\/=" + "éüß中文😀\u200b\u202e\t"
IDENTIFIER = LETTERS + "_-"
WRONG_VALUES: list[Any] = [None, 0, -1, 1.5, True, False, [], {}, [1, 2], {"a": 1}, "x", ""]
JSON_TYPE = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}
UUID_1 = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"
UUID_2 = "3b5816b5-f29c-4172-9d9a-76c719a659ce"

# A broken body: its bytes, the JSON path its 400 must name (when one is sure), the case's name.
Broken = tuple[bytes, str | None, str]


def text(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def a_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def a_length(rng: random.Random, most: int, least: int = 0) -> int:
    """Lengths at the bounds more often than in between."""
    return rng.choice([least, least, least + 1, most - 1, most, most, rng.randint(least, most)])


def no_edge_spaces(value: str) -> str:
    if value.startswith(" "):
        value = "a" + value[1:]
    if value.endswith(" "):
        value = value[:-1] + "a"
    return value


def wrong_value(rng: random.Random, json_types: set[str]) -> Any:
    """A value of none of ``json_types`` (an integer is also a number, for the schema)."""
    while True:
        value = rng.choice(WRONG_VALUES)
        kind = JSON_TYPE[type(value)]
        if kind not in json_types and not (kind == "integer" and "number" in json_types):
            return value


def dumps(value: Any) -> bytes:
    """``value`` as JSON: as UTF-8 text or with ``\\u`` escapes, by the parity of its length."""
    escaped = json.dumps(value)
    return escaped.encode() if len(escaped) % 2 else json.dumps(value, ensure_ascii=False).encode()


def with_member(body: dict[str, Any], member: str, raw: bytes) -> bytes:
    """``body`` with one more member, written as ``raw`` JSON text (json.dumps never would)."""
    body.pop(member, None)
    start = dumps(body)[:-1]
    return start + (b", " if len(body) else b"") + json.dumps(member).encode() + b": " + raw + b"}"


def nested(depth: int, rng: random.Random) -> tuple[str, bool]:
    """``depth`` arrays or objects, one inside the other; whether they are arrays."""
    if rng.random() < 0.5:
        return "[" * depth + "1" + "]" * depth, True
    return '{"a":' * depth + "1" + "}" * depth, False


# === create bodies ===============================================================================

CREATE_TYPES = {
    "name": "string",
    "description": "string",
    "tags": "array",
    "image_tags": "array",
    "instance_id": "string",
    "vault_id": "string",
    "backup_id": "string",
    "whole_image_type": "string",
    "enterprise_project_id": "string",
    "max_ram": "integer",
    "min_ram": "integer",
}
SOURCE_MEMBERS = ("instance_id", "vault_id", "backup_id", "whole_image_type")


def valid_create(rng: random.Random) -> dict[str, Any]:
    """A body ``schemas/create-request.schema.json`` accepts, from one of the three sources."""
    body: dict[str, Any] = {"name": no_edge_spaces(text(rng, NAME_CHARS, a_length(rng, 128, 1)))}
    source = rng.choice(["ecs", "ecs", "csbs", "cbr"])
    if source == "ecs":
        body["instance_id"] = a_uuid(rng)
        if rng.random() < 0.4:
            body["vault_id"] = a_uuid(rng)
    else:
        body["backup_id"] = a_uuid(rng)
        if source == "cbr" or rng.random() < 0.3:
            body["whole_image_type"] = "CBR" if source == "cbr" else "CSBS"
    if rng.random() < 0.4:
        alphabet = FREE_TEXT.replace("<", "").replace(">", "").replace("\t", "")
        body["description"] = text(rng, alphabet, a_length(rng, 1024))
    roll = rng.random()
    # At most 9 tags: wholeimage adds its marker as the 10th IMS allows (docs/reconcile.md).
    if roll < 0.25:
        keys = dict.fromkeys(
            text(rng, TAG_CHARS, a_length(rng, 36, 1)) for _ in range(a_length(rng, 9))
        )
        body["tags"] = [f"{key}.{text(rng, TAG_CHARS + '.', a_length(rng, 43))}" for key in keys]
    elif roll < 0.5:
        # Huawei Cloud's characters (the default WHOLEIMAGE_CLOUD; docs/ims-api.md §1.3).
        keys = dict.fromkeys(
            text(rng, TAG_CHARS, a_length(rng, 36, 1)) for _ in range(a_length(rng, 9))
        )
        body["image_tags"] = [
            {"key": key, "value": text(rng, TAG_CHARS + ".", a_length(rng, 43))} for key in keys
        ]
    if rng.random() < 0.2:
        body["enterprise_project_id"] = rng.choice(["0", a_uuid(rng)])
    if rng.random() < 0.3:
        body["min_ram"] = low = rng.choice([0, 1, 1024, 2**31 - 1, 10**30])
        if rng.random() < 0.5:
            body["max_ram"] = low + rng.choice([0, 1, 4096])
    return body


TAG_MEMBERS = ("tags", "image_tags")


def pair(key: str, value: str) -> dict[str, list[dict[str, str]]]:
    return {"image_tags": [{"key": key, "value": value}]}


# (case, the path its 400 names or None, members dropped, members set): one rule broken each.
RULE_BREAKS: list[tuple[str, str | None, tuple[str, ...], dict[str, Any]]] = [
    ("too-long:name", "$.name", (), {"name": "n" * 129}),
    ("too-long:description", "$.description", (), {"description": "d" * 1025}),
    ("too-many:tags", "$.tags", TAG_MEMBERS, {"tags": [f"k{index}.v" for index in range(11)]}),
    ("too-long:tag-key", "$.tags[0]", TAG_MEMBERS, {"tags": ["k" * 37 + ".v"]}),
    ("too-long:tag-value", "$.tags[0]", TAG_MEMBERS, {"tags": ["k." + "v" * 44]}),
    ("too-long:image-tag-key", "$.image_tags[0].key", TAG_MEMBERS, pair("k" * 37, "v")),
    ("too-long:image-tag-value", "$.image_tags[0].value", TAG_MEMBERS, pair("k", "v" * 44)),
    ("empty:image-tag-key", "$.image_tags[0].key", TAG_MEMBERS, pair("", "v")),
    ("bad-text:image-tag", "$.image_tags[0].value", TAG_MEMBERS, pair("k", "a=b")),
    ("bad-text:tag", "$.tags[0]", TAG_MEMBERS, {"tags": ["k/v.x"]}),
    ("bad-text:name-lead", "$.name", (), {"name": " lead"}),
    ("bad-text:name-trail", "$.name", (), {"name": "trail "}),
    ("bad-text:name", "$.name", (), {"name": "a<b/c"}),
    ("bad-text:name-lf", "$.name", (), {"name": "a\nb"}),
    ("bad-text:name-nul", "$.name", (), {"name": "a\u0000b"}),
    ("bad-text:name-emoji", "$.name", (), {"name": "a😀b"}),
    ("bad-text:description-cr", "$.description", (), {"description": "a\rb"}),
    ("bad-text:description-lt", "$.description", (), {"description": "<script>"}),
    ("bad-text:image-tag-space", "$.image_tags[0].key", TAG_MEMBERS, pair("a b", "v")),
    # Ids have no documented format: only what the store holds (docs/ims-api.md §1.3).
    ("bad-id:lf", "$.instance_id", SOURCE_MEMBERS, {"instance_id": UUID_1 + "\n"}),
    ("bad-id:nul", "$.backup_id", SOURCE_MEMBERS, {"backup_id": "b\u0000"}),
    ("bad-id:too-long", "$.backup_id", SOURCE_MEMBERS, {"backup_id": "b" * 256}),
    ("bad-id:vault", "$.vault_id", SOURCE_MEMBERS, {"instance_id": UUID_1, "vault_id": ""}),
    (
        "bad-enum:type",
        "$.whole_image_type",
        SOURCE_MEMBERS,
        {"backup_id": UUID_1, "whole_image_type": "cbr"},
    ),
    ("bad:enterprise-project", "$.enterprise_project_id", (), {"enterprise_project_id": "1"}),
    ("conflict:two-sources", None, (), {"instance_id": UUID_1, "backup_id": UUID_2}),
    ("conflict:both-tags", None, (), {"tags": ["a.1"], **pair("a", "1")}),
    (
        "conflict:type-without-backup",
        "$.whole_image_type",
        SOURCE_MEMBERS,
        {"instance_id": UUID_1, "whole_image_type": "CBR"},
    ),
    (
        "conflict:vault-without-instance",
        "$.vault_id",
        SOURCE_MEMBERS,
        {"backup_id": UUID_1, "vault_id": UUID_2},
    ),
    ("conflict:tag-key-twice", "$.tags[1]", TAG_MEMBERS, {"tags": ["same.1", "same.2"]}),
    (
        "conflict:image-tag-key-twice",
        "$.image_tags[1].key",
        TAG_MEMBERS,
        {"image_tags": [{"key": "k", "value": "1"}, {"key": "k", "value": "2"}]},
    ),
    ("negative:min_ram", "$.min_ram", (), {"min_ram": -1}),
    ("missing:name", "$.name", ("name",), {}),
    ("missing:source", None, SOURCE_MEMBERS, {}),
]

# Number tokens json.dumps would never write, each as min_ram, and the path its 400 names.
NUMBERS: list[tuple[str, str | None]] = [
    ("1e400", "$.min_ram"),  # infinity, once read
    ("-1e400", "$.min_ram"),
    ("NaN", "$.min_ram"),
    ("Infinity", "$.min_ram"),
    ("-Infinity", "$.min_ram"),
    ("1.5", "$.min_ram"),
    ("1e20", "$.min_ram"),  # an integer to the schema, too big a float for the model
    ("1e300", "$.min_ram"),
    ("1" + "0" * 400 + ".0", "$.min_ram"),
    ("9" * 4301, "$"),  # more digits than Python reads
    ("9" * 20_000, "$"),
    ("9" * 4300, None),  # a valid integer
    ("-0", None),
    ("1.0", None),
    ("1e3", None),
    ("1E+2", None),
    ("0." + "0" * 5000 + "1", None),  # read as a double, 0.0: a whole number to Python
]


def wrong_type(rng: random.Random, body: dict[str, Any]) -> Broken:
    member = rng.choice(sorted(CREATE_TYPES))
    body[member] = wrong_value(rng, {CREATE_TYPES[member]})
    return dumps(body), f"$.{member}", f"wrong-type:{member}"


def wrong_item_type(rng: random.Random, body: dict[str, Any]) -> Broken:
    body.pop("tags", None)
    body.pop("image_tags", None)
    if rng.random() < 0.5:
        member = rng.choice(["key", "value"])
        body["image_tags"] = [{"key": "k", "value": "v"}, {"key": "k2", "value": "v"}]
        body["image_tags"][1][member] = wrong_value(rng, {"string"})
        return dumps(body), f"$.image_tags[1].{member}", "wrong-type:image_tags"
    body["tags"] = ["a.1", wrong_value(rng, {"string"})]
    return dumps(body), "$.tags[1]", "wrong-type:tags"


def unknown_member(rng: random.Random, body: dict[str, Any]) -> Broken:
    member = rng.choice(["extra", "", " ", "a.b", "a'b", "Name", "ü", "\u0000", "$ref", "x" * 1000])
    body[member] = rng.choice(WRONG_VALUES)
    return dumps(body), member_path("$", member), "unknown-member"


def rule_break(rng: random.Random, body: dict[str, Any]) -> Broken:
    case, path, dropped, members = rng.choice(RULE_BREAKS)
    for member in dropped:
        body.pop(member, None)
    body.update(members)
    return dumps(body), path, case


def number(rng: random.Random, body: dict[str, Any]) -> Broken:
    token, path = rng.choice(NUMBERS)
    body.pop("max_ram", None)
    return with_member(body, "min_ram", token.encode()), path, f"number:{token[:12]}"


def surrogate(rng: random.Random, body: dict[str, Any]) -> Broken:
    """A lone surrogate as a JSON escape (text that is no Unicode), in a value or a member name."""
    escape = rng.choice(["\\ud800", "\\udfff", "\\udc00x", "x\\ud83d", "\\ud83d\\ud83d"]).encode()
    where = rng.randrange(4)
    if where == 0:
        return with_member(body, "description", b'"' + escape + b'"'), "$.description", "surrogate"
    if where == 1:
        tag = b'[{"key": "k", "value": "' + escape + b'"}]'
        body.pop("tags", None)
        return with_member(body, "image_tags", tag), "$.image_tags[0].value", "surrogate:tag"
    if where == 2:
        raw = dumps(body)[:-1] + b', "' + escape + b'": 1}'
        return raw, None, "surrogate:member"  # its path spells the escape: see test_jsonbody
    return with_member(body, "name", b'"a' + escape + b'"'), "$.name", "surrogate:name"


def not_utf8(rng: random.Random, body: dict[str, Any]) -> Broken:
    """Bytes that are no UTF-8 inside a string: a stray byte, a cut, an encoded surrogate.

    json.loads reads an encoded surrogate (CESU-8) as the lone surrogate itself, named by its path
    as a ``\\ud800`` escape would be; the other bytes leave the document unread (``$``).
    """
    bad, path = rng.choice(
        [(b"\xff", "$"), (b"\xc0\x80", "$"), (b"\xe4\xb8", "$"), (b"\x80abc", "$"),
         (b"\xf4\x90\x80\x80", "$"), (b"\xed\xa0\x80", "$.description"),
         (b"\xed\xb0\x80", "$.description")]
    )  # fmt: skip
    return with_member(body, "description", b'"' + bad + b'"'), path, "not-utf8"


def deep(rng: random.Random, body: dict[str, Any]) -> Broken:
    depth = rng.choice([10, 20, 31, 32, 33, 100, 500, 989, 990, 1000, 2000, 5000])
    inner, _ = nested(depth, rng)
    if rng.random() < 0.3:
        return inner.encode(), "$", f"deep:{depth}:body"
    # Up to 31 levels inside the body it is read, and is no description; past 32 it is not read.
    path = "$.description" if depth <= 20 else "$" if depth >= 40 else None
    return with_member(body, "description", inner.encode()), path, f"deep:{depth}"


def duplicate_keys(rng: random.Random, body: dict[str, Any]) -> Broken:
    """The first member twice, once as a number: json.loads keeps the last."""
    first = json.dumps(next(iter(body))).encode()
    raw = dumps(body)
    if rng.random() < 0.5:
        return raw[:-1] + b", " + first + b": 5}", f"$.{next(iter(body))}", "duplicate-key:last-bad"
    return b"{" + first + b": 5, " + raw[1:], None, "duplicate-key:last-good"


def encoded(rng: random.Random, body: dict[str, Any]) -> Broken:
    """BOMs, and the other encodings json.loads detects (UTF-16, UTF-32)."""
    document = json.dumps(body, ensure_ascii=False)
    case, raw = rng.choice(
        [
            ("bom:utf-8", b"\xef\xbb\xbf" + document.encode()),
            ("bom:utf-8-twice", b"\xef\xbb\xbf\xef\xbb\xbf" + document.encode()),
            ("bom:utf-16", document.encode("utf-16")),
            ("utf-32-le", document.encode("utf-32-le")),
        ]
    )
    return raw, None, case


def not_json(rng: random.Random, body: dict[str, Any]) -> Broken:
    whole = dumps(body)
    raw = rng.choice(
        [b"", b"   ", b"\n\t", b"null", b"[]", b"42", b'"x"', b"true", b"{", b"}", b"{'name': 'x'}",
         b"name=x&instance_id=y", b"<xml/>", b"\x00" * 8, whole[: rng.randint(1, 30)], whole + b"}",
         whole + b" trailing", b'{"name": "a"} {"name": "b"}', b'{"name": "a",}',
         b"[" + whole + b"]",
         bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))]
    )  # fmt: skip
    return raw, "$", "not-json"


Mutation = Callable[[random.Random, dict[str, Any]], Broken]
CREATE_MUTATIONS: list[Mutation] = [
    wrong_type, wrong_type, wrong_item_type, unknown_member, rule_break, rule_break, rule_break,
    number, number, surrogate, surrogate, not_utf8, deep, deep, duplicate_keys, encoded,
    not_json, not_json,
]  # fmt: skip


# === notify bodies ===============================================================================

VERDICTS = ("SUCCESS", "FAIL", "TIMED_OUT")
TIMES = [
    "2026-11-27T09:30:00Z",
    "2026-11-27T09:30:00.123456+00:00",
    "2026-11-27T09:30:00.123456789+05:30",
    "2026-11-27t09:30:00Z",
    "2026-11-27T09:30:00z",  # RFC 3339 §5.6: "Z" may be lower case (refused before issue 10)
    "2024-02-29T23:59:59-23:59",
    "0001-01-01T23:59:00+23:59",  # the first minute in UTC
    "9999-12-31T00:00:00-23:59",  # the last one
    "1970-01-01T00:00:00Z",
]
BAD_TIMES = [
    "2026-02-30T09:30:00Z",
    "2026-11-27T09:30:60Z",
    "0000-01-01T00:00:00Z",
    "2026-11-27 09:30:00Z",
    "2026-11-27T09:30:00",
    "2026-11-27T09:30:00Z\n",
    "0001-01-01T00:00:00+23:59",  # no date in UTC
    "9999-12-31T23:59:59-23:59",
    "yesterday",
    "",
]
RESULT_TYPES = {
    "key": {"string"},
    "request_id": {"string"},
    "job_id": {"string", "null"},
    "status": {"string"},
    "image_name": {"string"},
    "image_id": {"string", "null"},
    "source": {"object"},
    "requested_by": {"string", "null"},
    "error_code": {"string", "null"},
    "fail_reason": {"string", "null"},
    "submitted_at": {"string", "null"},
    "ended_at": {"string"},
    "duration_s": {"number", "null"},
    "console_url": {"string", "null"},
    "region": {"string", "null"},
}
RESULT_BOUNDS: list[tuple[str, Any]] = [
    ("request_id", "r" * 161), ("request_id", "a.b"), ("request_id", "abc\n"), ("key", "k" * 161),
    ("image_name", "i" * 129), ("image_name", ""), ("job_id", "j" * 129), ("image_id", "i" * 129),
    ("requested_by", "r" * 257), ("error_code", "e" * 129), ("fail_reason", "f" * 4097),
    ("console_url", "http://console.example"), ("console_url", "https://a b"),
    ("console_url", "https://" + "a" * 2041), ("console_url", "javascript:alert(1)"),
    ("region", "a" * 65), ("region", "EU-DE"), ("region", "eu-de\n"), ("status", "success"),
    ("status", "RUNNING"), ("duration_s", -1), ("source", {"kind": "vm", "id": "x"}),
]  # fmt: skip


def valid_result(rng: random.Random) -> dict[str, Any]:
    """A body ``schemas/job-result.schema.json`` accepts."""
    result: dict[str, Any] = {
        "request_id": text(rng, IDENTIFIER, a_length(rng, 160, 1)),
        "status": rng.choice(VERDICTS),
        "image_name": text(rng, FREE_TEXT, a_length(rng, 128, 1)),
    }
    optional: dict[str, Callable[[], Any]] = {
        "key": lambda: text(rng, IDENTIFIER, a_length(rng, 160, 1)),
        "job_id": lambda: rng.choice([None, text(rng, FREE_TEXT, a_length(rng, 128))]),
        "image_id": lambda: rng.choice([None, text(rng, LETTERS + "-", a_length(rng, 128))]),
        "source": lambda: {
            "kind": rng.choice(["ecs", "csbs", "cbr"]),
            "id": text(rng, FREE_TEXT, a_length(rng, 128)),
        },
        "requested_by": lambda: rng.choice([None, text(rng, FREE_TEXT, a_length(rng, 256))]),
        "error_code": lambda: rng.choice([None, "IMG.0001", text(rng, FREE_TEXT, 128)]),
        "fail_reason": lambda: rng.choice(
            [None, text(rng, FREE_TEXT + "\n\r*_`<>&", a_length(rng, 4096))]
        ),
        "submitted_at": lambda: rng.choice([None, *TIMES]),
        "ended_at": lambda: rng.choice(TIMES),
        "duration_s": lambda: rng.choice([None, 0, 0.5, 1e300, 10**30]),
        "console_url": lambda: rng.choice(
            [None, "https://console.example/ims?id=1", "https://" + "a" * 2040]
        ),
        "region": lambda: rng.choice([None, "eu-de", "cn-north-4", "a" * 64]),
    }
    for member, make in optional.items():
        if rng.random() < 0.5:
            result[member] = make()
    return result


def result_wrong_type(rng: random.Random, result: dict[str, Any]) -> Broken:
    member = rng.choice(sorted(RESULT_TYPES))
    result[member] = wrong_value(rng, RESULT_TYPES[member])
    return dumps(result), f"$.{member}", f"wrong-type:{member}"


def result_missing(rng: random.Random, result: dict[str, Any]) -> Broken:
    member = rng.choice(["request_id", "status", "image_name"])
    del result[member]
    return dumps(result), f"$.{member}", f"missing:{member}"


def result_unknown(rng: random.Random, result: dict[str, Any]) -> Broken:
    member = rng.choice(["extra", "", "Status", "ü", "source.kind"])
    result[member] = 1
    return dumps(result), member_path("$", member), "unknown-member"


def result_bound(rng: random.Random, result: dict[str, Any]) -> Broken:
    member, value = rng.choice(RESULT_BOUNDS)
    result[member] = value
    path = "$.source.kind" if member == "source" else f"$.{member}"
    return dumps(result), path, f"bound:{member}"


def result_time(rng: random.Random, result: dict[str, Any]) -> Broken:
    member = rng.choice(["submitted_at", "ended_at"])
    result[member] = rng.choice(BAD_TIMES)
    return dumps(result), f"$.{member}", f"bad-time:{member}"


def result_number(rng: random.Random, result: dict[str, Any]) -> Broken:
    # duration_s is a number of at least 0, which NaN and infinity are to the schema: notify
    # derives the duration from the times and never reads it.
    token, path = rng.choice(
        [("NaN", None), ("Infinity", None), ("-Infinity", "$.duration_s"), ("1e400", None),
         ("-1e400", "$.duration_s"), ("9" * 4301, "$")]
    )  # fmt: skip
    return with_member(result, "duration_s", token.encode()), path, f"number:{token[:12]}"


def result_surrogate(rng: random.Random, result: dict[str, Any]) -> Broken:
    member = rng.choice(["image_name", "fail_reason", "requested_by"])
    escape = rng.choice([b"\\ud800", b"\\udfff"])
    return with_member(result, member, b'"a' + escape + b'"'), f"$.{member}", "surrogate"


def result_deep(rng: random.Random, result: dict[str, Any]) -> Broken:
    depth = rng.choice([10, 32, 100, 990, 5000])
    inner, arrays = nested(depth, rng)
    # Ten objects deep is a source with the wrong members, named inside it.
    path = "$" if depth > 10 else "$.source" if arrays else None
    return with_member(result, "source", inner.encode()), path, f"deep:{depth}"


def result_not_utf8(rng: random.Random, result: dict[str, Any]) -> Broken:
    bad = rng.choice([b"\xff", b"\xe4\xb8"])
    return with_member(result, "fail_reason", b'"' + bad + b'"'), "$", "not-utf8"


def result_not_json(rng: random.Random, result: dict[str, Any]) -> Broken:
    raw, path, case = not_json(rng, result)
    # An empty body asks notify to deliver what is pending (a schedule tick); so, today, does a
    # JSON null, read as no result.
    return raw, path if raw.strip() and raw != b"null" else None, case


RESULT_MUTATIONS: list[Mutation] = [
    result_wrong_type, result_wrong_type, result_missing, result_unknown, result_bound,
    result_bound, result_time, result_number, result_surrogate, result_deep, result_not_utf8,
    duplicate_keys, encoded, result_not_json,
]  # fmt: skip


# === envelopes and headers =======================================================================

JSON_TYPES = [
    "application/json", "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
    " application/json ", "application/merge-patch+json", "application/json; charset=latin-1",
]  # fmt: skip
WRONG_TYPES = [
    None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/jsonx", "json", "application/json\x00", "application/" + "j" * 10_000,
    "application/cloudevents-batch+json", ";;;", "application/json\u00e9",
]  # fmt: skip
ODD_TEXT = [
    "", " ", "a\r\nb", "a\nInjected: 1", "a\x00b", "\u00e9\u4e2d\U0001f600", "x" * 10_000,
    "x" * 255, "x" * 256, "\t", "../../etc/passwd", "%00", "\x7f", "\u202e",
]  # fmt: skip
CE_ATTRIBUTE_VALUES: list[Any] = [
    "", 5, None, [], {}, True, "x" * 10_000, " ", "\u00e9\u4e2d", "a\r\nb", "a\x00b", "\ud800",
    "missing", "0.3",
]  # fmt: skip
METHODS = ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "FOO", "get"]
ODD_IDS = [
    "../", "../../etc/passwd", "\x00", "%00", "a%00b", "\r\n", "%0d%0a", "a%0D%0ASet-Cookie:%20x=1",
    "x" * 10_000, "x" * 128, "x" * 129, "%ff%fe", "%e9", "\u00e9", "a b", "a+b", "*", "%", "%zz",
    "", "0", "{{7*7}}", "'; DROP TABLE jobs; --",
]  # fmt: skip
ODD_LIMITS = ["", "0", "-1", "1", "1000", "1001", "9" * 5000, "1e3", "\u0663", "a", "%00"]
ODD_REDRIVES = [
    "all", "", "x", "wi_r1_success.hook,wi_r2_fail.oncall", "," * 5000, "\x00", "../", "a\r\nb",
    "x" * 10_000, "%00", "all,all",
]  # fmt: skip
ODD_AUTHORIZATIONS = [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {API_TOKEN}"},
    {"Authorization": f"bearer   {API_TOKEN}  "},
    {"Authorization": f"Bearer {API_TOKEN}\x00"},
    {"Authorization": "Bearer " + "t" * 10_000},
    {"Authorization": f"Bearer {API_TOKEN}\u00e9"},
    {"Authorization": f"Bearer {API_TOKEN}", "X-Api-Token": ""},
    {"X-Api-Token": f"{API_TOKEN[:-1]}"},
]
GOOD_AUTHORIZATION = {"Authorization": f"Bearer {API_TOKEN}"}


def authorized(rng: random.Random) -> dict[str, str]:
    """Mostly the right token, in either header; sometimes a wrong, odd or missing one."""
    roll = rng.random()
    if roll < 0.85:
        return dict(GOOD_AUTHORIZATION)
    if roll < 0.9:
        return {"X-Api-Token": API_TOKEN, "Authorization": "Bearer platform-oidc-token"}
    return dict(rng.choice(ODD_AUTHORIZATIONS))


def odd_headers(rng: random.Random) -> dict[str, str]:
    """Now and then: a huge header, many headers, odd keys and trace values."""
    if rng.random() < 0.85:
        return {}
    return rng.choice(
        [
            {"X-Huge": "h" * rng.choice([8_000, 60_000])},
            {f"X-Many-{index}": str(index) for index in range(200)},
            {"Idempotency-Key": rng.choice(ODD_TEXT)},
            {"X-Cloud-Trace-Context": rng.choice(ODD_TEXT)},
            {"X-Cloud-Trace-Context": "0123456789abcdef0123456789abcdef/1;o=1"},
            {"Content-Length-Extra": "-1", "Transfer-Encoding": "chunked"},
            {"User-Agent": "\u00e9" * 1000},
        ]
    )


def idempotency(rng: random.Random, index: int, keys: list[str]) -> dict[str, str]:
    """None, a fresh key, an earlier one (a replay, or a reuse with another body), or an odd one."""
    roll = rng.random()
    if roll < 0.2:
        return {}
    if roll < 0.3 and keys:
        return {"Idempotency-Key": rng.choice(keys)}
    if roll < 0.35:
        return {"Idempotency-Key": rng.choice(ODD_TEXT)}
    keys.append(f"fuzz-{SEED}-{index}")
    return {"Idempotency-Key": keys[-1]}


def binary_event(rng: random.Random, event_type: str) -> dict[str, str]:
    """``ce-*`` headers, one of them odd or missing half the time."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"evt-{rng.getrandbits(48):x}",
        "ce-source": "//ci/fuzz",
        "ce-type": event_type,
        "Content-Type": "application/json",
    }
    if rng.random() < 0.5:
        name = rng.choice(sorted(headers))
        value = rng.choice(
            [*ODD_TEXT, None, "0.3", "2.0", "text/plain", "application/octet-stream"]
        )
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return headers


def structured_event(rng: random.Random, raw: bytes, event_type: str) -> bytes:
    """An ``application/cloudevents+json`` body carrying ``raw``, odd in one way half the time."""
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"evt-{rng.getrandbits(48):x}",
        "source": "//ci/fuzz",
        "type": event_type,
    }
    data = b', "data": ' + raw if raw.strip() else b""
    choice = rng.randrange(12)
    if choice == 0:
        name = rng.choice(["id", "source", "type", "specversion"])
        value = rng.choice(CE_ATTRIBUTE_VALUES)
        if value == "missing":
            del attributes[name]
        else:
            attributes[name] = value
    elif choice == 1:
        # The data as a JSON string: the payload's text, or a lone surrogate itself.
        string_data = raw.decode("utf-8", "replace") if rng.random() < 0.8 else "{\ud800}"
        data = b', "data": ' + json.dumps(string_data).encode()
    elif choice == 2:
        encoded_data = base64.b64encode(raw) if rng.random() < 0.7 else b"!!not base64!!"
        data = b', "data_base64": "' + encoded_data + b'"'
    elif choice == 3:
        attributes["datacontenttype"] = rng.choice(["text/plain", "application/xml", 5])
    elif choice == 4:
        attributes[rng.choice(["ID", "a-b", "x" * 300, ""])] = "ext"
    elif choice == 5:
        return rng.choice([b"[]", b'"x"', b"null", raw, b"{" + data[2:] + b"}"])
    return json.dumps(attributes).encode()[:-1] + data + b"}"


def envelope(rng: random.Random, raw: bytes, event_type: str) -> tuple[dict[str, str], bytes, bool]:
    """Headers and body carrying the payload ``raw``; whether it is a plain JSON body."""
    roll = rng.random()
    if roll < 0.64:
        return {"Content-Type": rng.choice(JSON_TYPES)}, raw, True
    if roll < 0.72:
        content_type = rng.choice(WRONG_TYPES)
        return ({} if content_type is None else {"Content-Type": content_type}), raw, False
    if roll < 0.86:
        return binary_event(rng, event_type), raw, False
    content_type = rng.choice(
        ["application/cloudevents+json", "application/cloudevents+json; charset=utf-8"]
    )
    return {"Content-Type": content_type}, structured_event(rng, raw, event_type), False


def plainly(headers: dict[str, str]) -> bool:
    """The right token, no odd header, no key or a fresh one: what reaches validation unchanged."""
    return (
        headers.get("Authorization") == GOOD_AUTHORIZATION["Authorization"]
        and set(headers) <= {"Authorization", "Idempotency-Key"}
        and headers.get("Idempotency-Key", "fuzz-").startswith("fuzz-")
    )


# === the generators ==============================================================================


def create_calls(rng: random.Random, count: int, job_ids: list[str]) -> Iterator[Call]:
    """``count`` requests to ``create``; ``job_ids`` fills up with what earlier answers named."""
    keys: list[str] = []
    for index in range(count):
        roll = rng.random()
        headers = authorized(rng) | odd_headers(rng)
        if roll < 0.03:
            yield Call("method", method=rng.choice(METHODS), headers=headers, body=b"{}")
        elif roll < 0.13:
            yield read_call(rng, headers, job_ids)
        elif roll < 0.14:
            size = rng.choice([64 * 1024, 64 * 1024 + 1, 1024 * 1024])
            raw = dumps(valid_create(rng))
            body = raw[:-1] + b" " * (size - len(raw)) + b"}"
            yield Call("size", body=body, headers=headers | {"Content-Type": "application/json"})
        else:
            if roll < 0.5:
                raw, expect, case, valid = dumps(valid_create(rng)), None, "valid", True
            else:
                (raw, expect, case), valid = (
                    rng.choice(CREATE_MUTATIONS)(rng, valid_create(rng)),
                    False,
                )
            headers |= idempotency(rng, index, keys)
            carried, body, plain = envelope(rng, raw, "image.requested")
            clean = plain and plainly(headers)
            yield Call(
                case,
                body=body,
                headers=headers | carried,
                query=rng.choice(["", "", "", "job_id=x", "a=%00", "x" * 5000]),
                path=rng.choice(["/"] * 20 + ["/x", "/a/../b", "/%00"]),
                expect_path=expect if clean else None,
                valid=valid and clean,
            )


def read_call(rng: random.Random, headers: dict[str, str], job_ids: list[str]) -> Call:
    """``GET ?job_id=``: a job recorded before, or an odd id."""
    if rng.random() < 0.3 and job_ids:
        return Call(
            "get:known", method="GET", headers=headers, query=f"job_id={rng.choice(job_ids)}"
        )
    name, value = rng.choice(["job_id", "request_id"]), rng.choice(ODD_IDS)
    query = rng.choice(
        [f"{name}={value}", f"{name}={quote(value, safe='')}", f"job_id={value}&request_id={value}",
         f"{name}=a&{name}=b", name, "", "&&&=&", f"{name}[]={value}"]
    )  # fmt: skip
    return Call("get:odd", method="GET", headers=headers, query=query)


def notify_calls(rng: random.Random, count: int) -> Iterator[Call]:
    """``count`` requests to ``notify``."""
    for _ in range(count):
        roll = rng.random()
        headers = authorized(rng) | odd_headers(rng)
        if roll < 0.03:
            yield Call("method", method=rng.choice(METHODS), headers=headers)
        elif roll < 0.1:
            limit = rng.choice(ODD_LIMITS)
            query = rng.choice(
                ["", "dead_letters=1", f"dead_letters=1&limit={limit}", f"limit={limit}"]
            )
            yield Call("get", method="GET", headers=headers, query=query)
        elif roll < 0.15:
            yield Call("redrive", headers=headers, query=f"redrive={rng.choice(ODD_REDRIVES)}")
        elif roll < 0.2:
            pubsub = {"message": {"data": "e30=", "messageId": "1"}, "subscription": "s"}
            body = rng.choice([b"", b"  ", dumps(pubsub)])
            yield Call("tick", headers=headers | {"Content-Type": "application/json"}, body=body)
        else:
            if roll < 0.55:
                raw, expect, case, valid = dumps(valid_result(rng)), None, "valid", True
            else:
                (raw, expect, case), valid = (
                    rng.choice(RESULT_MUTATIONS)(rng, valid_result(rng)),
                    False,
                )
            event_type = rng.choice(["wholeimage.job.result"] * 4 + ["other.type"])
            carried, body, plain = envelope(rng, raw, event_type)
            clean = plain and plainly(headers)
            yield Call(
                case,
                body=body,
                headers=headers | carried,
                expect_path=expect if clean else None,
                valid=valid and clean,
            )


# === the fakes ===================================================================================


def quoted(request: httpx.Request, rng: random.Random) -> str:
    """The request quoted back, as gateways and proxies do, in one of several spellings."""
    headers = dict(request.headers)
    body = request.content.decode("utf-8", "replace")
    return rng.choice(
        [
            " ".join(f"{name}: {value}" for name, value in headers.items()) + f" body: {body}",
            json.dumps(headers),
            repr(request.headers.raw),
            f"{request.method} {request.url} Authorization={headers.get('authorization')}",
            f"invalid token {headers.get('x-security-token')} for {body[:200]}",
            quote(str(headers)),
        ]
    )


def raw_header(name: str, value: str) -> list[tuple[bytes, bytes]]:
    """A header as bytes: a server sends what it likes (httpx would refuse non-ASCII text)."""
    return [(name.encode(), value.encode())]


ODD_RETRY_AFTERS = [
    "0",
    "1",
    "-1",
    "1.5",
    "9" * 400,
    "²",
    "٣",
    "1e9",
    "x",
    "Wed, 21 Oct 2015 07:28:00 GMT",
]
TRANSPORT_ERRORS: list[type[httpx.TransportError]] = [
    httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ReadError,
    httpx.RemoteProtocolError, httpx.PoolTimeout,
]  # fmt: skip
Failure = Callable[[random.Random, httpx.Request, str], httpx.Response]


def dropped(rng: random.Random, request: httpx.Request, message: str) -> httpx.Response:
    raise rng.choice(TRANSPORT_ERRORS)(message, request=request)


def throttled(rng: random.Random, request: httpx.Request, message: str) -> httpx.Response:
    # Only a 429 (or a flow-control code) is a refusal the create call retries; a 5xx after
    # sending is an uncertain submission (docs/reconcile.md), which ``server_error`` plays.
    headers = raw_header("Retry-After", rng.choice(ODD_RETRY_AFTERS))
    return httpx.Response(429, headers=headers, text=message)


def server_error(rng: random.Random, request: httpx.Request, message: str) -> httpx.Response:
    headers = raw_header("Retry-After", rng.choice(ODD_RETRY_AFTERS))
    return httpx.Response(rng.choice([500, 502, 503, 504]), headers=headers, text=message)


def broken_gzip(rng: random.Random, request: httpx.Request, message: str) -> httpx.Response:
    content = rng.choice([b"not gzip", gzip.compress(b'{"job_id": "0123456789abcdef"}')[:10]])
    return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=content)


def answered(status: int, **content: Any) -> Failure:
    """A failure that is always this answer (``json=``, ``content=``, ``headers=``)."""
    return lambda rng, request, message: httpx.Response(status, **content)


def quoting(status: int, shape: Callable[[str], Any] = lambda message: message) -> Failure:
    """A failure that is an answer quoting the request: as text, or as JSON ``shape`` makes."""

    def answer(rng: random.Random, request: httpx.Request, message: str) -> httpx.Response:
        quote_back = shape(message)
        if isinstance(quote_back, str):
            return httpx.Response(status, text=quote_back)
        return httpx.Response(status, json=quote_back)

    return answer


IMS_FAILURES: list[Failure] = [
    dropped,
    dropped,
    throttled,
    throttled,
    server_error,
    broken_gzip,
    quoting(401, lambda message: {"error_msg": message}),
    quoting(403, lambda message: {"error_code": "APIGW.0301", "error_msg": message}),
    quoting(504),
    quoting(200, lambda message: f"<html>{message}</html>"),
    answered(200, json=[]),
    answered(200, json={"job_id": 5}),
    answered(200, json={"job_id": ""}),
    answered(200, json=None),
    answered(200, content=b'{"job_id": "a\\ud800"}'),
    answered(302, headers={"Location": f"{IMS_URL}/elsewhere"}),
    quoting(418, lambda message: {"code": ["IMG"], "message": [message]}),
    answered(400, json={"error": {"code": "IMG.0001", "message": None}}),
]
ODD_JOB_IDS = ["a\r\nb", "../../x", "x" * 10_000, "a b", "é", "a?b=c&d", "%00", "<script>"]
RECEIVER_FAILURES: list[Failure] = [
    dropped,
    throttled,
    broken_gzip,
    quoting(200, lambda message: f"<html>{message}</html>"),
    quoting(200, lambda message: {"errcode": "0", "errmsg": message}),
    answered(301, headers={"Location": DING_URL}),
]


class FakeIms:
    """IMS behind a mock transport: answers a job id, or refuses quoting the request back.

    ``mixed`` adds what networks and broken gateways do (``IMS_FAILURES``); throttling lasts a
    few attempts, so some requests are throttled through all their retries.
    """

    def __init__(self, seed: int, *, mixed: bool) -> None:
        self.rng = random.Random(seed)
        self.mixed = mixed
        self.calls = 0
        self.throttling = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        SEEN_SIGNATURES.update(SIGNATURE.findall(request.headers.get("Authorization", "")))
        rng, roll = self.rng, self.rng.random()
        if self.throttling:
            self.throttling -= 1
            return throttled(rng, request, quoted(request, rng))
        if roll < 0.75 or (not self.mixed and roll < 0.85):
            return httpx.Response(200, json={"job_id": f"{rng.getrandbits(128):032x}"})
        if not self.mixed or roll < 0.8:
            message = quoted(request, rng)
            payload = rng.choice(
                [
                    {"error": {"code": "IMG.0001", "message": message}},
                    {"error_code": "IMG.0002", "error_msg": message},
                    {"code": "IMG.0003", "message": message, "request": message},
                ]
            )
            return httpx.Response(rng.choice([400, 404, 409]), json=payload)
        if roll < 0.82:
            # Each odd id once: IMS never hands out one job id twice.
            return httpx.Response(200, json={"job_id": f"{rng.choice(ODD_JOB_IDS)}{self.calls}"})
        failure = rng.choice(IMS_FAILURES)
        if failure is throttled:
            self.throttling = rng.randint(0, 3)
        return failure(rng, request, quoted(request, rng))


class FakeReceivers:
    """Webhook receivers: confirm, or fail quoting the request (its URL's token) back."""

    def __init__(self, seed: int, *, mixed: bool) -> None:
        self.rng = random.Random(seed)
        self.mixed = mixed
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        rng, roll = self.rng, self.rng.random()
        if roll < 0.75:
            return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})
        message = quoted(request, rng)
        if not self.mixed or roll < 0.85:
            status = rng.choice([400, 404, 410, 429, 500, 503])
            payload = {"errcode": 310000, "errmsg": message, "url": str(request.url)}
            return httpx.Response(status, json=payload)
        return rng.choice(RECEIVER_FAILURES)(rng, request, message)


# === checking answers ============================================================================


def leaks(text: str) -> list[str]:
    """Each secret (or signature IMS saw) in ``text``."""
    found = [f"leaks {secret[:12]}..." for secret in SECRET_FORMS if secret in text]
    signatures = set(HEX64.findall(text)) & SEEN_SIGNATURES
    if signatures:
        found.append(f"leaks a request signature {min(signatures)[:12]}...")
    return found


def is_detail(detail: Any) -> bool:
    return (
        isinstance(detail, dict)
        and isinstance(detail.get("path"), str)
        and WHERE.match(detail["path"]) is not None
        and isinstance(detail.get("message"), str)
    )


def error_problems(call: Call, answer: Answer) -> list[str]:
    """A 4xx (or allowed 5xx) body: ``{"error": {"code", "message", "details": [...]}}``."""
    error = answer.error()
    code = error.get("code") if isinstance(error, dict) else None
    if not isinstance(code, str) or not CODE.fullmatch(code):
        return [f"no machine-readable code: {answer.body[:80]!r}"]
    details = error.get("details")
    if not isinstance(details, list) or not all(is_detail(detail) for detail in details):
        return [f"{code}: details without a path and a message each"]
    if code in VALIDATION_CODES and not details:
        return [f"{code} names no field"]
    paths = [detail["path"] for detail in details]
    if call.expect_path is not None and call.expect_path not in paths:
        return [f"{code}: {call.expect_path} not among {paths[:5]}"]
    if call.valid and code == "invalid_request":
        return [f"a schema-valid body refused: {paths[:5]}"]
    return []


def problems(call: Call, answer: Answer, allowed_5xx: frozenset[tuple[int, str]]) -> list[str]:
    """What is wrong with ``answer`` to ``call``; empty when nothing is."""
    text = answer.text()
    found = leaks(text)
    status = answer.status
    if answer.raised:
        return [f"raised {answer.raised[0].splitlines()[0]}", *found]
    if "Traceback" in text or dict(answer.headers).get("X-Google-Status") == "crash":
        return ["a traceback or functions-framework's crash answer", *found]
    if call.method == "HEAD":  # no body, by HTTP
        return found if status < 500 else [f"HEAD answered {status}", *found]
    error = answer.error()
    code = error.get("code") if isinstance(error, dict) else None
    if status >= 500 and (status, code) not in allowed_5xx:
        return [f"{status} {code}", *found]
    if status == 503 and "Retry-After" not in dict(answer.headers):
        found.append("503 without Retry-After")
    if 200 <= status < 300:
        try:
            json.loads(answer.body)
        except ValueError:
            found.append(f"a 2xx that is not JSON: {answer.body[:80]!r}")
        if call.expect_path is not None:
            found.append(f"expected a 400 naming {call.expect_path}")
    elif status >= 400:
        found += error_problems(call, answer)
    else:
        found.append(f"status {status}")
    return found


@dataclass
class Tally:
    """Statuses and error codes per function, what the checks covered, and every wrong answer."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    covered: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    digest: Any = field(default_factory=hashlib.sha256)

    def note(self, function: str, call: Call, answer: Answer, found: list[str]) -> None:
        self.digest.update(call.fingerprint())
        self.statuses.setdefault(function, Counter())[answer.status] += 1
        error = answer.error()
        if isinstance(error, dict):
            self.codes.setdefault(function, Counter())[str(error.get("code"))] += 1
        self.covered[f"{function}: 400s that had to name a path"] += call.expect_path is not None
        self.covered[f"{function}: schema-valid bodies sent plainly"] += call.valid
        # IMS's quotes come back redacted; the receivers' (their "errmsg") with the URL cut out.
        text = answer.text()
        self.covered[f"{function}: answers quoting upstream text"] += (
            REDACTED in text or '"errmsg' in text or "errmsg\\" in text
        )
        for problem in found:
            # Grouped without their numbers (positions, lengths): one line per kind of problem.
            self.reasons[f"{function} {answer.status}: {re.sub('[0-9]+', 'N', problem)}"[:160]] += 1
        if found:
            self.failures.append(f"{function} {answer.status} {'; '.join(found)}"[:200])
            self.failures.append(f"    {call.compact()}")

    def report(self, title: str, seconds: float) -> str:
        lines = [
            f"{title}: seed {SEED}, requests digest {self.digest.hexdigest()[:16]}, {seconds:.1f} s"
        ]
        for function, statuses in self.statuses.items():
            by_status = dict(sorted(statuses.items()))
            lines.append(f"  {function}: {statuses.total()} requests, statuses {by_status}")
            codes = self.codes.get(function, Counter())
            lines.append(f"  {function} error codes: {dict(codes.most_common())}")
        lines += [f"  {what}: {count}" for what, count in self.covered.items()]
        return "\n".join(lines)


# === the runs ====================================================================================


@contextmanager
def logs_to_buffer() -> Iterator[io.StringIO]:
    """wholeimage's log lines, formatted as in production, into a buffer only: not stdout, and not
    pytest's capture (it attaches its handlers to the logger: 15,000 records of noise)."""
    logger = logging.getLogger("wholeimage")
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    saved, level = logger.handlers[:], logger.level
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    try:
        yield sink
    finally:
        logger.handlers[:] = saved
        logger.setLevel(level)


@dataclass
class Rig:
    create: FlaskClient
    notify: FlaskClient
    raised: list[str]
    ims: FakeIms
    receivers: FakeReceivers


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], Rig]]:
    """Make the two apps over one store, the signing IMS client and the webhooks client."""
    closing: list[httpx.Client | SqliteJobStore] = []

    def make(mixed: bool) -> Rig:
        settings = make_settings(
            ims_endpoint=IMS_URL,
            project_id=PROJECT,
            access_key=AK,
            secret_key=SK,
            security_token=SECURITY_TOKEN,
            api_token=API_TOKEN,
            channels=[
                {"name": "hook", "format": "standard", "url": HOOK_URL, "secret": WHSEC},
                {"name": "oncall", "format": "dingtalk", "url": DING_URL, "secret": DING_SECRET},
            ],
        )
        ims, receivers = FakeIms(SEED + 1, mixed=mixed), FakeReceivers(SEED + 2, mixed=mixed)
        ims_http = httpx.Client(
            base_url=IMS_URL,
            auth=AkSkAuth(AK, SK, PROJECT, SECURITY_TOKEN),
            transport=httpx.MockTransport(ims),
        )
        webhooks = httpx.Client(transport=httpx.MockTransport(receivers))
        store = SqliteJobStore(str(tmp_path / f"state-{mixed}.db"))
        closing.extend([ims_http, webhooks, store])
        retry = RetryPolicy(max_attempts=3, budget=5.0)
        ims_client = HttpImsClient(ims_http, retry=retry, sleep=lambda _: None)
        set_dependencies(
            Dependencies(settings=settings, store=store, ims=ims_client, webhooks=webhooks)
        )
        # What get_dependencies does for a process: the configured secrets are known to redact.
        register_secrets(settings.secret_values())
        raised: list[str] = []

        def record(sender: Flask, exception: BaseException, **_: Any) -> None:
            raised.append(f"{type(exception).__name__}: {exception}"[:160])

        apps = [create_app("create", MAIN), create_app("notify", MAIN)]
        for app in apps:
            got_request_exception.connect(record, app, weak=False)
        return Rig(apps[0].test_client(), apps[1].test_client(), raised, ims, receivers)

    # main.py warns at import when no API token is in the environment; the settings are ours.
    monkeypatch.setenv("WHOLEIMAGE_API_TOKEN", API_TOKEN)
    # Delivery's per-process rate-limit buckets on a clock 1,000 s on at each reading: no waits.
    readings = itertools.count(start=1000.0, step=1000.0)
    monkeypatch.setattr(notify, "_PROCESS_LIMITERS", ChannelLimiters(clock=lambda: next(readings)))
    yield make
    set_dependencies(None)
    for each in closing:
        each.close()


def run(rig: Rig, seed: int, *, creates: int, notifies: int, mixed: bool) -> Tally:
    rng, tally = random.Random(seed), Tally()
    job_ids: list[str] = []
    allowed = UPSTREAM_ANSWERS if mixed else frozenset()
    for call in create_calls(rng, creates, job_ids):
        answer = send(rig.create, call, rig.raised)
        tally.note("create", call, answer, problems(call, answer, allowed))
        if answer.status == 202:
            job_id = json.loads(answer.body).get("job_id")
            if isinstance(job_id, str) and re.fullmatch("[0-9a-f]{32}", job_id):
                job_ids.append(job_id)
    for call in notify_calls(rng, notifies):
        answer = send(rig.notify, call, rig.raised)
        tally.note("notify", call, answer, problems(call, answer, frozenset()))
    return tally


def assert_clean(tally: Tally, logs: io.StringIO, title: str, seconds: float) -> None:
    print(f"\n{tally.report(title, seconds)}")
    wrong = len(tally.failures) // 2
    assert not wrong, (
        f"{wrong} wrong answers; by reason:\n"
        + "\n".join(f"{count:6} {reason}" for reason, count in tally.reasons.most_common(40))
        + "\nthe first 25:\n"
        + "\n".join(tally.failures[:50])
    )
    log_leaks = sorted({leak for line in logs.getvalue().splitlines() for leak in leaks(line)})
    assert not log_leaks, f"log lines leak: {log_leaks}"


def test_ten_thousand_create_and_three_thousand_notify_requests_crash_nothing_and_leak_nothing(
    rig: Callable[[bool], Rig],
) -> None:
    started = time.perf_counter()
    wired = rig(False)
    with logs_to_buffer() as logs:
        tally = run(wired, SEED, creates=CREATE_REQUESTS, notifies=NOTIFY_REQUESTS, mixed=False)
    assert_clean(tally, logs, "fuzz", time.perf_counter() - started)
    print(f"  IMS calls: {wired.ims.calls}, webhook calls: {wired.receivers.calls}")
    assert tally.statuses["create"].total() >= 10_000
    assert tally.statuses["notify"].total() >= 3_000
    # The checks had something to check: jobs were submitted and refused quoting our request,
    # results were delivered, broken fields were named.
    assert tally.statuses["create"][202] > 1_000
    assert tally.statuses["notify"][200] > 1_000
    assert tally.covered["create: answers quoting upstream text"] > 100
    assert tally.covered["notify: answers quoting upstream text"] > 10
    assert tally.covered["create: 400s that had to name a path"] > 1_000
    assert tally.covered["notify: 400s that had to name a path"] > 300
    assert wired.receivers.calls > 500


def test_a_failing_ims_and_failing_receivers_still_crash_nothing(
    rig: Callable[[bool], Rig],
) -> None:
    started = time.perf_counter()
    wired = rig(True)
    with logs_to_buffer() as logs:
        tally = run(
            wired,
            SEED + 3,
            creates=MIXED_CREATE_REQUESTS,
            notifies=MIXED_NOTIFY_REQUESTS,
            mixed=True,
        )
    assert_clean(tally, logs, "fuzz, IMS and receivers failing", time.perf_counter() - started)
    print(f"  IMS calls: {wired.ims.calls}, webhook calls: {wired.receivers.calls}")
    statuses = tally.statuses["create"]
    assert statuses[502] > 0  # IMS's failures reached callers as their documented answers
    assert statuses[503] > 0
    assert wired.ims.calls > 300
    assert wired.receivers.calls > 200
