"""CloudEvents' required attributes (``id``, ``source``, ``type``) must be non-empty strings, as
the CloudEvents 1.0 spec requires, in both modes: anything else is a 400 naming each, and changes
nothing (part of issue 9, item 3). The SDK's ``from_http`` itself accepts an empty id or a number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

from wholeimage.bootstrap import Dependencies

ROOT = Path(__file__).resolve().parents[2]
ECS_BODY = {"name": "web01-full", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}
GOOD = {"specversion": "1.0", "id": "evt-1", "source": "//ci/pipeline", "type": "image.requested"}


@pytest.fixture
def client(fake_deps: Dependencies):
    return create_app("create", str(ROOT / "functions" / "main.py")).test_client()


def structured(client: FlaskClient, **attributes: Any) -> Any:
    event = {**GOOD, **attributes, "data": ECS_BODY}
    return client.post(
        "/",
        data=json.dumps(event),
        headers={"Content-Type": "application/cloudevents+json"},
    )


@pytest.mark.parametrize(
    ("attributes", "paths"),
    [
        pytest.param({"id": ""}, ["$.id"], id="empty-id"),
        pytest.param({"id": 5}, ["$.id"], id="number-id"),
        pytest.param({"source": ""}, ["$.source"], id="empty-source"),
        pytest.param({"type": ""}, ["$.type"], id="empty-type"),
        pytest.param({"id": "", "type": ""}, ["$.id", "$.type"], id="two-at-once"),
    ],
)
def test_a_structured_event_without_its_required_attributes_is_refused_naming_each(
    client, fake_ims, fake_deps, attributes, paths
):
    answer = structured(client, **attributes)

    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert [detail["path"] for detail in error["details"]] == paths
    assert fake_ims.submitted == []
    assert fake_deps.store.list_jobs(statuses=None, since=None, limit=10) == []


def test_a_binary_event_with_an_empty_id_header_is_refused_naming_the_header(client, fake_ims):
    answer = client.post(
        "/",
        data=json.dumps(ECS_BODY),
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "",
            "ce-source": "//ci/pipeline",
            "ce-type": "image.requested",
        },
    )

    assert answer.status_code == 400
    assert [d["path"] for d in answer.get_json()["error"]["details"]] == ["header:ce-id"]
    assert fake_ims.submitted == []


def test_a_well_formed_event_is_still_accepted(client, fake_ims):
    answer = structured(client)

    assert answer.status_code == 202
    assert len(fake_ims.submitted) == 1
