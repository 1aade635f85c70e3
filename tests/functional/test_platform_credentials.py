"""FunctionGraph's temporary credentials, from the request headers, sign that request's IMS calls
(docs/platform-credentials.md): end to end through the ``create`` and ``check`` function test
clients against the IMS emulator, which requires and verifies a signed ``X-Security-Token``
(``EmulatorConfig.security_token``), with no AK/SK in the settings.

What is checked besides: the process-wide ports are never built from them (a later request
without headers has none), a second request's new credentials are used as they are, static
credentials win, ``WHOLEIMAGE_PLATFORM_CREDENTIALS=off`` ignores the headers, malformed or
incomplete headers are refused by name, and an upstream answer quoting them is redacted.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

from ims_emulator import EmulatorConfig, Fault, ImsEmulator
from tests.fakes import make_settings
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.create import submit_create
from wholeimage.ims.auth import AkSkAuth
from wholeimage.ims.client import HttpImsClient
from wholeimage.ims.connection import ImsConnection
from wholeimage.logs import redact
from wholeimage.models import CreateImageRequest, JobStatus
from wholeimage.store.sqlite import SqliteJobStore

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
INSTANCE_ID = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"
API_TOKEN = "platform-test-api-token-0123"
# The emulator's AK/SK stand for the agency's temporary pair; the token is what makes them so.
TEMPORARY = EmulatorConfig(job_seconds=0, security_token="temporary-security-token-" + "x" * 40)


def platform_headers(config: EmulatorConfig, **overrides: str) -> dict[str, str]:
    """What FunctionGraph adds to a request with Include Keys (docs/ims-api.md §4.4)."""
    assert config.security_token is not None
    return {
        "X-CFF-Security-Access-Key": config.ak,
        "X-CFF-Security-Secret-Key": config.sk,
        "X-CFF-Security-Token": config.security_token,
        "Authorization": f"Bearer {API_TOKEN}",
        **overrides,
    }


@pytest.fixture
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(TEMPORARY) as emulator:
        yield emulator


@pytest.fixture
def deps_for(tmp_path: Path) -> Iterator[Any]:
    made: list[Dependencies] = []

    def make(ims: ImsEmulator, **overrides: Any) -> Dependencies:
        values: dict[str, Any] = {
            "ims_endpoint": ims.url,
            "api_token": API_TOKEN,
            "poll_min_interval": 0,
            "poll_max_interval": 0,
            "ims_max_attempts": 1,
        }
        deps = Dependencies(
            settings=make_settings(**(values | overrides)),
            store=SqliteJobStore(str(tmp_path / f"state-{len(made)}.db")),
        )
        made.append(deps)
        set_dependencies(deps)
        return deps

    yield make
    set_dependencies(None)
    for deps in made:
        if isinstance(deps.ims, HttpImsClient):
            deps.ims.close()
        deps.store.close()


def function(target: str) -> FlaskClient:
    client: FlaskClient = create_app(target, MAIN).test_client()
    return client


def create(headers: dict[str, str]) -> Any:
    return function("create").post(
        "/", json={"name": "web01-full", "instance_id": INSTANCE_ID}, headers=headers
    )


def no_process_wide_ims_port(deps: Dependencies) -> bool:
    return (deps.connection, deps.ims, deps.poller) == (None, None, None)


def test_create_signs_with_the_platforms_temporary_credentials_and_keeps_none(ims, deps_for):
    deps = deps_for(ims)

    response = create(platform_headers(ims.config))

    assert response.status_code == 202, response.get_data(as_text=True)
    [sent] = [r for r in ims.requests if r.route == "create"]
    assert sent.headers["x-security-token"] == ims.config.security_token
    assert "x-security-token" in sent.headers["authorization"]  # signed, as the emulator checked
    assert f"Access={ims.config.ak}," in sent.headers["authorization"]
    assert no_process_wide_ims_port(deps)
    # Without the headers the next request has no credentials: none were kept from the first.
    refused = create({"Authorization": f"Bearer {API_TOKEN}"})
    assert refused.status_code == 500
    assert refused.get_json()["error"]["code"] == "misconfigured"
    assert "enable_auth_in_header" in refused.get_json()["error"]["message"]
    assert ims.calls["create"] == 1


def test_a_read_carrying_the_headers_builds_no_ims_port(ims, deps_for):
    deps = deps_for(ims)
    created = create(platform_headers(ims.config)).get_json()

    response = function("create").get(
        f"/?job_id={created['job_id']}", headers=platform_headers(ims.config)
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["request_id"] == created["request_id"]
    assert ims.calls["create"] == 1
    assert no_process_wide_ims_port(deps)


def test_each_request_signs_with_its_own_credentials(ims, deps_for):
    deps_for(ims)
    assert create(platform_headers(ims.config)).status_code == 202

    # The platform rotated the agency's credentials: the old token is refused, the new one used.
    ims.config = dataclasses.replace(ims.config, security_token="rotated-token-" + "y" * 40)
    response = create(platform_headers(ims.config))

    assert response.status_code == 202, response.get_data(as_text=True)
    tokens = [r.headers["x-security-token"] for r in ims.requests if r.route == "create"]
    assert tokens == [TEMPORARY.security_token, "rotated-token-" + "y" * 40]


def test_an_iam_token_alone_is_sent_as_x_auth_token(deps_for):
    with ImsEmulator(EmulatorConfig(auth_token="platform-iam-token-" + "z" * 40)) as ims:
        deps_for(ims)
        response = create(
            {"X-CFF-Auth-Token": "platform-iam-token-" + "z" * 40, "X-Api-Token": API_TOKEN}
        )
        [sent] = [r for r in ims.requests if r.route == "create"]

    assert response.status_code == 202, response.get_data(as_text=True)
    assert sent.headers["x-auth-token"] == "platform-iam-token-" + "z" * 40
    assert "authorization" not in sent.headers


def test_the_api_token_still_gates_the_call(ims, deps_for):
    deps_for(ims)

    response = create(platform_headers(ims.config, Authorization="Bearer wrong"))

    assert response.status_code == 401
    assert ims.calls.get("create", 0) == 0


def test_static_credentials_win_over_the_headers(deps_for):
    with ImsEmulator(EmulatorConfig()) as ims:
        deps_for(ims, access_key=ims.config.ak, secret_key=ims.config.sk)
        headers = platform_headers(TEMPORARY) | {"X-CFF-Security-Access-Key": "SOMEONEELSE"}

        response = create(headers)
        [sent] = [r for r in ims.requests if r.route == "create"]

    assert response.status_code == 202, response.get_data(as_text=True)
    assert "x-security-token" not in sent.headers
    assert f"Access={ims.config.ak}," in sent.headers["authorization"]


def test_off_ignores_the_headers(ims, deps_for):
    deps_for(ims, platform_credentials="off")

    response = create(platform_headers(ims.config))

    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "misconfigured"
    assert ims.calls.get("create", 0) == 0


@pytest.mark.parametrize(
    ("dropped", "malformed", "paths"),
    [
        ("X-CFF-Security-Token", None, ["header:X-CFF-Security-Token"]),
        ("X-CFF-Security-Secret-Key", None, ["header:X-CFF-Security-Secret-Key"]),
        (None, "X-CFF-Security-Access-Key", ["header:X-CFF-Security-Access-Key"]),
    ],
)
def test_incomplete_or_malformed_headers_are_refused_by_name_never_value(
    ims, deps_for, dropped, malformed, paths
):
    deps_for(ims)
    headers = platform_headers(ims.config)
    if dropped:
        del headers[dropped]
    if malformed:
        headers[malformed] = "AK WITH SPACES"

    response = create(headers)

    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert [d["path"] for d in response.get_json()["error"]["details"]] == paths
    assert ims.config.sk not in body
    assert "AK WITH SPACES" not in body
    assert ims.calls.get("create", 0) == 0


def test_an_upstream_answer_quoting_the_credentials_is_redacted(ims, deps_for):
    deps_for(ims)
    token = ims.config.security_token
    ims.inject(
        "create",
        Fault(status=403, body={"error_code": "APIGW.0301", "error_msg": f"bad token {token}."}),
    )

    response = create(platform_headers(ims.config))

    assert response.status_code == 502, response.get_data(as_text=True)
    body = response.get_data(as_text=True)
    assert token not in body
    assert "[REDACTED]" in body
    # The redaction was the request's own: the process redacts nothing of it after.
    assert redact(f"bad token {token}.") == f"bad token {token}."


def test_check_polls_and_reconciles_with_the_ticks_credentials(ims, deps_for):
    deps = deps_for(ims, reconcile_after=0)
    temporary = ImsConnection(
        base_url=ims.url,
        project_id=ims.config.project_id,
        auth=AkSkAuth(
            ims.config.ak, ims.config.sk, ims.config.project_id, TEMPORARY.security_token
        ),
    )
    a_minute_ago = datetime.now(UTC) - timedelta(minutes=1)
    submitter = temporary.client(deps.settings)
    assert isinstance(submitter, HttpImsClient)
    # One job IMS accepted, and one whose answer was lost after IMS accepted it (uncertain).
    ims.inject("create", Fault(), Fault(after=True, drop=True))
    jobs = [
        submit_create(
            CreateImageRequest(name=f"db0{index}-full", instance_id=str(uuid.uuid4())),
            idempotency_key=None,
            requested_by="tests",
            trace=None,
            ims=submitter,
            store=deps.store,
            now=lambda: a_minute_ago,
            first_poll_after=timedelta(seconds=10),
        ).job
        for index in range(2)
    ]
    submitter.close()
    assert [job.status for job in jobs] == [JobStatus.SUBMITTED, JobStatus.SUBMIT_UNCERTAIN]

    response = function("check").post("/", headers=platform_headers(ims.config))

    assert response.status_code == 200, response.get_data(as_text=True)
    assert deps.store.get(jobs[0].request_id).status is JobStatus.SUCCESS
    assert deps.store.get(jobs[1].request_id).status is not JobStatus.SUBMIT_UNCERTAIN
    tick_requests = [r for r in ims.requests if r.route in ("job", "images")]
    assert {r.route for r in tick_requests} == {"job", "images"}
    assert {r.headers["x-security-token"] for r in tick_requests} == {TEMPORARY.security_token}
    assert no_process_wide_ims_port(deps)
    # A tick without the headers has nothing to poll with.
    assert function("check").post("/", headers={"X-Api-Token": API_TOKEN}).status_code == 500
