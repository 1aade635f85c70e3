"""``date-time`` is asserted the same way where rfc3339-validator is installed and where it is not.

jsonschema asserts ``format: date-time`` only when the optional rfc3339-validator is importable.
The test tools bring it (openapi-spec-validator depends on it); a deployment, which installs
``requirements.txt`` only, does not. ``wholeimage.validation`` registers its own check, so a time
the schemas' pattern lets through but the code cannot read (30 February, second 60, year 0, a
time in the year 10000 once in UTC) is refused as a 400 in both, never read later into a 500
(schemathesis, run against the dev environment, could not see that difference). What RFC 3339
allows and the pattern lets through, a lower-case ``t`` and ``z`` among it, is read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from wholeimage.errors import RequestInvalidError
from wholeimage.results import JobResult
from wholeimage.validation import JOB_RESULT_SCHEMA, validate

ROOT = Path(__file__).resolve().parents[2]
UNREADABLE = [
    "2026-02-30T00:00:00Z",
    "2026-11-27T10:00:60Z",
    "0000-01-01T00:00:00Z",
    # No date in UTC: rendering a message with one was a 500 (found by issue 9's fuzz test).
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+00:01",
]
READABLE = [
    "2026-11-27T10:00:00Z",
    "2026-11-27T10:00:00.123456+00:00",
    "2026-11-27T10:00:00.1234567+09:30",
    "2024-02-29T23:59:59-05:00",
    "2026-11-27t10:00:00+00:00",
    # RFC 3339 §5.6: "T" and "Z" may be lower case; notify refused this one (issue 10).
    "2026-11-27t10:00:00z",
    "2026-11-27T10:00:00.25z",
]


def job_result(ended_at: str) -> dict[str, str]:
    return {"request_id": "a" * 32, "status": "FAIL", "image_name": "x", "ended_at": ended_at}


@pytest.mark.parametrize("moment", UNREADABLE)
def test_a_time_the_code_cannot_read_is_refused_at_its_path(moment):
    with pytest.raises(RequestInvalidError) as raised:
        validate(JOB_RESULT_SCHEMA, job_result(moment))

    assert [detail["path"] for detail in raised.value.details] == ["$.ended_at"]


@pytest.mark.parametrize("moment", READABLE)
def test_an_rfc_3339_time_with_an_offset_is_accepted(moment):
    validate(JOB_RESULT_SCHEMA, job_result(moment))


@pytest.mark.parametrize("moment", READABLE)
def test_an_accepted_time_is_read_as_the_instant_it_names(moment):
    result = JobResult.from_json(job_result(moment))

    upper = moment.upper().replace("Z", "+00:00")
    assert result.ended_at == datetime.fromisoformat(upper)
    assert result.ended_at.utcoffset() is not None


@pytest.mark.slow
def test_without_rfc3339_validator_installed_the_notify_function_still_answers_400(tmp_path):
    # A child process where rfc3339-validator cannot be imported, as in a deployment.
    probe = textwrap.dedent(
        f"""
        import json, pathlib, sys
        sys.modules["rfc3339_validator"] = None
        from functions_framework import create_app
        from tests.fakes import make_dependencies
        from wholeimage.bootstrap import set_dependencies
        set_dependencies(make_dependencies(pathlib.Path({str(tmp_path)!r})))
        client = create_app("notify", {str(ROOT / "functions" / "main.py")!r}).test_client()
        statuses = [
            client.post("/", json={{**json.loads(sys.argv[1]), "ended_at": moment}}).status_code
            for moment in json.loads(sys.argv[2])
        ]
        print(json.dumps(statuses))
        """
    )

    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(job_result("")), json.dumps(UNREADABLE)],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'functions'}:{ROOT}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [400] * len(UNREADABLE)
