"""What upstream services say reaches callers and chat only redacted (part of issue 9, item 5).

IMS's gateway may quote our request back (the ``Authorization`` header with its AK, the
security token); its text travels in the error body's ``message`` and ``upstream``. A job's
``fail_reason`` reaches chat messages. Both go through the log redaction, and the reason is
clipped to ``MAX_FAIL_REASON``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

from tests.fakes import make_settings
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.errors import ImsRejectedError
from wholeimage.ims.auth import AkSkAuth
from wholeimage.ims.client import HttpImsClient, RetryPolicy
from wholeimage.ims.job_report import MAX_FAIL_REASON, parse_job_report
from wholeimage.logs import register_secrets
from wholeimage.store.sqlite import SqliteJobStore

ROOT = Path(__file__).resolve().parents[2]
AK = "AKQUOTEDBACK0123456789"
SK = "sk-quoted-back-secret-0123456789"
SECURITY_TOKEN = "security-token-quoted-back-0123456789"
PROJECT = "0123456789abcdef0123456789abcdef"
BODY = {"name": "web01", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}


def quoting_gateway(request: httpx.Request) -> httpx.Response:
    """A gateway refusal that quotes the whole signed request back, as some proxies do."""
    quoted = " ".join(f"{name}: {value}" for name, value in request.headers.items())
    return httpx.Response(
        400,
        json={"error": {"code": "IMG.0001", "message": f"bad request; you sent {quoted}"}},
    )


@pytest.fixture
def client(tmp_path) -> Iterator[FlaskClient]:
    settings = make_settings(
        ims_endpoint="https://ims.example",
        access_key=AK,
        secret_key=SK,
        security_token=SECURITY_TOKEN,
    )
    http = httpx.Client(
        base_url="https://ims.example",
        auth=AkSkAuth(AK, SK, PROJECT, SECURITY_TOKEN),
        transport=httpx.MockTransport(quoting_gateway),
    )
    deps = Dependencies(
        settings=settings,
        store=SqliteJobStore(str(tmp_path / "state.db")),
        ims=HttpImsClient(http, retry=RetryPolicy(max_attempts=1)),
    )
    # What get_dependencies does for the process: the configured secrets are known to redact.
    register_secrets(settings.secret_values())
    set_dependencies(deps)
    yield create_app("create", str(ROOT / "functions" / "main.py")).test_client()
    set_dependencies(None)
    http.close()


def test_an_ims_refusal_that_quotes_our_credentials_reaches_the_caller_redacted(client):
    answer = client.post("/", json=BODY)

    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "ims_rejected"
    assert error["upstream"]["code"] == "IMG.0001"
    assert "you sent" in error["upstream"]["message"]  # the text itself still arrives
    text = json.dumps(answer.get_json())
    for secret in (AK, SK, SECURITY_TOKEN):
        assert secret not in text
    assert "[REDACTED]" in text


def test_an_error_body_redacts_its_message_details_and_upstream():
    register_secrets([SECURITY_TOKEN])
    error = ImsRejectedError(
        f"IMS said {SECURITY_TOKEN}",
        http_status=400,
        upstream={"status": 400, "message": f"token {SECURITY_TOKEN} refused", "code": "X"},
    )
    error.details = [{"path": "$", "message": f"quoted {SECURITY_TOKEN}"}]

    body = json.dumps(error.body())

    assert SECURITY_TOKEN not in body
    assert '"status": 400' in body  # non-text values pass unchanged


def test_a_fail_reason_is_redacted_and_clipped():
    register_secrets([SECURITY_TOKEN])
    report = parse_job_report(
        {
            "status": "FAIL",
            "error_code": "IMG.0014",
            "fail_reason": f"task failed with {SECURITY_TOKEN}; " + "x" * 5000,
        }
    )

    assert report.fail_reason is not None
    assert SECURITY_TOKEN not in report.fail_reason
    assert len(report.fail_reason) == MAX_FAIL_REASON


def test_an_error_body_with_a_lone_surrogate_in_a_text_can_be_sent(fake_deps):
    """The CloudEvents SDK quotes a malformed specversion in its message, and a lone surrogate
    there made the answer a 500: it could not be encoded (found by issue 9's fuzz test)."""
    client = create_app("create", str(ROOT / "functions" / "main.py")).test_client()
    event = {"specversion": "\ud800", "id": "e", "source": "//ci", "type": "t", "data": BODY}

    answer = client.post(
        "/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"}
    )

    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_request"
    assert "\\ud800" in answer.get_json()["error"]["details"][0]["message"]


def test_a_refusal_quoting_our_request_percent_encoded_is_redacted_too():
    """A gateway that quotes the signed request URL-encoded hid the token and the signature from
    the redaction: ``%2B`` is no ``+``, ``Signature%3D`` no ``Signature=`` (found by issue 9's
    fuzz test)."""
    token = "tokenWith+plus/slash=equals0123456789"
    register_secrets([AK, token])
    signed = f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host, Signature={'ab12' * 16}"
    quoted = quote(f"X-Security-Token: {token} Authorization: {signed}")
    error = ImsRejectedError(
        f"IMS refused the request: {quoted}",
        http_status=400,
        upstream={"status": 400, "code": "IMG.0001", "message": quoted},
    )

    body = json.dumps(error.body())

    for secret in (AK, token, "ab12" * 16):
        assert secret not in body
        assert quote(secret, safe="") not in body
        assert quote(secret) not in body
