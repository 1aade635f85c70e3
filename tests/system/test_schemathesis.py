"""schemathesis against the served functions: no answer of theirs is a server error.

``python -m wholeimage serve`` runs the three functions against the IMS emulator with a fresh
SQLite state; schemathesis (its command line, as a child process) generates requests from
``openapi/openapi.json`` (positive and negative: bodies, headers, query strings, CloudEvents,
other methods) and checks every answer.

The 5xx answers the document does list are right when something outside is wrong: 500 for a
missing setting, 502 when IMS refuses our credentials or answers nonsense, 503 while IMS is
throttled or down. Here the settings are complete and the emulator is up and accepts our
credentials, so none of them may happen: any answer >= 500 is a defect. Besides
``not_a_server_error``, the answers are checked against the document (status codes, content
types, required headers, body schemas).

The run is bounded (10 examples per operation and phase, a fixed seed so a failure reproduces,
a timeout per request) and takes about 15 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.system.test_serve import start_serve, stop
from tests.system.test_served import ROOT, function_env

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
DOCUMENT = ROOT / "openapi" / "openapi.json"
API_TOKEN = "schemathesis-token-0123456789"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
SEED = "20261127"
RUN_SECONDS = 120


@pytest.fixture
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(EmulatorConfig(job_seconds=2, record_requests=False)) as emulator:
        yield emulator


def test_no_generated_request_makes_the_served_functions_answer_a_server_error(ims, tmp_path):
    env = function_env(
        ims, tmp_path, WHOLEIMAGE_API_TOKEN=API_TOKEN, WHOLEIMAGE_IMS_RETRY_BUDGET="1"
    )
    served = start_serve(env, tmp_path / "serve.log")
    report = tmp_path / "junit.xml"
    try:
        done = subprocess.run(
            [
                SCHEMATHESIS,
                "--no-color",
                "run",
                str(DOCUMENT),
                "--url",
                served.url,
                "--checks",
                ",".join(CHECKS),
                "--max-examples",
                "10",
                "--seed",
                SEED,
                # The create schema's patterns (lookarounds, "not") make hypothesis discard many
                # drafts; that is the schema being precise, not a problem of the run.
                "--suppress-health-check",
                "filter_too_much",
                "--request-timeout",
                "30",
                "--header",
                f"Authorization: Bearer {API_TOKEN}",
                "--report",
                "junit",
                "--report-junit-path",
                str(report),
            ],
            cwd=tmp_path,  # its example database and crash files stay out of the repository
            env={**os.environ, "NO_COLOR": "1"},
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
            check=False,
        )
    finally:
        stop(served)

    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    suite = ET.parse(report).getroot()  # noqa: S314 (our own child's report, not outside input)
    assert suite.get("failures") == "0"
    assert suite.get("errors") == "0"
    tested = {case.get("name") for case in suite.iter("testcase")}
    assert tested == {
        f"{method} /{name}" for method in ("GET", "POST") for name in ("create", "check", "notify")
    } | {
        "GET /create/policies",
        "PUT /create/policies/{name}",
        "GET /create/policies/{name}",
        "DELETE /create/policies/{name}",
        "POST /create/policies/{name}/pause",
        "POST /create/policies/{name}/resume",
        # schemathesis links the operations that share a policy's name (PUT, then GET, pause,
        # resume, DELETE it) and runs those sequences as one more case.
        "Stateful tests",
    }
    assert "Traceback" not in served.log()
