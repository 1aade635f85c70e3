"""Poison bodies through the served ``create`` and ``notify`` functions: a lone surrogate, deep
nesting or a 5,000-digit integer is a 400 naming where, and leaves nothing behind (part of
issue 9, item 3). Before, each was a 500, and a stored surrogate made its key answer 500 for good."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from functions_framework import create_app

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
INSTANCE = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param(
            f'{{"name": "web01", "instance_id": "{INSTANCE}", "description": "\\ud800"}}',
            "$.description",
            id="surrogate-description",
        ),
        pytest.param(
            f'{{"name": "web01", "instance_id": "{INSTANCE}", '
            '"image_tags": [{"key": "k", "value": "\\udc00"}]}',
            "$.image_tags[0].value",
            id="surrogate-tag-value",
        ),
        pytest.param(
            f'{{"name": "web01", "instance_id": "{INSTANCE}", "\\ud800": 1}}',
            "$['\\ud800']",
            id="surrogate-member-name",  # was a 500: the path in the answer held the surrogate
        ),
        pytest.param("[" * 2000 + "]" * 2000, "$", id="deep-nesting"),
        pytest.param('{"min_ram": ' + "9" * 5000 + "}", "$", id="huge-integer"),
    ],
)
@pytest.mark.parametrize("target", ["create", "notify"])
def test_a_poison_body_is_a_400_naming_where_and_changes_nothing(
    fake_deps, fake_ims, target, body, path
):
    client = create_app(target, MAIN).test_client()

    answer = client.post(
        "/",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": "k1"},
    )

    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert path in [detail["path"] for detail in error["details"]]
    assert fake_ims.submitted == []
    assert fake_deps.store.list_jobs(statuses=None, since=None, limit=10) == []
    assert fake_deps.store.notification_counts() == {}


@pytest.mark.parametrize("bad_id", ["ff80\r\nX-Evil: 1", "job 1", "../../v3", "a?b"])
def test_a_stored_job_id_that_is_not_plain_never_enters_the_location_header(
    fake_deps, fake_ims, bad_id
):
    # A row recorded before IMS's ids were checked: every replay of its key answered 500, as
    # the Location header could not be built. It answers with the request id instead.
    client = create_app("create", MAIN).test_client()
    body = {"name": "web01", "instance_id": INSTANCE}
    first = client.post("/", json=body, headers={"Idempotency-Key": "k1"})
    request_id = first.get_json()["request_id"]
    # The port cannot store a bad id: put one there behind its back.
    with fake_deps.store._transaction() as connection:
        connection.execute(
            "UPDATE jobs SET ims_job_id = ? WHERE request_id = ?", (bad_id, request_id)
        )

    replay = client.post("/", json=body, headers={"Idempotency-Key": "k1"})

    assert replay.status_code == 202
    assert replay.headers["Location"].endswith(f"?request_id={request_id}")
    assert replay.get_json()["status_url"] == replay.headers["Location"]
    assert len(fake_ims.submitted) == 1


POISON_DATA = f'{{"name": "web01", "instance_id": "{INSTANCE}", "description": "\\ud800"}}'
EVENT = '"specversion": "1.0", "id": "evt-1", "source": "//ci/pipeline", "type": "image.requested"'


@pytest.mark.parametrize(
    ("headers", "body", "path"),
    [
        pytest.param(
            {"Content-Type": "application/cloudevents+json"},
            f'{{{EVENT}, "data": {POISON_DATA}}}',
            "$.data.description",
            id="structured",
        ),
        pytest.param(
            {"Content-Type": "application/cloudevents+json"},
            f'{{{EVENT}, "data": {"[" * 500 + "]" * 500}}}',
            "$.data",
            id="structured-deep",
        ),
        pytest.param(
            {"Content-Type": "application/cloudevents+json"},
            f'{{{EVENT}, "data": "\\ud800"}}',
            "$.data",
            id="structured-data-string",
        ),
        pytest.param(
            {
                "Content-Type": "application/json",
                "ce-specversion": "1.0",
                "ce-id": "evt-1",
                "ce-source": "//ci/pipeline",
                "ce-type": "image.requested",
            },
            POISON_DATA,
            "$.data.description",
            id="binary",
        ),
    ],
)
@pytest.mark.parametrize("target", ["create", "notify"])
def test_a_cloud_event_whose_data_the_sdk_parsed_gets_the_same_checks_as_a_body(
    fake_deps, fake_ims, target, headers, body, path
):
    """The SDK parses a structured event, and JSON data in binary mode, itself: that data was
    submitted and stored unchecked, and a stored surrogate answered 500 (found by issue 9's fuzz
    test)."""
    client = create_app(target, MAIN).test_client()

    answer = client.post("/", data=body.encode(), headers=headers)

    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert path in [detail["path"] for detail in error["details"]]
    assert fake_ims.submitted == []
    assert fake_deps.store.list_jobs(statuses=None, since=None, limit=10) == []
    assert fake_deps.store.notification_counts() == {}


@pytest.mark.parametrize("number", ["1e20", "1e300", "1" + "0" * 30 + ".0"])
def test_an_integer_written_as_a_float_too_big_for_the_model_is_a_400_naming_it(
    fake_deps, fake_ims, number
):
    """The schema's "integer" is any number without a fraction; the model reads such a float only
    below 2**63, and pydantic's refusal was a 500 (found by issue 9's fuzz test)."""
    client = create_app("create", MAIN).test_client()
    body = f'{{"name": "web01", "instance_id": "{INSTANCE}", "min_ram": {number}}}'

    answer = client.post("/", data=body.encode(), headers={"Content-Type": "application/json"})

    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert [detail["path"] for detail in error["details"]] == ["$.min_ram"]
    assert "pydantic" not in json.dumps(error)
    assert fake_ims.submitted == []


def test_an_integer_written_as_a_small_float_is_still_read_as_that_integer(fake_deps, fake_ims):
    client = create_app("create", MAIN).test_client()
    body = f'{{"name": "web01", "instance_id": "{INSTANCE}", "min_ram": 1e3}}'

    answer = client.post("/", data=body.encode(), headers={"Content-Type": "application/json"})

    assert answer.status_code == 202
    assert fake_ims.submitted[0]["min_ram"] == 1000
