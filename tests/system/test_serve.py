"""``wholeimage serve``: the three functions in one process, run as an operator runs it.

``python -m wholeimage serve`` (``PYTHONPATH=functions``) is started as a child process against
the IMS emulator, with gunicorn and with werkzeug's server, and called over real HTTP.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.system.test_served import ROOT, Served, free_port, function_env
from wholeimage.cli.main import main
from wholeimage.cli.output import EXIT_USAGE

API_TOKEN = "serve-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
ECS_BODY = {"name": "web01-full", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}
START_SECONDS = 30.0


def start_serve(env: dict[str, str], log_path: Path, *options: str) -> Served:
    """``python -m wholeimage serve --json`` on a free port, once it says it is serving."""
    port = free_port()
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "wholeimage", "serve", "--port", str(port), "--json", *options],
            cwd=log_path.parent,
            env={**env, "PYTHONPATH": str(ROOT / "functions")},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, served.log()
        if '"serving"' in served.log():
            return served
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"serve did not start within {START_SECONDS} s: {served.log()}")


def stop(served: Served) -> int:
    """Ctrl-C, as a person stops it; returns its exit code."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGINT)
    return served.process.wait(timeout=15)


@pytest.fixture
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(EmulatorConfig(job_seconds=60)) as emulator:
        yield emulator


@pytest.mark.parametrize("server", ["gunicorn", "werkzeug"])
def test_serve_answers_all_three_functions_at_their_paths_and_stops_on_ctrl_c(
    ims, tmp_path, server
):
    env = function_env(ims, tmp_path, WHOLEIMAGE_API_TOKEN=API_TOKEN)
    served = start_serve(env, tmp_path / "serve.log", "--server", server)
    try:
        with httpx.Client(base_url=served.url, headers=AUTH, timeout=20) as http:
            created = http.post("/create", json=ECS_BODY)
            read_back = http.get(created.headers["Location"])
            checked = http.post("/check")
            outbox = http.get("/notify")
            elsewhere = http.get("/")
            wrong_method = http.put("/check")
    finally:
        code = stop(served)

    assert created.status_code == 202, served.log()
    assert created.headers["Location"] == f"{served.url}/create/?job_id={created.json()['job_id']}"
    assert created.json()["job_id"] in ims.jobs
    assert read_back.status_code == 200
    assert read_back.json()["request_id"] == created.json()["request_id"]
    assert checked.status_code == 200
    assert checked.json()["still_outstanding"] == 1
    assert outbox.json() == {"outbox": {}}
    assert elsewhere.status_code == 404
    assert elsewhere.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST, GET"
    assert code == 0
    assert "Traceback" not in served.log()


def test_serve_says_where_each_function_is(ims, tmp_path):
    served = start_serve(function_env(ims, tmp_path), tmp_path / "serve.log")
    stop(served)

    [ready] = [json.loads(line) for line in served.log().splitlines() if '"serving"' in line]
    assert ready == {
        "serving": served.url,
        "functions": {name: f"{served.url}/{name}" for name in ("create", "check", "notify")},
    }


def test_serve_warns_once_that_no_api_token_is_set(ims, tmp_path):
    served = start_serve(function_env(ims, tmp_path), tmp_path / "serve.log")
    stop(served)

    warnings = [line for line in served.log().splitlines() if "WHOLEIMAGE_API_TOKEN" in line]
    assert len(warnings) == 1
    assert json.loads(warnings[0])["severity"] == "WARNING"


def test_serve_without_the_functions_entry_points_is_a_usage_error(tmp_path, capsys):
    code = main(["serve", "--source", str(tmp_path / "main.py")])

    assert code == EXIT_USAGE
    assert "functions/main.py" in capsys.readouterr().err
