"""The functions served exactly as documented and deployed: a real functions-framework process.

``functions-framework --source functions/main.py --target create`` against the IMS emulator,
over real HTTP: the same command the README, the demo and infra use.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ims_emulator import EmulatorConfig, Fault, ImsEmulator
from tests.fakes import split_marker
from wholeimage.ims import signer

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_FRAMEWORK = str(Path(sys.executable).parent / "functions-framework")
SERVE_COMMAND = ["--source", "functions/main.py", "--target"]
SEED_ECS = (ROOT / "tests" / "data" / "create" / "valid" / "seed-ecs-with-tags.json").read_bytes()
API_TOKEN = "served-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")


def serve(target: str, env: dict[str, str], log_path: Path) -> Served:
    port = free_port()
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [FUNCTIONS_FRAMEWORK, *SERVE_COMMAND, target, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            httpx.get(url, timeout=1)
            return Served(url, process, log_path)
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{target} did not serve within 30 s: {log_path.read_text()}")


@pytest.fixture
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(EmulatorConfig(job_seconds=60)) as emulator:
        yield emulator


def function_env(ims: ImsEmulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WHOLEIMAGE_", "HUAWEICLOUD_SDK_"))
    }
    env.update(
        {
            "WHOLEIMAGE_IMS_ENDPOINT": ims.url,
            "WHOLEIMAGE_PROJECT_ID": ims.config.project_id,
            "HUAWEICLOUD_SDK_AK": ims.config.ak,
            "HUAWEICLOUD_SDK_SK": ims.config.sk,
            "WHOLEIMAGE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
            "WHOLEIMAGE_IMS_RETRY_BUDGET": "3",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def create_function(ims: ImsEmulator, tmp_path: Path) -> Iterator[Served]:
    served = serve(
        "create",
        function_env(ims, tmp_path, WHOLEIMAGE_API_TOKEN=API_TOKEN),
        tmp_path / "create.log",
    )
    yield served
    served.process.terminate()
    served.process.wait(timeout=10)


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def test_the_served_create_function_submits_a_signed_request_and_tracks_the_job(
    create_function, ims
):
    # When a seed body is posted to the served function
    response = httpx.post(
        create_function.url,
        content=SEED_ECS,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    # Then IMS received it signed, with the project header, and the caller a 202
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert job_id in ims.jobs
    creates = [r for r in ims.requests if r.route == "create"]
    assert len(creates) == 1
    authorization = signer.parse_authorization(creates[0].headers["authorization"])
    assert authorization["SignedHeaders"] == "content-type;host;x-project-id;x-sdk-date"
    assert split_marker(json.loads(creates[0].body)) == (
        json.loads(SEED_ECS),
        response.json()["request_id"],
    )
    # And the job is readable at the URL the answer gave
    status = httpx.get(response.json()["status_url"], headers=AUTH, timeout=10)
    assert status.status_code == 200
    assert status.json()["job_id"] == job_id


def test_the_served_function_retries_a_throttled_ims_then_succeeds(create_function, ims):
    ims.inject("create", Fault.throttled(retry_after=1))
    response = httpx.post(
        create_function.url,
        content=SEED_ECS,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=20,
    )
    assert response.status_code == 202
    assert ims.calls["create"] == 2


def test_the_served_function_answers_503_with_retry_after_when_ims_keeps_throttling(
    create_function, ims
):
    ims.inject("create", *[Fault(status=429)] * 10)
    response = httpx.post(
        create_function.url,
        content=SEED_ECS,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert httpx.get(create_function.url, params={"job_id": "x"}, headers=AUTH).status_code == 404


def test_the_served_function_answers_a_5xx_from_ims_as_uncertain_and_never_resends(
    create_function, ims
):
    # A 503 after the request went out may hide an accepted job: one call, and the caller is
    # told the outcome is unknown (docs/reconcile.md).
    ims.inject("create", *[Fault(status=503)] * 10)
    response = httpx.post(
        create_function.url,
        content=SEED_ECS,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 202
    assert response.json()["status"] == "SUBMIT_UNCERTAIN"
    assert ims.calls["create"] == 1


def test_the_served_function_passes_an_ims_rejection_on_with_its_code(create_function, ims):
    ims.config.unknown_instances = {json.loads(SEED_ECS)["instance_id"]}
    response = httpx.post(
        create_function.url,
        content=SEED_ECS,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["upstream"]["code"] == "IMG.0005"


def test_wrong_credentials_are_a_502_never_blamed_on_the_caller(ims, tmp_path):
    served = serve(
        "create", function_env(ims, tmp_path, HUAWEICLOUD_SDK_SK="wrong-secret"), tmp_path / "c.log"
    )
    try:
        response = httpx.post(
            served.url, content=SEED_ECS, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_auth_failed"
        assert response.json()["error"]["upstream"]["code"] == "APIGW.0301"
        assert "wrong-secret" not in response.text
    finally:
        served.process.terminate()
        served.process.wait(timeout=10)
    # No secret in any log line, and each line is JSON with a severity.
    log = served.log()
    assert "wrong-secret" not in log
    json_lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert json_lines
    assert all("severity" in line and "message" in line for line in json_lines)


def test_without_an_api_token_the_function_warns_loudly_at_start(ims, tmp_path):
    served = serve("create", function_env(ims, tmp_path), tmp_path / "open.log")
    served.process.terminate()
    served.process.wait(timeout=10)
    warnings = [
        json.loads(line)
        for line in served.log().splitlines()
        if line.startswith("{") and "WHOLEIMAGE_API_TOKEN" in line
    ]
    assert warnings
    assert warnings[0]["severity"] == "WARNING"


def test_a_missing_setting_is_a_500_naming_the_variable(ims, tmp_path):
    env = function_env(ims, tmp_path)
    del env["WHOLEIMAGE_PROJECT_ID"]
    served = serve("create", env, tmp_path / "misconfigured.log")
    try:
        response = httpx.post(
            served.url, content=SEED_ECS, headers={"Content-Type": "application/json"}, timeout=10
        )
    finally:
        served.process.terminate()
        served.process.wait(timeout=10)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "misconfigured"
    assert "WHOLEIMAGE_PROJECT_ID" in response.json()["error"]["message"]
    assert ims.calls.get("create", 0) == 0
