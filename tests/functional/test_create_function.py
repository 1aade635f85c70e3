"""The ``create`` function through functions-framework's own app (``create_app().test_client()``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from functions_framework import create_app

from tests.fakes import FakeImsClient, make_dependencies
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.errors import (
    ImsRejectedError,
    UpstreamAuthError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from wholeimage.logs import JsonFormatter, register_secrets

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
VALID = ROOT / "tests" / "data" / "create" / "valid"
ECS_BODY = {"name": "web01-full", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}
BACKUP_BODY = {
    "name": "from-cbr",
    "backup_id": "9b27efab-4a17-4c06-bfa2-3e0cf021d3c3",
    "whole_image_type": "CBR",
}


# The shared fixtures (tests/functional/conftest.py), by the short names these tests use.
@pytest.fixture
def ims(fake_ims: FakeImsClient) -> FakeImsClient:
    return fake_ims


@pytest.fixture
def deps(fake_deps: Dependencies) -> Dependencies:
    return fake_deps


@pytest.fixture
def client(deps: Dependencies):
    return create_app("create", MAIN).test_client()


def post_json(client: FlaskClient, body: Any, **headers: str) -> Any:
    return client.post(
        "/", data=json.dumps(body), headers={"Content-Type": "application/json", **headers}
    )


def seed_bodies() -> list[Path]:
    return sorted(VALID.glob("seed-*.json"))


@pytest.mark.parametrize("path", seed_bodies(), ids=lambda p: p.name)
def test_each_seed_body_is_submitted_verbatim_and_answered_202(client, ims, path: Path):
    # Given a seed example body exactly as the IMS document prints it
    raw = path.read_bytes()
    # When it is posted
    response = client.post("/", data=raw, headers={"Content-Type": "application/json"})
    # Then IMS got the same body and the caller a 202 with the job id and where to read it
    assert response.status_code == 202
    assert ims.submitted == [json.loads(raw)]
    answer = response.get_json()
    assert answer["job_id"] == f"{1:032x}"
    assert answer["status"] == "SUBMITTED"
    assert answer["status_url"] == f"http://localhost/?job_id={answer['job_id']}"
    assert response.headers["Location"] == answer["status_url"]


def test_there_are_four_seed_bodies():
    assert len(seed_bodies()) == 4


def test_a_submitted_job_can_be_read_back_by_job_id_and_by_request_id(client):
    created = post_json(client, ECS_BODY).get_json()
    by_job = client.get(f"/?job_id={created['job_id']}")
    by_request = client.get(f"/?request_id={created['request_id']}")
    assert by_job.status_code == 200
    assert by_job.get_json()["status"] == "SUBMITTED"
    assert by_job.get_json()["source"] == {"kind": "ecs", "id": ECS_BODY["instance_id"]}
    assert by_request.get_json()["job_id"] == created["job_id"]


def test_an_unknown_job_id_is_404_and_a_missing_one_is_400(client):
    unknown = client.get("/?job_id=ffffffffffffffffffffffffffffffff")
    missing = client.get("/")
    assert unknown.status_code == 404
    assert unknown.get_json()["error"]["code"] == "not_found"
    assert missing.status_code == 400
    assert missing.get_json()["error"]["details"][0]["path"] == "query:job_id"


def assert_nothing_happened(deps: Dependencies, ims: FakeImsClient) -> None:
    assert ims.submitted == []
    assert deps.store.get_by_ims_job_id(f"{1:032x}") is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "content_type", "path"),
    [
        (b"", "application/json", "$"),
        (b"   ", "application/json", "$"),
        (b"{not json", "application/json", "$"),
        (b"\xff\xfe", "application/json", "$"),
        (json.dumps(ECS_BODY).encode(), "text/plain", "header:Content-Type"),
        (json.dumps(ECS_BODY).encode(), "", "header:Content-Type"),
        (b"name=x", "application/x-www-form-urlencoded", "header:Content-Type"),
    ],
    ids=["empty", "blank", "not-json", "not-utf8", "text-plain", "no-content-type", "form"],
)
def test_unreadable_bodies_are_400_with_a_path_and_change_nothing(
    client, deps, ims, data, content_type, path
):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/", data=data, headers=headers)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] in ("invalid_request", "unsupported_media_type")
    assert error["message"]
    assert [detail["path"] for detail in error["details"]] == [path]
    assert_nothing_happened(deps, ims)


def test_schema_violations_list_every_failing_field_and_change_nothing(client, deps, ims):
    body = {"name": " bad<name", "instance_id": "web\u000001", "max_ram": "1024", "colour": "red"}
    response = post_json(client, body)
    assert response.status_code == 400
    paths = {detail["path"] for detail in response.get_json()["error"]["details"]}
    assert {"$.name", "$.instance_id", "$.max_ram", "$.colour"} <= paths
    assert_nothing_happened(deps, ims)


# What the two clouds' tag pages allow differs; WHOLEIMAGE_CLOUD picks (docs/ims-api.md §1.3).
SPACED_TAGS = {**ECS_BODY, "image_tags": [{"key": " cost center ", "value": "a:b@c"}]}


def test_image_tags_huawei_cloud_refuses_are_a_400_naming_them_there(client, deps, ims):
    assert deps.settings.cloud == "huaweicloud"

    response = post_json(client, SPACED_TAGS)

    assert response.status_code == 400
    paths = [detail["path"] for detail in response.get_json()["error"]["details"]]
    assert paths == ["$.image_tags[0].key", "$.image_tags[0].value"]
    assert_nothing_happened(deps, ims)


def test_on_open_telekom_cloud_the_same_tags_are_submitted_as_given(tmp_path, ims):
    # OTC strips outer spaces itself and documents no character rule for image_tags.
    deps = make_dependencies(tmp_path, ims, cloud="otc")
    set_dependencies(deps)
    try:
        response = post_json(create_app("create", MAIN).test_client(), SPACED_TAGS)
    finally:
        set_dependencies(None)
        deps.store.close()

    assert response.status_code == 202
    [sent] = ims.submitted
    assert sent["image_tags"] == SPACED_TAGS["image_tags"]


def test_a_body_over_64_kib_is_413_and_changes_nothing(client, deps, ims):
    body = {**ECS_BODY, "description": "x" * (64 * 1024)}
    response = post_json(client, body)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert_nothing_happened(deps, ims)


def test_other_methods_are_405(client):
    response = client.put("/", data="{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"


def make_event(data: dict[str, Any], event_id: str = "evt-1") -> CloudEvent:
    return CloudEvent(
        {"type": "com.example.backup.done", "source": "//scheduler/backups", "id": event_id}, data
    )


@pytest.mark.parametrize("mode", [to_structured, to_binary], ids=["structured", "binary"])
def test_a_cloudevent_in_either_mode_submits_its_data(client, ims, mode):
    headers, body = mode(make_event(BACKUP_BODY))
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 202
    assert ims.submitted == [BACKUP_BODY]
    assert response.get_json()["requested_by"] == "//scheduler/backups"


@pytest.mark.parametrize("mode", [to_structured, to_binary], ids=["structured", "binary"])
def test_a_redelivered_cloudevent_is_answered_from_the_record_without_a_new_submission(
    client, ims, mode
):
    headers, body = mode(make_event(ECS_BODY))
    first = client.post("/", data=body, headers=headers)
    again = client.post("/", data=body, headers=headers)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert len(ims.submitted) == 1


def test_a_cloudevent_with_invalid_data_names_the_field(client, deps, ims):
    headers, body = to_structured(make_event({"name": "x"}))
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 400
    assert ims.submitted == []


def test_a_malformed_cloudevent_is_400(client, ims):
    response = client.post(
        "/",
        data=b'{"specversion": "1.0", "data": {}}',
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert ims.submitted == []


def test_an_idempotency_key_replays_the_first_answer(client, ims):
    first = post_json(client, ECS_BODY, **{"Idempotency-Key": "ci-run-42"})
    again = post_json(client, ECS_BODY, **{"Idempotency-Key": "ci-run-42"})
    assert first.status_code == again.status_code == 202
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(ims.submitted) == 1


def test_the_same_idempotency_key_with_another_body_is_409(client, ims):
    post_json(client, ECS_BODY, **{"Idempotency-Key": "ci-run-42"})
    other = post_json(client, {**ECS_BODY, "name": "other"}, **{"Idempotency-Key": "ci-run-42"})
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert len(ims.submitted) == 1


def test_an_invalid_idempotency_key_is_400(client, ims):
    response = post_json(client, ECS_BODY, **{"Idempotency-Key": "x" * 300})
    assert response.status_code == 400
    assert response.get_json()["error"]["details"][0]["path"] == "header:Idempotency-Key"
    assert ims.submitted == []


def test_a_second_request_for_a_backup_with_a_job_is_409_before_ims_is_called(client, ims):
    post_json(client, BACKUP_BODY)
    again = post_json(client, {**BACKUP_BODY, "name": "second-try"})
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "backup_in_use"
    assert again.get_json()["error"]["details"][0]["path"] == "$.backup_id"
    assert len(ims.submitted) == 1


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (
            ImsRejectedError(
                "IMS refused the request: backup already used",
                http_status=400,
                upstream={"status": 400, "code": "IMG.0029", "message": "backup already used"},
            ),
            400,
            "ims_rejected",
        ),
        (
            UpstreamAuthError(
                "IMS refused wholeimage's credentials (401)", upstream={"status": 401}
            ),
            502,
            "upstream_auth_failed",
        ),
        (UpstreamUnavailableError("IMS is throttling", retry_after=7), 503, "upstream_unavailable"),
    ],
    ids=["ims-400", "ims-401", "ims-503"],
)
def test_ims_failures_map_to_statuses_and_leave_nothing_recorded(
    client, deps, ims, failure, status, code
):
    ims.script.append(failure)
    response = post_json(client, BACKUP_BODY, **{"Idempotency-Key": "k1"})
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    if status == 503:
        assert response.headers["Retry-After"] == "7"
    if code == "ims_rejected":
        assert response.get_json()["error"]["upstream"]["code"] == "IMG.0029"
    # Nothing was kept: the same key and backup may be tried again, and this time it goes through.
    retry = post_json(client, BACKUP_BODY, **{"Idempotency-Key": "k1"})
    assert retry.status_code == 202
    assert len(ims.submitted) == 2


def test_a_timeout_after_sending_is_recorded_as_uncertain_and_never_resubmitted(client, ims):
    ims.script.append(UpstreamTimeoutError("IMS did not answer", request_sent=True))
    first = post_json(client, BACKUP_BODY, **{"Idempotency-Key": "k2"})
    again = post_json(client, BACKUP_BODY, **{"Idempotency-Key": "k2"})
    other_key = post_json(client, BACKUP_BODY, **{"Idempotency-Key": "k3"})
    assert first.status_code == 202
    assert first.get_json()["status"] == "SUBMIT_UNCERTAIN"
    assert "may or may not" in first.get_json()["message"]
    assert first.get_json()["status_url"].endswith(f"?request_id={first.get_json()['request_id']}")
    assert again.get_json()["status"] == "SUBMIT_UNCERTAIN"
    assert other_key.status_code == 409  # the backup may have its image already
    assert len(ims.submitted) == 1


@pytest.fixture
def token_client(tmp_path: Path, ims: FakeImsClient) -> Iterator[FlaskClient]:
    dependencies = make_dependencies(tmp_path, ims, api_token="s3cret-caller-token")
    set_dependencies(dependencies)
    yield create_app("create", MAIN).test_client()
    set_dependencies(None)


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic czNjcmV0", "Bearer ", "s3cret-caller-token"]
)
def test_with_a_token_configured_calls_without_it_are_401_and_do_nothing(
    token_client, ims, authorization
):
    headers = {"Authorization": authorization} if authorization is not None else {}
    post = post_json(token_client, ECS_BODY, **headers)
    get = token_client.get("/?job_id=x", headers=headers)
    assert post.status_code == get.status_code == 401
    assert post.headers["WWW-Authenticate"].startswith("Bearer")
    assert ims.submitted == []


def test_with_a_token_configured_the_right_bearer_goes_through(token_client, ims):
    response = post_json(token_client, ECS_BODY, Authorization="Bearer s3cret-caller-token")
    assert response.status_code == 202
    assert len(ims.submitted) == 1


def test_log_lines_are_json_for_cloud_logging_without_secrets(client, caplog):
    register_secrets(["AKSECRETVALUE123", "sk-very-secret"])
    formatter = JsonFormatter()
    with caplog.at_level(logging.INFO, logger="wholeimage"):
        post_json(
            client,
            ECS_BODY,
            **{
                "Idempotency-Key": "trace-me",
                "X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/1;o=1",
            },
        )
        logging.getLogger("wholeimage.test").info("leak AKSECRETVALUE123 and sk-very-secret?")
    lines = [json.loads(formatter.format(record)) for record in caplog.records]
    submitted = next(line for line in lines if line["message"] == "IMS job submitted")
    assert submitted["severity"] == "INFO"
    assert submitted["idempotency_key"] == "trace-me"
    assert submitted["job_id"] == f"{1:032x}"
    assert submitted["logging.googleapis.com/trace"] == "105445aa7843bc8bf206b12000100000"
    leak = next(line for line in lines if line["message"].startswith("leak"))
    assert "AKSECRETVALUE123" not in leak["message"]
    assert "sk-very-secret" not in leak["message"]


@pytest.mark.parametrize("query", ["job_id=a%00b", "request_id=x%0Ay", "job_id=" + "a" * 200])
def test_a_job_id_that_cannot_be_one_is_400_not_a_lookup(client, query):
    response = client.get(f"/?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]["details"][0]["path"].startswith("query:")


def test_a_cloudevent_whose_id_is_not_printable_is_400(client, ims):
    event = CloudEvent({"type": "t", "source": "//s", "id": "a\x00b"}, ECS_BODY)
    headers, body = to_structured(event)
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 400
    assert ims.submitted == []


@pytest.mark.parametrize("job_id", ["a\r\nSet-Cookie: x=1", "a&request_id=b", "a b/c"])
def test_an_odd_ims_job_id_never_enters_the_status_url(client, ims, job_id):
    """A job id with a line feed broke the Location header: a 500 after IMS had accepted the job
    (found by issue 9's fuzz test). The real client refuses such ids (they become
    SUBMIT_UNCERTAIN); past a fake that hands one on, the URL names the request id."""
    ims.script.append(job_id)

    response = post_json(client, ECS_BODY)

    assert response.status_code == 202
    answer = response.get_json()
    assert answer["job_id"] == job_id
    expected = f"http://localhost/?request_id={quote(answer['request_id'], safe='')}"
    assert answer["status_url"] == expected
    assert response.headers["Location"] == answer["status_url"]
