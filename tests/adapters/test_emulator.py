"""The local IMS emulator: IMS shapes, authentication, job lifecycle, faults, and the SDK as referee."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkims.v2 import (
    CreateWholeImageRequest,
    CreateWholeImageRequestBody,
    ImsClient,
    ShowJobProgressRequest,
    ShowJobRequest,
    TagKeyValue,
)

import ims_emulator.server
from ims_emulator import (
    CREATE_PATH,
    JOB_TYPE_BY_BACKUP,
    JOB_TYPE_BY_INSTANCE,
    EmulatorConfig,
    Fault,
    ImsEmulator,
)
from tests.adapters.conftest import JOB_SECONDS, FakeClock
from wholeimage.ims import signer

AK = "EMULATORAK"
SK = "emulator-secret-key"
PROJECT = "0123456789abcdef0123456789abcdef"
IAM_PASSWORD = "emulator-password"
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
OLD_TIME = re.compile(r"^\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}:\d{3}$")
FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"
EMULATOR_README = FUNCTIONS_DIR.parent / "tools" / "ims_emulator" / "README.md"


def send_signed(
    http: httpx.Client,
    ims: ImsEmulator,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    query: Sequence[tuple[str, str]] = (),
    ak: str = AK,
    sk: str = SK,
    sdk_date: str | None = None,
    project: str | None = PROJECT,
    extra: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> httpx.Response:
    """Sign with our signer the way the SDK does and send with httpx."""
    headers = {
        "Host": urlsplit(ims.url).netloc,
        "X-Sdk-Date": sdk_date or signer.format_sdk_date(datetime.fromtimestamp(ims.clock(), UTC)),
        "Content-Type": "application/json;charset=UTF-8",
        **({"X-Project-Id": project} if project is not None else {}),
        **(extra or {}),
    }
    headers["Authorization"] = signer.authorization_header(
        access_key=ak,
        secret_key=sk,
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=body,
    )
    url = path + ("?" + urlencode(list(query)) if query else "")
    return http.request(method, url, headers=headers, content=body, timeout=timeout)


def create(http: httpx.Client, ims: ImsEmulator, **fields: Any) -> httpx.Response:
    body = {"name": "web01-full", "instance_id": "ecs-1", "vault_id": "vault-1", **fields}
    return send_signed(http, ims, "POST", CREATE_PATH, body=json.dumps(body).encode())


def create_job(http: httpx.Client, ims: ImsEmulator, **fields: Any) -> str:
    response = create(http, ims, **fields)
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]
    assert isinstance(job_id, str)
    return job_id


def query_job(http: httpx.Client, ims: ImsEmulator, job_id: str) -> httpx.Response:
    return send_signed(http, ims, "GET", f"/v1/{PROJECT}/jobs/{job_id}")


# -- create ---------------------------------------------------------------------------------


def test_a_signed_create_returns_a_32_hex_job_id(ims: ImsEmulator, http: httpx.Client) -> None:
    response = create(http, ims)

    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.json()["job_id"])
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "IMG.0007"),
        (b"{not json", "IMG.0001"),
        (b"[1, 2]", "IMG.0001"),
        (json.dumps({"instance_id": "ecs-1"}).encode(), "IMG.0013"),
        (json.dumps({"name": "a" * 129, "instance_id": "ecs-1"}).encode(), "IMG.0002"),
        (json.dumps({"name": "bad/name", "instance_id": "ecs-1"}).encode(), "IMG.0003"),
        (json.dumps({"name": " leading", "instance_id": "ecs-1"}).encode(), "IMG.0003"),
        (json.dumps({"name": "ok"}).encode(), "IMG.0012"),
        (json.dumps({"name": "ok", "whole_image_type": "CBR"}).encode(), "IMG.0019"),
        (json.dumps({"name": "ok", "instance_id": "e", "backup_id": "b"}).encode(), "IMG.0001"),
    ],
)
def test_an_invalid_create_body_gets_the_documented_ims_error(
    ims: ImsEmulator, http: httpx.Client, body: bytes, code: str
) -> None:
    response = send_signed(http, ims, "POST", CREATE_PATH, body=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_a_name_of_exactly_128_allowed_characters_is_accepted(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    assert create(http, ims, name="A-b_c.d 9" + "x" * 119).status_code == 200


def test_an_instance_listed_as_unknown_gets_img_0005(ims: ImsEmulator, http: httpx.Client) -> None:
    ims.config.unknown_instances = {"ecs-gone"}

    response = create(http, ims, instance_id="ecs-gone")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "IMG.0005"


def test_a_backup_can_make_one_image_only_unless_its_job_failed(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    first = create_job(http, ims, instance_id=None, backup_id="bk-1", whole_image_type="CBR")

    again = create(http, ims, instance_id=None, backup_id="bk-1", whole_image_type="CBR")
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "IMG.0029"

    ims.finish_job(first, "FAIL")
    retried = create(http, ims, instance_id=None, backup_id="bk-1", whole_image_type="CBR")
    assert retried.status_code == 200
    assert ims.jobs[retried.json()["job_id"]].job_type == JOB_TYPE_BY_BACKUP


# -- job lifecycle --------------------------------------------------------------------------


def test_a_job_moves_through_init_running_and_success_on_the_clock(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    job_id = create_job(http, ims)

    initial = query_job(http, ims, job_id).json()
    assert initial["status"] == "INIT"
    assert initial["job_id"] == job_id
    assert initial["job_type"] == JOB_TYPE_BY_INSTANCE
    assert ISO_TIME.match(initial["begin_time"])
    assert initial["end_time"] == ""
    assert initial["error_code"] is None
    assert initial["fail_reason"] is None
    assert initial["entities"]["image_name"] == "web01-full"
    assert initial["entities"]["process_percent"] == 0.0
    assert "image_id" not in initial["entities"]

    clock.advance(JOB_SECONDS * 0.5)
    running = query_job(http, ims, job_id).json()
    assert running["status"] == "RUNNING"
    assert isinstance(running["entities"]["process_percent"], float)
    assert 0.0 < running["entities"]["process_percent"] < 1.0
    assert running["entities"]["current_task"]
    assert running["end_time"] == ""

    clock.advance(JOB_SECONDS)
    done = query_job(http, ims, job_id).json()
    assert done["status"] == "SUCCESS"
    assert uuid.UUID(done["entities"]["image_id"])
    assert done["entities"]["process_percent"] == 1.0
    assert ISO_TIME.match(done["end_time"])
    assert done["end_time"] > done["begin_time"]
    assert done["error_code"] is None
    assert done["fail_reason"] is None


def test_a_job_for_a_failing_source_ends_in_fail_with_a_code_and_a_reason(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    ims.config.fail_sources = {"ecs-doomed"}
    job_id = create_job(http, ims, instance_id="ecs-doomed")
    clock.advance(JOB_SECONDS)

    job = query_job(http, ims, job_id).json()

    assert job["status"] == "FAIL"
    assert job["error_code"] == "IMG.0014"
    assert job["fail_reason"]
    assert ISO_TIME.match(job["end_time"])
    assert "image_id" not in job["entities"]


def test_a_fail_ratio_of_one_fails_every_job(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    ims.config.fail_ratio = 1.0
    job_ids = [create_job(http, ims, name=f"img-{n}") for n in range(3)]
    clock.advance(JOB_SECONDS)

    assert [query_job(http, ims, job_id).json()["status"] for job_id in job_ids] == ["FAIL"] * 3


def test_finish_job_ends_a_running_job_with_the_given_code(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    job_id = create_job(http, ims)
    clock.advance(JOB_SECONDS * 0.5)

    ims.finish_job(job_id, "FAIL", error_code="Ecs.0000", fail_reason="backup failed")
    job = query_job(http, ims, job_id).json()

    assert job["status"] == "FAIL"
    assert job["error_code"] == "Ecs.0000"
    assert job["fail_reason"] == "backup failed"
    assert 0.0 < job["entities"]["process_percent"] < 1.0


def test_both_job_query_routes_return_the_same_job(ims: ImsEmulator, http: httpx.Client) -> None:
    job_id = create_job(http, ims)

    by_project = query_job(http, ims, job_id)
    progress = send_signed(http, ims, "GET", f"/v1/cloudimages/job/{job_id}")

    assert by_project.status_code == progress.status_code == 200
    assert by_project.json() == progress.json()
    assert ims.calls["job"] == 2


def test_a_job_query_for_another_project_is_refused_with_img_0030(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    job_id = create_job(http, ims)

    response = send_signed(http, ims, "GET", f"/v1/{'f' * 32}/jobs/{job_id}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "IMG.0030"


def test_an_unknown_job_is_404_with_img_0023(ims: ImsEmulator, http: httpx.Client) -> None:
    response = query_job(http, ims, "0" * 32)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "IMG.0023"


def test_an_ak_sk_call_to_a_project_less_path_needs_x_project_id(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    body = json.dumps({"name": "n", "instance_id": "ecs-1"}).encode()

    missing = send_signed(http, ims, "POST", CREATE_PATH, body=body, project=None)
    wrong = send_signed(http, ims, "POST", CREATE_PATH, body=body, project="f" * 32)

    assert missing.status_code == wrong.status_code == 400
    assert missing.json()["error"]["code"] == wrong.json()["error"]["code"] == "IMG.0067"


def test_the_old_time_format_is_served_when_configured(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    ims.config.old_time_format = True
    job_id = create_job(http, ims)

    running = query_job(http, ims, job_id).json()
    clock.advance(JOB_SECONDS)
    done = query_job(http, ims, job_id).json()

    assert OLD_TIME.match(running["begin_time"])
    assert running["end_time"] == ""
    assert OLD_TIME.match(done["end_time"])


def test_job_responses_can_carry_a_null_missing_or_unknown_status(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    job_id = create_job(http, ims)
    ims.inject(
        "job",
        Fault(override={"status": None}),
        Fault(omit=("status",)),
        Fault(override={"status": "QUEUED"}),
    )

    null, missing, unknown = (query_job(http, ims, job_id).json() for _ in range(3))

    assert null["status"] is None
    assert "status" not in missing
    assert unknown["status"] == "QUEUED"
    assert query_job(http, ims, job_id).json()["status"] == "INIT"

    ims.config.job_overrides = {"status": None}
    assert query_job(http, ims, job_id).json()["status"] is None


# -- authentication -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ak", "sk", "minutes_off", "code"),
    [
        (AK, "not-the-secret", 0, "APIGW.0301"),
        ("UNKNOWNAK", SK, 0, "APIGW.0301"),
        (AK, SK, 16, "APIGW.0303"),
        (AK, SK, -16, "APIGW.0303"),
    ],
    ids=["bad signature", "unknown access key", "date too old", "date in the future"],
)
def test_a_bad_signature_is_refused_with_a_gateway_body(
    ims: ImsEmulator, http: httpx.Client, *, ak: str, sk: str, minutes_off: int, code: str
) -> None:
    sdk_date = signer.format_sdk_date(datetime.fromtimestamp(ims.clock() - minutes_off * 60, UTC))

    response = send_signed(
        http, ims, "GET", f"/v1/cloudimages/job/{'0' * 32}", ak=ak, sk=sk, sdk_date=sdk_date
    )

    assert response.status_code == 401
    body = response.json()
    assert body["error_code"] == code
    assert body["error_msg"]
    assert body["request_id"] == response.headers["x-request-id"]


def test_a_request_without_credentials_is_401(ims: ImsEmulator, http: httpx.Client) -> None:
    response = http.get(f"/v1/{PROJECT}/jobs/{'0' * 32}")

    assert response.status_code == 401
    assert response.json()["error_code"] == "APIGW.0301"


def test_a_tampered_body_or_query_fails_the_signature(ims: ImsEmulator, http: httpx.Client) -> None:
    headers = {
        "Host": urlsplit(ims.url).netloc,
        "X-Sdk-Date": signer.format_sdk_date(datetime.fromtimestamp(ims.clock(), UTC)),
        "X-Project-Id": PROJECT,
    }
    body = b'{"name": "n", "instance_id": "ecs-1"}'
    auth = signer.authorization_header(
        access_key=AK,
        secret_key=SK,
        method="POST",
        path=CREATE_PATH,
        query=[],
        headers=headers,
        body=body,
    )
    signed_headers = {**headers, "Authorization": auth}

    honest = http.post(CREATE_PATH, headers=signed_headers, content=body)
    tampered = http.post(
        CREATE_PATH, headers=signed_headers, content=body.replace(b"ecs-1", b"ecs-2")
    )
    with_query = http.post(CREATE_PATH + "?x=1", headers=signed_headers, content=body)

    assert honest.status_code == 200
    assert tampered.status_code == with_query.status_code == 401


def test_signed_query_parameters_are_verified(ims: ImsEmulator, http: httpx.Client) -> None:
    job_id = create_job(http, ims)

    response = send_signed(
        http, ims, "GET", f"/v1/cloudimages/job/{job_id}", query=[("b", "2 3"), ("a", "x~y")]
    )

    assert response.status_code == 200


def test_host_and_x_sdk_date_must_be_signed(ims: ImsEmulator, http: httpx.Client) -> None:
    headers = {"X-Sdk-Date": signer.format_sdk_date(datetime.fromtimestamp(ims.clock(), UTC))}
    auth = signer.authorization_header(
        access_key=AK,
        secret_key=SK,
        method="GET",
        path="/v1/cloudimages/job/x",
        query=[],
        headers=headers,
        body=b"",
    )

    response = http.get("/v1/cloudimages/job/x", headers={**headers, "Authorization": auth})

    assert response.status_code == 401
    assert "host" in response.json()["error_msg"]


def test_temporary_credentials_need_the_signed_security_token(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    ims.config.security_token = "temporary-token"
    path = f"/v1/cloudimages/job/{create_job_with_token(ims, http)}"

    good = send_signed(http, ims, "GET", path, extra={"X-Security-Token": "temporary-token"})
    wrong = send_signed(http, ims, "GET", path, extra={"X-Security-Token": "other"})
    missing = send_signed(http, ims, "GET", path)

    assert good.status_code == 200
    assert wrong.status_code == missing.status_code == 401
    assert wrong.json()["error_code"] == "APIGW.0301"


def create_job_with_token(ims: ImsEmulator, http: httpx.Client) -> str:
    token = ims.issue_token()
    response = http.post(
        CREATE_PATH, headers={"X-Auth-Token": token}, json={"name": "n", "instance_id": "ecs-1"}
    )
    assert response.status_code == 200
    job_id = response.json()["job_id"]
    assert isinstance(job_id, str)
    return job_id


def iam_body(password: str = IAM_PASSWORD, project_id: str = PROJECT) -> dict[str, Any]:
    user = {"name": "emulator-user", "password": password, "domain": {"name": "emulator-domain"}}
    return {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"project": {"id": project_id}},
        }
    }


def test_an_iam_token_from_password_auth_works_on_the_ims_routes(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    issued = http.post("/v3/auth/tokens", params={"nocatalog": "true"}, json=iam_body())

    assert issued.status_code == 201
    token = issued.headers["x-subject-token"]
    body = issued.json()["token"]
    assert body["project"]["id"] == PROJECT
    assert body["expires_at"].endswith("Z")
    assert body["expires_at"] > body["issued_at"]

    created = http.post(
        CREATE_PATH, headers={"X-Auth-Token": token}, json={"name": "n", "instance_id": "ecs-1"}
    )
    assert created.status_code == 200
    job = http.get(
        f"/v1/{PROJECT}/jobs/{created.json()['job_id']}", headers={"X-Auth-Token": token}
    )
    assert job.status_code == 200

    clock.advance(25 * 3600)
    expired = http.get(
        f"/v1/{PROJECT}/jobs/{created.json()['job_id']}", headers={"X-Auth-Token": token}
    )
    assert expired.status_code == 401
    assert expired.json()["error_code"] == "APIGW.0301"


@pytest.mark.parametrize(
    "body", [iam_body(password="wrong"), iam_body(project_id="f" * 32)], ids=["password", "project"]
)
def test_wrong_iam_credentials_get_401_in_the_iam_shape(
    ims: ImsEmulator, http: httpx.Client, body: dict[str, Any]
) -> None:
    response = http.post("/v3/auth/tokens", json=body)

    assert response.status_code == 401
    assert "x-subject-token" not in response.headers
    error = response.json()["error"]
    assert error["code"] == 401
    assert error["title"] == "Unauthorized"
    assert error["message"]


def test_a_static_auth_token_is_accepted_and_an_unknown_one_is_not(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    ims.config.auth_token = "static-token"
    body = {"name": "n", "instance_id": "ecs-1"}

    accepted = http.post(CREATE_PATH, headers={"X-Auth-Token": "static-token"}, json=body)
    refused = http.post(CREATE_PATH, headers={"X-Auth-Token": "guessed"}, json=body)

    assert accepted.status_code == 200
    assert refused.status_code == 401


# -- faults, latency, recording -------------------------------------------------------------


def test_queued_429s_with_retry_after_come_before_the_real_answer(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    ims.inject("create", Fault.throttled(retry_after=1), Fault.throttled(retry_after=1))

    answers = [create(http, ims) for _ in range(3)]

    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "1"
    assert answers[0].json()["error_code"] == "APIGW.0308"
    assert ims.calls["create"] == 3
    assert len(ims.jobs) == 1
    assert ims.pending_faults()["create"] == 0


def test_a_503_and_an_img_0060_flow_control_error_can_be_injected(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    ims.inject(
        "create",
        Fault(status=503),
        Fault.ims_error("IMG.0060", "The number of tasks exceeds the flow control limit."),
    )

    unavailable, flow_control = create(http, ims), create(http, ims)

    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "IMG.0061"
    assert flow_control.status_code == 400
    assert flow_control.json()["error"]["code"] == "IMG.0060"


@pytest.mark.slow
def test_a_delay_fault_slows_one_answer(ims: ImsEmulator, http: httpx.Client) -> None:
    ims.inject("create", Fault(delay=0.3))

    started = time.monotonic()
    slow = create(http, ims)
    slow_seconds = time.monotonic() - started
    started = time.monotonic()
    fast = create(http, ims)
    fast_seconds = time.monotonic() - started

    assert slow.status_code == fast.status_code == 200
    assert slow_seconds >= 0.3
    assert fast_seconds < 0.3


@pytest.mark.slow
def test_a_hang_outlasts_the_client_timeout_and_a_drop_closes_the_connection(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    ims.inject("job", Fault(hang=True), Fault(drop=True))
    path = f"/v1/cloudimages/job/{'0' * 32}"

    with pytest.raises(httpx.ReadTimeout):
        send_signed(http, ims, "GET", path, timeout=0.3)
    with pytest.raises(httpx.RemoteProtocolError):
        send_signed(http, ims, "GET", path)

    assert send_signed(http, ims, "GET", path).status_code == 404


@pytest.mark.slow
def test_latency_is_added_to_every_ims_request(ims: ImsEmulator, http: httpx.Client) -> None:
    ims.config.latency_ms = 200

    started = time.monotonic()
    response = create(http, ims)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


def test_every_request_is_recorded_with_its_route(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    job_id = create_job(http, ims, name="recorded")
    send_signed(http, ims, "GET", f"/v1/cloudimages/job/{job_id}", query=[("a", "1")])
    http.get("/nowhere")

    recorded = ims.requests

    assert [(r.method, r.route) for r in recorded] == [
        ("POST", "create"),
        ("GET", "job"),
        ("GET", "unknown"),
    ]
    assert json.loads(recorded[0].body)["name"] == "recorded"
    assert recorded[0].headers["x-project-id"] == PROJECT
    assert recorded[0].time == clock.now
    assert recorded[1].query == [("a", "1")]
    assert ims.calls == {"create": 1, "job": 1, "unknown": 1}

    ims.reset()
    assert ims.requests == []
    assert ims.jobs == {}


@pytest.mark.slow
def test_many_concurrent_keep_alive_queries_are_all_answered(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    job_id = create_job(http, ims)
    token = ims.issue_token()
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)

    with httpx.Client(base_url=ims.url, limits=limits, timeout=5.0) as pool:

        def query(_: int) -> int:
            return pool.get(
                f"/v1/cloudimages/job/{job_id}", headers={"X-Auth-Token": token}
            ).status_code

        with ThreadPoolExecutor(max_workers=16) as executor:
            statuses = list(executor.map(query, range(300)))

    assert statuses == [200] * 300
    assert ims.calls["job"] == 300


# -- admin routes and CLI -------------------------------------------------------------------


def test_the_admin_routes_drive_the_emulator_from_another_process(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    queued = http.post(
        "/_emulator/faults",
        json={"route": "create", "faults": [{"status": 429, "headers": {"Retry-After": "2"}}]},
    )
    assert queued.json()["queued"]["create"] == 1
    assert create(http, ims).status_code == 429
    job_id = create_job(http, ims)

    assert http.get("/_emulator/jobs").json()["jobs"][0]["job_id"] == job_id
    finished = http.post(
        f"/_emulator/jobs/{job_id}/finish", json={"outcome": "FAIL", "error_code": "Ecs.0000"}
    )
    assert finished.json()["status"] == "FAIL"
    assert finished.json()["error_code"] == "Ecs.0000"
    assert [r["route"] for r in http.get("/_emulator/requests").json()["requests"]] == [
        "create",
        "create",
    ]
    assert http.get("/_emulator/stats").json()["calls"] == {"create": 2}

    patched = http.patch("/_emulator/config", json={"old_time_format": True, "fail_sources": ["x"]})
    assert patched.json()["old_time_format"] is True
    assert ims.config.fail_sources == {"x"}
    assert http.patch("/_emulator/config", json={"nonsense": 1}).status_code == 400

    assert http.post("/_emulator/reset").status_code == 200
    assert ims.jobs == {}
    assert http.post("/_emulator/jobs/nope/finish", json={}).status_code == 404
    assert http.get("/_emulator/health").json() == {"status": "ok"}


@pytest.mark.slow
def test_the_command_line_prints_its_url_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "ims_emulator", "--port", "0", "--job-seconds", "1"]
    # Our own module with fixed arguments.
    env = {
        **os.environ,
        "PYTHONPATH": f"{FUNCTIONS_DIR}{os.pathsep}{FUNCTIONS_DIR.parent / 'tools'}",
    }
    with subprocess.Popen(
        command, cwd=FUNCTIONS_DIR, env=env, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            match = re.fullmatch(r"IMS emulator listening on (http://127\.0\.0\.1:\d+)", line)
            assert match, line
            assert httpx.get(match[1] + "/_emulator/health", timeout=5).json() == {"status": "ok"}
            process.terminate()
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()


# -- the official SDK as referee ------------------------------------------------------------


def sdk_client(url: str, credentials: BasicCredentials) -> Any:
    config = HttpConfig.get_default_config()
    # Fail fast if the emulator misbehaves instead of waiting for the SDK's 120 s default.
    config.timeout = (3, 5)
    return (
        ImsClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoints([url])
        .build()
    )


def sdk_show_job(client: Any, job_id: str) -> Any:
    # show_job is deprecated in the SDK; it is still the documented OTC route, so test it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.show_job(ShowJobRequest(job_id=job_id))


def test_the_official_sdk_creates_and_tracks_a_job(ims: ImsEmulator, clock: FakeClock) -> None:
    client = sdk_client(ims.url, BasicCredentials(AK, SK, PROJECT))
    body = CreateWholeImageRequestBody(
        name="sdk-image",
        instance_id="ecs-sdk",
        vault_id="vault-1",
        image_tags=[TagKeyValue(key="owner", value="ops")],
    )

    created = client.create_whole_image(CreateWholeImageRequest(body=body))
    assert re.fullmatch(r"[0-9a-f]{32}", created.job_id)

    initial = sdk_show_job(client, created.job_id)
    assert initial.status == "INIT"
    assert initial.job_type == JOB_TYPE_BY_INSTANCE
    assert initial.entities.image_name == "sdk-image"

    clock.advance(JOB_SECONDS / 2)
    running = client.show_job_progress(ShowJobProgressRequest(job_id=created.job_id))
    assert running.status == "RUNNING"
    assert 0.0 < running.entities.process_percent < 1.0
    assert running.end_time == ""

    clock.advance(JOB_SECONDS)
    done = sdk_show_job(client, created.job_id)
    progress = client.show_job_progress(ShowJobProgressRequest(job_id=created.job_id))
    assert done.status == progress.status == "SUCCESS"
    assert done.entities.image_id == progress.entities.image_id
    assert uuid.UUID(done.entities.image_id)
    assert done.error_code is None
    assert ISO_TIME.match(done.begin_time)

    sent = json.loads(ims.requests[0].body)
    assert sent == {
        "name": "sdk-image",
        "instance_id": "ecs-sdk",
        "vault_id": "vault-1",
        "image_tags": [{"key": "owner", "value": "ops"}],
    }
    assert ims.requests[1].path == f"/v1/{PROJECT}/jobs/{created.job_id}"


def test_the_official_sdk_works_with_temporary_credentials(ims: ImsEmulator) -> None:
    ims.config.security_token = "sts-token"
    with_token = sdk_client(
        ims.url, BasicCredentials(AK, SK, PROJECT).with_security_token("sts-token")
    )
    without = sdk_client(ims.url, BasicCredentials(AK, SK, PROJECT))
    request = CreateWholeImageRequest(
        body=CreateWholeImageRequestBody(
            name="from-backup", backup_id="bk-9", whole_image_type="CBR"
        )
    )

    created = with_token.create_whole_image(request)
    job = with_token.show_job_progress(ShowJobProgressRequest(job_id=created.job_id))
    assert job.job_type == JOB_TYPE_BY_BACKUP
    assert "x-security-token" in ims.requests[0].headers["authorization"]

    with pytest.raises(ClientRequestException) as refused:
        without.show_job_progress(ShowJobProgressRequest(job_id=created.job_id))
    assert refused.value.status_code == 401


def test_the_official_sdk_raises_401_for_a_wrong_secret_key(ims: ImsEmulator) -> None:
    client = sdk_client(ims.url, BasicCredentials(AK, "wrong-secret", PROJECT))

    with pytest.raises(ClientRequestException) as refused:
        client.create_whole_image(
            CreateWholeImageRequest(body=CreateWholeImageRequestBody(name="n", instance_id="ecs-1"))
        )

    assert refused.value.status_code == 401
    assert refused.value.error_code == "APIGW.0301"
    assert refused.value.request_id


def test_the_official_sdk_reads_the_ims_error_body(ims: ImsEmulator) -> None:
    client = sdk_client(ims.url, BasicCredentials(AK, SK, PROJECT))
    ims.config.unknown_instances = {"ecs-gone"}

    with pytest.raises(ClientRequestException) as refused:
        client.create_whole_image(
            CreateWholeImageRequest(
                body=CreateWholeImageRequestBody(name="n", instance_id="ecs-gone")
            )
        )

    assert refused.value.status_code == 400
    assert refused.value.error_code == "IMG.0005"


def test_the_emulator_stops_even_with_a_connection_held_open(clock: FakeClock) -> None:
    emulator = ImsEmulator(EmulatorConfig(), clock=clock)
    emulator.start()
    emulator.inject("job", Fault(hang=True))
    errors: list[BaseException] = []

    def held() -> None:
        try:
            httpx.get(emulator.url + "/v1/cloudimages/job/x", timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=held)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    emulator.stop()
    thread.join(timeout=5)

    assert time.monotonic() - started < 2
    assert not thread.is_alive()
    assert errors


# -- the README beside the emulator -----------------------------------------------------------


def _constants(node: ast.expr) -> set[str]:
    """The string constants of ``"POST"`` or ``("PATCH", "POST")``."""
    items = node.elts if isinstance(node, ast.Tuple) else [node]
    return {
        item.value
        for item in items
        if isinstance(item, ast.Constant) and isinstance(item.value, str)
    }


def _path_templates(tree: ast.Module, function: ast.FunctionDef) -> dict[str, str]:
    """Local names bound to ``_PATTERN.match(action)``, as templates: ``jobs/{job_id}/finish``."""
    compiled: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(node.value, ast.Call)
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
        ):
            compiled[node.target.id] = str(node.value.args[0].value)
    templates = {}
    for assignment in ast.walk(function):
        if not (isinstance(assignment, ast.Assign) and isinstance(assignment.targets[0], ast.Name)):
            continue
        call = assignment.value
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "match"
            and isinstance(call.func.value, ast.Name)
        ):
            regex = compiled[call.func.value.id]
            template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", regex).strip("^$")
            templates[assignment.targets[0].id] = template
    return templates


def dispatched_admin_routes() -> set[tuple[str, str]]:
    """(method, action) for every admin route ``_admin_action`` dispatches, read from its code."""
    tree = ast.parse(Path(ims_emulator.server.__file__).read_text("utf-8"))
    function = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "_admin_action"
    )
    templates = _path_templates(tree, function)
    routes: set[tuple[str, str]] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Dict):  # the table of simple routes: {("GET", "health"): ...}
            for key in node.keys:
                if isinstance(key, ast.Tuple) and len(key.elts) == 2:
                    method, action = (_constants(element) for element in key.elts)
                    routes |= {(m, a) for m in method for a in action}
        elif isinstance(node, ast.If):  # if method == "POST" and action == "faults": ...
            methods: set[str] = set()
            actions: set[str] = set()
            test = node.test
            for part in test.values if isinstance(test, ast.BoolOp) else [test]:
                if isinstance(part, ast.Compare) and isinstance(part.left, ast.Name):
                    if part.left.id == "method":
                        methods |= _constants(part.comparators[0])
                    elif part.left.id == "action":
                        actions |= _constants(part.comparators[0])
                elif isinstance(part, ast.Name) and part.id in templates:
                    actions.add(templates[part.id])
            routes |= {(m, a) for m in methods for a in actions}
    return routes


def test_the_readme_names_every_admin_route_the_server_dispatches(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    routes = dispatched_admin_routes()
    assert {("GET", "health"), ("POST", "faults"), ("POST", "jobs/{job_id}/finish")} <= routes

    # The routes read from the code are the ones the server answers (and the probe can tell).
    def answer(method: str, action: str) -> httpx.Response:
        path = "/_emulator/" + re.sub(r"\{\w+\}", "no-such-thing", action)
        return http.request(method, path, content=b"{}" if method != "GET" else b"")

    def unrouted(response: httpx.Response) -> bool:
        return response.status_code == 404 and "no admin route" in response.text

    assert unrouted(answer("GET", "no-such-route"))
    for method, action in sorted(routes):
        assert not unrouted(answer(method, action)), f"{method} {action} is not served"

    readme = EMULATOR_README.read_text("utf-8")
    lines = readme.splitlines()
    for method, action in sorted(routes):
        path = f"`/_emulator/{action}`"
        assert any(f"`{method}`" in line and path in line for line in lines), (
            f"tools/ims_emulator/README.md does not name {method} /_emulator/{action}"
        )
    # And every admin route the README's table names is served.
    table = re.findall(r"^\| `([A-Z]+)` \| `/_emulator/([^`]+)` \|", readme, re.MULTILINE)
    assert table
    assert set(table) <= routes


def test_the_readme_default_credentials_are_the_config_defaults() -> None:
    readme = EMULATOR_README.read_text("utf-8")
    section = readme.split("## Default credentials", 1)[1].split("\n## ", 1)[0]
    documented = {
        name: None if value == "none" else value.strip("`")
        for name, value in re.findall(r"^\| `(\w+)` \| (`[^`]*`|none) \|", section, re.MULTILINE)
    }
    defaults = EmulatorConfig()
    credentials = {
        "ak",
        "sk",
        "project_id",
        "security_token",
        "auth_token",
        "iam_user",
        "iam_password",
        "iam_domain",
        "iam_project_name",
    }
    assert credentials <= set(documented), f"missing: {sorted(credentials - set(documented))}"
    for name, value in documented.items():
        assert name in {f.name for f in dataclasses.fields(EmulatorConfig)}, name
        assert getattr(defaults, name) == value, f"README says {name} = {value!r}"


def test_the_readme_lists_every_command_line_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ims_emulator.server.main(["--help"])
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", capsys.readouterr().out)) - {"--help"}
    assert "--port" in flags
    readme = EMULATOR_README.read_text("utf-8")
    assert not {flag for flag in flags if f"`{flag}`" not in readme}
