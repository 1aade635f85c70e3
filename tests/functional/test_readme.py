"""The README's operator path, as a new user follows it: its commands run as printed.

The ``create`` curl example is taken from README.md and run by bash, with the real curl,
against the ``create`` function served on a local port; the emulator's credentials it shows
are the emulator's defaults; its commands say where the virtualenv is; its example bodies can
be submitted one after another.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app
from werkzeug.serving import make_server

from ims_emulator import EmulatorConfig
from tests.fakes import FakeImsClient, make_dependencies
from tests.functional.test_cli import environment, ims, like_a_new_process, run_json, state_url
from wholeimage.bootstrap import set_dependencies
from wholeimage.cli.output import EXIT_OK

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text("utf-8")
MAIN = str(ROOT / "functions" / "main.py")
API_TOKEN = "readme-token-0123456789"
BASH = shutil.which("bash") or "/bin/bash"

# The CLI tests' fixtures, for the example bodies submitted through the CLI.
__all__ = ["environment", "ims", "like_a_new_process", "state_url"]


def code_blocks(language: str, text: str = README) -> list[str]:
    """The fenced blocks of ``language`` in ``text``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def section(heading: str) -> str:
    """The README's text from ``heading`` to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    start = README.index(f"\n{heading}\n")
    rest = README[start + len(heading) + 2 :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def create_curl() -> str:
    """The ``create`` section's curl command, as printed."""
    [command] = [block for block in code_blocks("sh", section("### `create`")) if "curl" in block]
    return command


# --- the curl example ---------------------------------------------------------------------------


def test_the_curl_example_puts_the_token_in_when_bash_runs_it():
    # curl replaced by a function that prints its arguments: what the shell made of the quoting.
    script = 'curl() { printf "%s\\n" "$@"; }\n' + create_curl()

    done = subprocess.run(
        [BASH, "-c", script],
        env={"WHOLEIMAGE_API_TOKEN": API_TOKEN, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    arguments = done.stdout.splitlines()
    assert f"Authorization: Bearer {API_TOKEN}" in arguments
    assert "$WHOLEIMAGE_API_TOKEN" not in done.stdout


@pytest.fixture
def served_create(tmp_path: Path) -> Iterator[tuple[str, FakeImsClient]]:
    """The ``create`` function on a local port, behind WHOLEIMAGE_API_TOKEN; its URL."""
    ims = FakeImsClient()
    deps = make_dependencies(tmp_path, ims, api_token=API_TOKEN)
    set_dependencies(deps)
    server = make_server("127.0.0.1", 0, create_app("create", MAIN), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}", ims
    finally:
        server.shutdown()
        thread.join()
        set_dependencies(None)
        deps.store.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_example_run_by_bash_is_answered_202_by_the_served_function(served_create):
    address, ims = served_create
    command = create_curl().replace("localhost:8080", address)
    assert address in command

    done = subprocess.run(
        [BASH, "-c", command.rstrip() + " -w '\\n%{http_code}'"],
        env={"WHOLEIMAGE_API_TOKEN": API_TOKEN, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    body, status = done.stdout.rsplit("\n", 1)
    assert status == "202", body
    assert json.loads(body)["status"] == "SUBMITTED"
    [sent] = ims.submitted
    assert sent["name"] == "web01-full"


# --- the emulator's defaults where a user meets them -------------------------------------------


def test_the_quick_start_shows_the_emulators_default_credentials_and_where_the_rest_is():
    quick_start = section("### Locally, against the IMS emulator")
    defaults = EmulatorConfig()

    for variable, value in {
        "WHOLEIMAGE_PROJECT_ID": defaults.project_id,
        "HUAWEICLOUD_SDK_AK": defaults.ak,
        "HUAWEICLOUD_SDK_SK": defaults.sk,
    }.items():
        assert f"{variable}={value}" in quick_start, variable
    assert "tools/ims_emulator/README.md" in quick_start
    tools_readme = (ROOT / "tools/ims_emulator/README.md").read_text("utf-8")
    for route in ("/_emulator/faults", "/_emulator/jobs/{job_id}/finish", "/_emulator/config"):
        assert route in quick_start, route
        assert route in tools_readme, route
    assert f"ends it {defaults.job_seconds:g} s after the call" in quick_start


# --- commands that find the virtualenv ----------------------------------------------------------


def test_every_command_needing_the_venv_says_where_it_is():
    # "functions-framework: command not found" and a traceback from a bare python were what a
    # new user met: each such command in a sh block is .venv/bin/'s (or the shell function's).
    bare = re.compile(r"(?:^|[;&|]\s*|\s&&\s*|^\S+=\S+\s+)(functions-framework|python3?|pytest)\s")
    offenders = [
        line
        for block in code_blocks("sh")
        for line in block.splitlines()
        if bare.search(line.split("#", 1)[0])
    ]

    assert offenders == []
    running = section("## Running a function")
    assert ". .venv/bin/activate" in running
    assert "scripts/setup-venv.sh requirements-dev.txt" in running


# --- the example bodies -------------------------------------------------------------------------


def example_bodies() -> list[dict[str, Any]]:
    """The create bodies the README prints: the curl's and the JSON examples of `create`."""
    text = section("### `create`")
    [curl_body] = re.findall(r"-d '(.*?)'", create_curl(), re.DOTALL)
    bodies = [json.loads(curl_body)]
    bodies += [json.loads(block) for block in code_blocks("json", text) if '"name"' in block]
    return bodies


def test_each_example_body_names_its_own_source():
    bodies = example_bodies()
    sources = [body.get("backup_id") or body.get("instance_id") for body in bodies]

    assert len(bodies) == 3
    assert {"instance_id", "backup_id"} <= {key for body in bodies for key in body}
    assert len(set(sources)) == len(sources)


@pytest.mark.usefixtures("environment")
def test_the_example_bodies_submitted_one_after_another_are_each_accepted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    # They shared one backup id: after the first, the others were 409 backup_in_use (exit 2).
    for index, body in enumerate(example_bodies()):
        path = tmp_path / f"example-{index}.json"
        path.write_text(json.dumps(body))

        code, answer, err = run_json(capsys, "submit", "--file", str(path))

        assert code == EXIT_OK, err
        assert answer["status"] == "SUBMITTED"
