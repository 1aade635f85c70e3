"""The operator command line (``wholeimage``, ``python -m wholeimage``) against the IMS emulator.

Most tests call ``wholeimage.cli.main`` in this process with the environment a real process would
have (conftest restores it after each test) and fresh lazy singletons, and read what it printed;
a few run ``python -m wholeimage`` as a child process, as an operator does. ``--json`` answers
are checked against the same schemas as the HTTP answers.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app

from ims_emulator import EmulatorConfig, Fault, ImsEmulator
from tests.fakes import split_marker
from tests.functional.test_openapi import close
from wholeimage import bootstrap
from wholeimage.bootstrap import open_store, set_dependencies
from wholeimage.cli.commands import wait_for_verdict
from wholeimage.cli.main import (
    main,
    since_moment,
)
from wholeimage.cli.output import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Output,
)
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.settings import get_settings
from wholeimage.store.records import JobStore, Notification, PollUpdate, Settlement
from wholeimage.validation import validator_for

ROOT = Path(__file__).resolve().parents[2]
INSTANCE_ID = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"
FLAGS = ["--name", "web01-full", "--instance-id", INSTANCE_ID]


def schema_problems(schema_name: str, instance: Any) -> list[str]:
    """Why ``instance`` does not match ``schemas/<schema_name>``; empty when it does."""
    return [
        f"{error.json_path}: {error.message}"
        for error in validator_for(schema_name).iter_errors(instance)
    ]


@pytest.fixture
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(EmulatorConfig(job_seconds=60)) as emulator:
        yield emulator


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def environment(ims: ImsEmulator, state_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings an operator exports, pointing at the emulator."""
    for name, value in {
        "WHOLEIMAGE_IMS_ENDPOINT": ims.url,
        "WHOLEIMAGE_PROJECT_ID": ims.config.project_id,
        "HUAWEICLOUD_SDK_AK": ims.config.ak,
        "HUAWEICLOUD_SDK_SK": ims.config.sk,
        "WHOLEIMAGE_STATE_URL": state_url,
        "WHOLEIMAGE_IMS_RETRY_BUDGET": "1",
        "WHOLEIMAGE_POLL_MIN_INTERVAL": "0",
        "WHOLEIMAGE_POLL_MAX_INTERVAL": "0",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def like_a_new_process() -> Iterator[None]:
    """Each command builds settings and dependencies from the environment, as a new process
    would; afterwards they are closed and the package logger is put back as it was (the CLI
    moves its output to stderr)."""
    logger = logging.getLogger("wholeimage")
    level = logger.level
    streams = {
        handler: handler.stream
        for handler in logger.handlers
        if type(handler) is logging.StreamHandler  # not pytest's own capture handlers
    }
    get_settings.cache_clear()
    set_dependencies(None)
    yield
    built = bootstrap._dependencies  # what the command built, to close it
    if built is not None:
        close(built)
    set_dependencies(None)
    get_settings.cache_clear()
    logger.setLevel(level)
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:
            # Assigned, not setStream(): that flushes the stream capsys has already closed.
            handler.stream = streams.get(handler, sys.stdout)


@pytest.fixture
def store(state_url: str) -> Iterator[JobStore]:
    """The operator's state, opened beside the commands (SQLite takes several connections)."""
    opened = open_store(state_url)
    yield opened
    opened.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code, out, err = run(capsys, *argv, "--json")
    return code, json.loads(out) if out.strip() else None, err


def recorded(store: JobStore, status: JobStatus, **fields: Any) -> Job:
    """A job put straight into the store, in any status."""
    request = CreateImageRequest(name=fields.pop("name", "web01-full"), instance_id=INSTANCE_ID)
    now = datetime.now(UTC)
    job = Job(
        request_id=uuid.uuid4().hex,
        idempotency_key=None,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="tests",
        source_kind="ecs",
        source_id=INSTANCE_ID,
        status=status,
        ims_job_id=fields.pop("ims_job_id", uuid.uuid4().hex),
        created_at=fields.pop("created_at", now),
        updated_at=now,
        submitted_at=now,
        **fields,
    )
    assert store.reserve(job).created
    return job


# --- submit ------------------------------------------------------------------------------------


def test_submit_with_flags_sends_the_body_to_ims_and_shows_the_tracked_job(
    environment, ims, capsys
):
    code, out, err = run(capsys, "submit", *FLAGS, "--tag", "owner=ops", "--tag", "env=")

    assert code == EXIT_OK
    [create] = [request for request in ims.requests if request.route == "create"]
    sent, marker = split_marker(json.loads(create.body))
    assert sent == {
        "name": "web01-full",
        "instance_id": INSTANCE_ID,
        "image_tags": [{"key": "owner", "value": "ops"}, {"key": "env", "value": ""}],
    }
    assert marker is not None
    assert re.search(rf"^request id\s+{marker}$", out, re.MULTILINE)
    [job_id] = ims.jobs
    assert re.search(rf"^IMS job id\s+{job_id}$", out, re.MULTILINE)
    assert re.search(r"^status\s+SUBMITTED$", out, re.MULTILINE)
    assert f"wholeimage status {job_id}" in out
    assert err == ""


def test_submit_json_is_the_job_as_create_answers_it(environment, ims, capsys):
    code, answer, _ = run_json(capsys, "submit", *FLAGS, "--idempotency-key", "nightly-7")

    assert code == EXIT_OK
    assert schema_problems("job.schema.json", answer) == []
    assert answer["job_id"] in ims.jobs
    assert answer["idempotency_key"] == "nightly-7"
    assert answer["requested_by"].startswith("cli:")


def test_submit_reads_the_body_from_a_file_and_flags_override_its_fields(
    environment, ims, capsys, tmp_path
):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"name": "from-file", "instance_id": INSTANCE_ID}))

    code, answer, _ = run_json(capsys, "submit", "--file", str(body), "--name", "from-flag")

    assert code == EXIT_OK
    assert answer["image_name"] == "from-flag"
    [create] = [request for request in ims.requests if request.route == "create"]
    assert split_marker(json.loads(create.body)) == (
        {"name": "from-flag", "instance_id": INSTANCE_ID},
        answer["request_id"],
    )


def test_submit_reads_the_body_from_stdin(environment, ims, capsys, monkeypatch):
    body = {"name": "from-stdin", "backup_id": "9b27efab-4a17-4c06-bfa2-3e0cf021d3c3"}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(body).encode())))

    code, answer, _ = run_json(capsys, "submit", "--file", "-", "--cbr")

    assert code == EXIT_OK
    assert answer["source"] == {"kind": "cbr", "id": body["backup_id"]}


def test_an_invalid_body_lists_every_failing_field_and_submits_nothing(environment, ims, capsys):
    code, out, err = run(
        capsys, "submit", "--name", " padded", "--instance-id", "x", "--backup-id", "y"
    )

    assert code == EXIT_USAGE
    assert out == ""
    paths = re.findall(r"^  (\$\S*): ", err, re.MULTILINE)
    assert set(paths) == {"$.name", "$.instance_id", "$.backup_id"}
    assert "next: fix what is listed above" in err
    assert ims.calls.get("create", 0) == 0


def test_an_invalid_body_with_json_prints_the_error_body_create_answers(environment, capsys):
    code, out, err = run(capsys, "submit", "--name", "x", "--json")

    assert code == EXIT_USAGE
    assert out == ""
    error = json.loads(err)
    assert schema_problems("error.schema.json", error) == []
    assert error["error"]["details"] == [
        {
            "path": "$",
            "message": "give instance_id (to image an ECS) or backup_id (to image a CSBS or CBR backup)",
        }
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"{", "not valid JSON"), (b"\xff", "not UTF-8")],
)
def test_a_body_file_that_is_not_json_is_a_usage_error(capsys, tmp_path, content, message):
    path = tmp_path / "body.json"
    path.write_bytes(content)

    code, _, err = run(capsys, "submit", "--file", str(path))

    assert code == EXIT_USAGE
    assert message in err


def test_submit_without_any_body_says_how_to_give_one(capsys):
    code, _, err = run(capsys, "submit")

    assert code == EXIT_USAGE
    assert "--file body.json" in err


def test_a_missing_setting_is_a_usage_error_naming_the_variable(
    environment, ims, capsys, monkeypatch
):
    monkeypatch.delenv("WHOLEIMAGE_PROJECT_ID")

    code, _, err = run(capsys, "submit", *FLAGS)

    assert code == EXIT_USAGE
    assert "WHOLEIMAGE_PROJECT_ID" in err
    assert ims.calls.get("create", 0) == 0


def test_a_malformed_setting_is_a_usage_error_naming_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("WHOLEIMAGE_POLL_MIN_INTERVAL", "soon")

    code, _, err = run(capsys, "list")

    assert code == EXIT_USAGE
    assert "WHOLEIMAGE_POLL_MIN_INTERVAL" in err


@pytest.mark.slow
def test_ims_staying_unavailable_is_exit_3_with_when_to_retry(environment, ims, capsys):
    ims.inject("create", *[Fault(status=429, headers={"Retry-After": "1"})] * 10)

    code, _, err = run(capsys, "submit", *FLAGS)

    assert code == EXIT_UNAVAILABLE
    assert "next: retry in 1 s or later" in err


def test_ims_refusing_the_request_is_a_usage_error_with_what_ims_said(environment, ims, capsys):
    ims.config.unknown_instances = {INSTANCE_ID}

    code, _, err = run(capsys, "submit", *FLAGS)

    assert code == EXIT_USAGE
    assert "upstream said: 400 IMG.0005" in err


def test_ims_refusing_our_credentials_is_a_usage_error_naming_them(
    environment, capsys, monkeypatch
):
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "wrong-secret")

    code, _, err = run(capsys, "submit", *FLAGS)

    assert code == EXIT_USAGE
    assert "HUAWEICLOUD_SDK_SK" in err
    assert "wrong-secret" not in err


@pytest.mark.slow
def test_an_uncertain_submission_is_exit_3_and_recorded(environment, ims, capsys, monkeypatch):
    monkeypatch.setenv("WHOLEIMAGE_IMS_TIMEOUT", "0.5")
    ims.inject("create", Fault(hang=True, delay=2.0))

    code, answer, _ = run_json(capsys, "submit", *FLAGS)

    assert code == EXIT_UNAVAILABLE
    assert answer["status"] == "SUBMIT_UNCERTAIN"
    assert schema_problems("job.schema.json", answer) == []


def test_the_same_idempotency_key_replays_the_job_and_another_body_is_refused(
    environment, ims, capsys
):
    key = ["--idempotency-key", "nightly-2026-11-27"]
    first = run_json(capsys, "submit", *FLAGS, *key)
    replay = run_json(capsys, "submit", *FLAGS, *key)
    other = run(capsys, "submit", "--name", "other", "--instance-id", INSTANCE_ID, *key)

    assert first[0] == replay[0] == EXIT_OK
    assert replay[1]["job_id"] == first[1]["job_id"]
    assert replay[1]["message"].startswith("Replayed")
    assert ims.calls["create"] == 1
    assert other[0] == EXIT_USAGE
    assert "new --idempotency-key" in other[2]


# --- submit --wait -----------------------------------------------------------------------------


@pytest.fixture
def quick_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks may follow each other quickly (a fresh job is due at once already: the first poll
    follows the environment's schedule, WHOLEIMAGE_POLL_MIN_INTERVAL=0)."""
    monkeypatch.setattr("wholeimage.cli.commands.MIN_PAUSE", 0.05)
    monkeypatch.setattr("wholeimage.cli.commands.REFRESH", 0.2)


def progress_lines(err: str) -> list[tuple[str, str]]:
    """(status, percent) of each progress line ``2026-11-27 10:58:08Z  RUNNING    42%``."""
    return re.findall(r"^\S+ \S+Z  (\w+)\s+(\S+)$", err, re.MULTILINE)


@pytest.mark.slow
def test_submit_wait_drives_check_until_success_showing_each_change_once(
    environment, ims, capsys, quick_waits
):
    ims.config.job_seconds = 1.5

    code, out, err = run(capsys, "submit", *FLAGS, "--wait")

    assert code == EXIT_OK
    lines = progress_lines(err)
    assert lines[0] == ("SUBMITTED", "-")
    assert lines[-1] == ("SUCCESS", "100%")
    assert {"INIT", "RUNNING"} & {status for status, _ in lines}
    assert all(before != after for before, after in itertools.pairwise(lines))
    assert re.search(r"^status\s+SUCCESS$", out, re.MULTILINE)
    assert re.search(r"^image id\s+\S+", out, re.MULTILINE)


@pytest.mark.slow
def test_submit_wait_exits_1_when_the_job_fails(environment, ims, capsys, quick_waits):
    ims.config.job_seconds = 0.2
    ims.config.fail_sources = {"doomed"}

    code, answer, err = run_json(
        capsys, "submit", "--name", "doomed", "--instance-id", INSTANCE_ID, "--wait"
    )

    assert code == EXIT_FAILED
    assert answer["status"] == "FAIL"
    assert answer["error_code"] == "IMG.0014"
    assert schema_problems("job.schema.json", answer) == []
    assert progress_lines(err)[-1][0] == "FAIL"


@pytest.mark.slow
def test_submit_wait_gives_up_after_the_timeout_and_the_job_goes_on(
    environment, ims, capsys, quick_waits
):
    code, answer, _ = run_json(capsys, "submit", *FLAGS, "--wait", "--timeout", "0.5")

    assert code == EXIT_FAILED
    assert answer["status"] in ("INIT", "RUNNING")
    assert answer["message"].startswith(f"still {answer['status']} after 0.5 s")
    assert f"wholeimage status {answer['job_id']}" in answer["message"]


def test_waiting_sleeps_until_the_job_is_due_and_shows_what_another_checker_did(
    environment, ims, store
):
    # A job whose next poll is 3 s away: the wait must not poll before, but re-read the job.
    job = recorded(store, JobStatus.RUNNING, next_poll_at=datetime.now(UTC) + timedelta(seconds=3))
    pauses: list[float] = []

    def another_checker_ends_it(seconds: float) -> None:
        pauses.append(seconds)
        [claimed] = store.claim_due(
            now=datetime.now(UTC) + timedelta(minutes=1),
            owner="deployed-check",
            lease_until=datetime.now(UTC) + timedelta(minutes=5),
            limit=1,
        )
        end = PollUpdate.end(claimed, status=JobStatus.SUCCESS, at=datetime.now(UTC), image_id="i")
        store.record_polls([end], owner="deployed-check")

    err = io.StringIO()
    deps = bootstrap.get_dependencies()

    ended, unfinished = wait_for_verdict(
        deps,
        job,
        timeout=None,
        output=Output(json=False, out=io.StringIO(), err=err),
        sleep=another_checker_ends_it,
    )

    assert unfinished is None
    assert ended.status is JobStatus.SUCCESS
    assert len(pauses) == 1
    assert 2.5 < pauses[0] <= 3.0
    assert ims.calls.get("job", 0) == 0  # it never polled IMS itself
    assert [status for status, _ in progress_lines(err.getvalue())] == ["RUNNING", "SUCCESS"]


# --- status and list ---------------------------------------------------------------------------


def test_status_finds_a_job_by_ims_job_id_and_by_request_id(environment, store, capsys):
    job = recorded(store, JobStatus.RUNNING, process_percent=0.42)

    by_job = run_json(capsys, "status", str(job.ims_job_id))
    by_request = run(capsys, "status", job.request_id)

    assert by_job[0] == by_request[0] == EXIT_OK
    assert by_job[1]["request_id"] == job.request_id
    assert schema_problems("job.schema.json", by_job[1]) == []
    assert re.search(r"^progress\s+42%$", by_request[1], re.MULTILINE)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (JobStatus.SUCCESS, EXIT_OK),
        (JobStatus.FAIL, EXIT_FAILED),
        (JobStatus.TIMED_OUT, EXIT_FAILED),
        (JobStatus.SUBMIT_UNCERTAIN, EXIT_OK),
    ],
)
def test_status_exits_1_only_for_a_failed_or_timed_out_job(
    environment, store, capsys, status, code
):
    job = recorded(store, status)

    assert run(capsys, "status", job.request_id)[0] == code


def test_status_of_an_unknown_id_is_exit_4_and_says_where_to_look(environment, capsys):
    code, out, err = run(capsys, "status", "f" * 32)

    assert code == EXIT_NOT_FOUND
    assert out == ""
    assert "wholeimage list" in err


@pytest.mark.slow
def test_list_shows_jobs_newest_first_in_aligned_columns(environment, store, capsys):
    start = datetime.now(UTC) - timedelta(hours=1)
    jobs = [
        recorded(store, status, created_at=start + timedelta(minutes=index), name=f"img-{index}")
        for index, status in enumerate([JobStatus.SUCCESS, JobStatus.RUNNING, JobStatus.FAIL])
    ]

    code, out, _ = run(capsys, "list")

    assert code == EXIT_OK
    header, *rows = out.splitlines()
    assert [row.split()[2] for row in rows] == [job.request_id for job in reversed(jobs)]
    for column in ("REQUEST ID", "STATUS", "IMAGE NAME"):
        at = header.index(column)
        assert all(row[at - 1] == " " and row[at] != " " for row in rows), column


def test_list_filters_by_status_since_and_limit(environment, store, capsys):
    now = datetime.now(UTC)
    old = recorded(store, JobStatus.FAIL, created_at=now - timedelta(days=2))
    failed = recorded(store, JobStatus.FAIL, created_at=now - timedelta(minutes=30))
    running = recorded(store, JobStatus.RUNNING, created_at=now - timedelta(minutes=20))
    timed_out = recorded(store, JobStatus.TIMED_OUT, created_at=now - timedelta(minutes=10))

    def listed(*argv: str) -> list[str]:
        code, answer, _ = run_json(capsys, "list", *argv)
        assert code == EXIT_OK
        for job in answer["jobs"]:
            assert schema_problems("job.schema.json", job) == []
        return [job["request_id"] for job in answer["jobs"]]

    assert listed("--status", "fail") == [failed.request_id, old.request_id]
    assert listed("--status", "ended", "--since", "1d") == [timed_out.request_id, failed.request_id]
    assert listed("--status", "running,init", "--status", "TIMED_OUT") == [
        timed_out.request_id,
        running.request_id,
    ]
    assert listed("--limit", "1") == [timed_out.request_id]


def test_an_empty_list_says_so(environment, capsys):
    code, out, _ = run(capsys, "list")

    assert code == EXIT_OK
    assert out.splitlines()[-1] == "(no jobs match)"


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--since", "yesterday"],
        ["list", "--status", "DONE"],
        ["list", "--limit", "0"],
        ["submit", "--tag", "novalue"],
        ["submit", "--idempotency-key", " "],
        ["submit", "--timeout", "-1"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_are_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == EXIT_USAGE
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1W", timedelta(weeks=1)),
    ],
)
def test_since_takes_a_duration_ago(text, ago):
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    assert since_moment(text, now=now) == now - ago


def test_since_takes_an_iso_time_utc_unless_it_says_otherwise():
    assert since_moment("2026-11-27T10:00:00") == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert since_moment("2026-11-27T10:00:00+02:00") == datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def test_a_state_store_that_cannot_be_opened_is_exit_3(capsys, monkeypatch, tmp_path):
    # A folder is no database: SQLite cannot open it.
    monkeypatch.setenv("WHOLEIMAGE_STATE_URL", f"sqlite:///{tmp_path}")

    code, _, err = run(capsys, "list")

    assert code == EXIT_UNAVAILABLE
    assert "WHOLEIMAGE_STATE_URL" in err


@pytest.mark.parametrize("command", [["list"], ["status", "f" * 32], ["tick"]])
def test_an_unreachable_postgresql_is_one_error_line_within_seconds_and_exit_3(
    environment, capsys, monkeypatch, command
):
    # It hung 30 s and printed 20 connection-error lines first (issue 10).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WHOLEIMAGE_STATE_URL", f"postgresql://ops:s3cret-pw@127.0.0.1:{port}/state")
    started = time.monotonic()

    code, out, err = run(capsys, *command)

    assert time.monotonic() - started < 3
    assert code == EXIT_UNAVAILABLE
    assert out == ""
    error, next_step = err.splitlines()
    assert error.startswith("error: the state store (WHOLEIMAGE_STATE_URL) failed: ")
    assert "Connection refused" in error
    assert next_step.startswith("next: check that the database of WHOLEIMAGE_STATE_URL")
    assert "s3cret-pw" not in err


# --- tick and notify ---------------------------------------------------------------------------


def test_tick_polls_the_due_jobs_and_answers_as_check_does(environment, ims, capsys, quick_waits):
    ims.config.job_seconds = 0
    run(capsys, "submit", *FLAGS)

    code, answer, _ = run_json(capsys, "tick")
    again = run(capsys, "tick")

    assert code == EXIT_OK
    assert schema_problems("check-summary.schema.json", answer) == []
    assert answer["ended"] == {"SUCCESS": 1}
    assert again[0] == EXIT_OK
    assert re.search(r"^polled\s+0$", again[1], re.MULTILINE)
    assert re.search(r"^still outstanding\s+0$", again[1], re.MULTILINE)


def test_a_tick_that_ims_refuses_our_credentials_for_aborts_with_exit_1(
    environment, store, capsys, monkeypatch
):
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "wrong-secret")
    recorded(
        store,
        JobStatus.SUBMITTED,
        next_poll_at=datetime.now(UTC) - timedelta(seconds=1),
    )

    code, answer, err = run_json(capsys, "tick")

    assert code == EXIT_FAILED
    assert answer["aborted"]
    assert schema_problems("check-summary.schema.json", answer) == []
    assert "next: check the IMS credentials" in err


def dead_letter(store: JobStore) -> Notification:
    now = datetime.now(UTC)
    result = {"request_id": "a" * 32, "status": "FAIL", "image_name": "web01-full"}
    row = Notification.new(
        result_key=f"wi_{'a' * 32}_fail", channel="ops", result_json=json.dumps(result), now=now
    )
    store.add_notifications([row])
    store.claim_notifications(now=now, owner="t", lease_until=now + timedelta(minutes=1), limit=9)
    store.settle_notifications(
        [Settlement(row.notification_id, "DEAD", now, error="410")], owner="t"
    )
    return row


def test_notify_lists_dead_letters_and_redrives_them(environment, store, capsys):
    row = dead_letter(store)

    listed = run_json(capsys, "notify", "--dead-letters")
    table = run(capsys, "notify", "--dead-letters")
    redriven = run_json(capsys, "notify", "--redrive", "all")

    assert listed[0] == table[0] == redriven[0] == EXIT_OK
    assert [letter["id"] for letter in listed[1]["dead_letters"]] == [row.notification_id]
    assert schema_problems("notify-dead-letters.schema.json", listed[1]) == []
    assert row.notification_id in table[1]
    assert "wholeimage notify --redrive all" in table[1]
    assert redriven[1]["redriven"] == 1
    assert schema_problems("notify-summary.schema.json", redriven[1]) == []


def test_the_dead_letters_json_is_the_body_the_notify_function_answers(environment, store, capsys):
    # It printed a bare list while GET ?dead_letters=1 answers {"dead_letters": [...]}.
    dead_letter(store)

    code, listed, _ = run_json(capsys, "notify", "--dead-letters")
    served = create_app("notify", str(ROOT / "functions" / "main.py")).test_client()
    answered = served.get("/", query_string={"dead_letters": "1"})

    assert code == EXIT_OK
    assert answered.status_code == 200
    assert listed == answered.get_json()
    assert set(listed) == {"dead_letters"}


def test_list_outstanding_shows_the_unresolved_jobs_too_and_unresolved_shows_only_them(
    environment, store, capsys
):
    jobs = {status: recorded(store, status) for status in JobStatus}

    def listed(group: str) -> set[JobStatus]:
        code, answer, _ = run_json(capsys, "list", "--status", group)
        assert code == EXIT_OK
        ids = {job["request_id"] for job in answer["jobs"]}
        return {status for status, job in jobs.items() if job.request_id in ids}

    unresolved = {JobStatus.SUBMITTING, JobStatus.SUBMIT_UNCERTAIN}
    pollable = {JobStatus.SUBMITTED, JobStatus.INIT, JobStatus.RUNNING}
    assert listed("outstanding") == unresolved | pollable
    assert listed("unresolved") == unresolved
    assert listed("ended") == set(JobStatus) - unresolved - pollable


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["submit", *FLAGS, "--timeout", "5"], ["--timeout", "--wait"]),
        (["notify", "--dead-letters", "--redrive", "all"], ["--dead-letters", "--redrive"]),
        (["serve", "--server", "werkzeug", "--workers", "2"], ["--workers", "werkzeug"]),
        (["serve", "--server", "werkzeug", "--threads", "4"], ["--threads", "werkzeug"]),
        (
            ["serve", "--server", "werkzeug", "--workers", "2", "--threads", "4"],
            ["--workers and --threads"],
        ),
    ],
    ids=["timeout-without-wait", "dead-letters-with-redrive", "werkzeug-workers",
         "werkzeug-threads", "werkzeug-both"],
)  # fmt: skip
def test_flags_that_would_be_ignored_together_are_a_usage_error_naming_them(
    environment, ims, capsys, argv, named
):
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"wholeimage {argv[0]}: error:" in err
    for text in named:
        assert text in err
    assert ims.calls.get("create", 0) == 0


# --- as an operator runs it --------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("WHOLEIMAGE_", "HUAWEICLOUD_SDK_"))
    }
    env["PYTHONPATH"] = str(ROOT / "functions")
    env.update(extra)
    return env


def wholeimage(*argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wholeimage", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unconfigured_tick_is_a_one_line_error_with_exit_2_not_a_traceback(tmp_path):
    done = wholeimage("tick", env=child_env(), cwd=tmp_path)

    assert done.returncode == EXIT_USAGE
    assert "Traceback" not in done.stderr
    error, next_step = done.stderr.splitlines()
    assert error.startswith("error: IMS endpoint unknown: set WHOLEIMAGE_REGION")
    assert next_step.startswith("next: ")
    assert done.stdout == ""


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_python_without_the_dependencies_is_told_to_use_the_venv_not_a_traceback(
    tmp_path, as_json
):
    # What "python -m wholeimage tick" met outside the venv: pydantic not importable.
    shadow = tmp_path / "no-pydantic"
    shadow.mkdir()
    (shadow / "pydantic.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pydantic'\", name='pydantic')\n"
    )
    env = child_env(PYTHONPATH=f"{shadow}:{ROOT / 'functions'}")

    done = wholeimage("tick", *(["--json"] if as_json else []), env=env, cwd=tmp_path)

    assert done.returncode == EXIT_USAGE
    assert "Traceback" not in done.stderr
    if as_json:
        error = json.loads(done.stderr)
        assert schema_problems("error.schema.json", error) == []
        assert error["error"]["code"] == "misconfigured"
        assert "'pydantic'" in error["error"]["message"]
    else:
        error_line, next_step = done.stderr.splitlines()
        assert error_line == (
            f"error: the Python package 'pydantic' is not installed for {sys.executable}"
        )
        assert ".venv/bin/python -m wholeimage" in next_step
        assert next_step.endswith("(exit 2)")


def test_python_m_wholeimage_help_lists_the_commands_and_the_exit_codes(tmp_path):
    done = wholeimage("--help", env=child_env(), cwd=tmp_path)

    assert done.returncode == 0
    for command in ("submit", "status", "list", "tick", "notify", "serve"):
        assert command in done.stdout
    for code in range(5):
        assert re.search(rf"^  {code}  ", done.stdout, re.MULTILINE)


@pytest.mark.slow
def test_python_m_wholeimage_submits_and_finds_the_job_as_a_child_process(ims, tmp_path):
    env = child_env(
        WHOLEIMAGE_IMS_ENDPOINT=ims.url,
        WHOLEIMAGE_PROJECT_ID=ims.config.project_id,
        HUAWEICLOUD_SDK_AK=ims.config.ak,
        HUAWEICLOUD_SDK_SK=ims.config.sk,
        WHOLEIMAGE_STATE_URL=f"sqlite:///{tmp_path / 'state.db'}",
    )

    submitted = wholeimage("submit", *FLAGS, "--json", env=env, cwd=tmp_path)
    job = json.loads(submitted.stdout)
    found = wholeimage("status", job["job_id"], env=env, cwd=tmp_path)
    missing = wholeimage("status", "nope", env=env, cwd=tmp_path)

    assert submitted.returncode == EXIT_OK, submitted.stderr
    assert job["job_id"] in ims.jobs
    assert submitted.stderr == ""  # logs stay quiet and never on stdout
    assert found.returncode == EXIT_OK
    assert job["request_id"] in found.stdout
    assert missing.returncode == EXIT_NOT_FOUND


def test_the_command_line_module_imports_nothing_heavy(tmp_path):
    heavy = ("flask", "pydantic", "httpx", "jsonschema", "psycopg", "functions_framework")
    probe = (
        "import sys, wholeimage.cli.main; "
        f"print([m for m in sys.modules if m.split('.')[0] in {heavy!r}])"
    )

    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=child_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert done.stdout.strip() == "[]"


def test_the_console_script_is_the_command_line_main():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    module, _, name = project["project"]["scripts"]["wholeimage"].partition(":")

    assert getattr(import_module(module), name) is main


def test_every_command_takes_json(capsys):
    for command in ("submit", "status", "list", "tick", "notify", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--json" in capsys.readouterr().out, command


def test_the_exit_codes_are_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text("utf-8")

    for code in (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND):
        assert re.search(rf"^\| `{code}` \|", readme, re.MULTILINE), code
    assert "wholeimage submit" in readme
