"""``openapi/openapi.json``: a valid OpenAPI 3.1 document whose bodies are the files of ``schemas/``,
and real answers of the three functions that match what it documents for their status.

The functions are driven in-process through ``wholeimage.cli.serve.build_app`` (the three
functions-framework apps at ``/create``, ``/check`` and ``/notify``, the paths the document
names), with a real SQLite store and either the IMS emulator or a scripted fake IMS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.readers import read_from_filename
from referencing import Registry, Resource
from werkzeug.test import Client, TestResponse

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.fakes import FakeImsClient, make_dependencies, make_settings
from wholeimage import errors
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.cli.serve import build_app
from wholeimage.errors import (
    ConfigurationError,
    ImsRejectedError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from wholeimage.ims.client import HttpImsClient
from wholeimage.models import JobStatus
from wholeimage.store.records import Notification, Settlement
from wholeimage.store.sqlite import SqliteJobStore
from wholeimage.validation import load_schemas

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT_PATH = ROOT / "openapi" / "openapi.json"
SCHEMA_DIR = ROOT / "schemas"
DOCUMENT: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text("utf-8"))
SCHEMAS = load_schemas(SCHEMA_DIR)
SCHEMA_PREFIX = "../schemas/"  # how the document refers to schemas/, relative to openapi/
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

ECS_BODY = {"name": "web01-full", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}
API_TOKEN = "openapi-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
JOB_RESULT = {
    "request_id": "9f1c2d3e4b5a69788796a5b4c3d2e1f0",
    "status": "FAIL",
    "image_name": "web01-full",
    "error_code": "IMG.0014",
    "fail_reason": "emulated",
    "submitted_at": "2026-11-27T09:00:00Z",
    "ended_at": "2026-11-27T09:30:00Z",
}


# --- the document ------------------------------------------------------------------------------


def all_refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_refs(item)


def resolve_pointer(document: Any, pointer: str) -> Any:
    """``document`` at a JSON pointer such as ``/components/responses/BadRequest``."""
    node = document
    for part in pointer.lstrip("/").split("/"):
        if not part:
            continue
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def dereferenced(node: dict[str, Any]) -> dict[str, Any]:
    """A response or header object, or the component its ``$ref`` points at."""
    if "$ref" in node:
        return dict(resolve_pointer(DOCUMENT, node["$ref"].removeprefix("#")))
    return node


@pytest.mark.slow
def test_the_document_is_a_valid_openapi_3_1_document_with_every_reference_resolved():
    # The validator follows every $ref, into the schema files and between them.
    spec, base_uri = read_from_filename(str(DOCUMENT_PATH))

    validate_openapi(spec, base_uri=base_uri)

    assert spec["openapi"].startswith("3.1")


def test_every_schema_reference_names_a_file_of_the_schema_folder_and_a_place_in_it():
    external = [ref for ref in all_refs(DOCUMENT) if not ref.startswith("#")]

    assert external
    for ref in external:
        assert ref.startswith(SCHEMA_PREFIX), ref
        file_name, _, fragment = ref.removeprefix(SCHEMA_PREFIX).partition("#")
        assert (SCHEMA_DIR / file_name).is_file(), ref
        resolve_pointer(SCHEMAS[file_name], fragment)  # raises when the place is not there


def test_every_internal_reference_points_into_the_document():
    internal = [ref for ref in all_refs(DOCUMENT) if ref.startswith("#")]

    assert internal
    for ref in internal:
        resolve_pointer(DOCUMENT, ref.removeprefix("#"))


def test_every_schema_file_is_referenced_by_the_document():
    referenced = {
        ref.removeprefix(SCHEMA_PREFIX).partition("#")[0]
        for ref in all_refs(DOCUMENT)
        if ref.startswith(SCHEMA_PREFIX)
    }

    assert referenced == set(SCHEMAS)


def media_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, schema) of every request and response body the document describes."""
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, item in {**DOCUMENT["paths"], **DOCUMENT["webhooks"]}.items()
        for method, operation in item.items()
        if method in METHODS
    ]
    for where, operation in operations:
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            yield f"{where} request {media_type}", media["schema"]
        for status, response in operation["responses"].items():
            for media_type, media in dereferenced(response).get("content", {}).items():
                yield f"{where} {status} {media_type}", media["schema"]


def test_every_json_body_is_taken_from_the_schema_folder_never_written_inline():
    for where, schema in media_schemas():
        refs = list(all_refs(schema))
        opaque = not refs and set(schema) <= {"description"}  # "anything": a body ignored
        assert opaque or any(ref.startswith(SCHEMA_PREFIX) for ref in refs), where


def test_the_error_schema_names_exactly_the_codes_wholeimage_answers_with():
    def codes(kind: type[errors.WholeImageError]) -> set[str]:
        return {kind.code}.union(*(codes(sub) for sub in kind.__subclasses__()))

    enum = SCHEMAS["error.schema.json"]["properties"]["error"]["properties"]["code"]["enum"]

    assert set(enum) == codes(errors.WholeImageError)
    assert len(enum) == len(set(enum))


def test_the_job_schema_names_exactly_the_job_statuses():
    enum = SCHEMAS["job.schema.json"]["properties"]["status"]["enum"]

    assert enum == [status.value for status in JobStatus]


def test_the_document_version_is_the_package_version():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]

    assert DOCUMENT["info"]["version"] == project["version"]


# --- real answers against the document ----------------------------------------------------------


SCHEMA_BASE = "https://wholeimage.example/schemas/"
REGISTRY: Registry[Any] = Registry().with_resources(
    (document["$id"], Resource.from_contents(document)) for document in SCHEMAS.values()
)


def _by_id(node: Any) -> Any:
    """``node`` with ``../schemas/x.json`` references spelt as the files' ``$id``s."""
    if isinstance(node, dict):
        return {
            key: (
                SCHEMA_BASE + value.removeprefix(SCHEMA_PREFIX)
                if key == "$ref" and isinstance(value, str) and value.startswith(SCHEMA_PREFIX)
                else _by_id(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_by_id(item) for item in node]
    return node


def documented_response(path: str, method: str, status: int) -> dict[str, Any]:
    """What the document says ``method path`` answers with ``status`` (exact, else ``4XX``)."""
    responses = DOCUMENT["paths"][path][method.lower()]["responses"]
    response = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    assert response is not None, f"{method} {path} does not document {status}"
    return dereferenced(response)


def assert_documented(path: str, method: str, response: TestResponse) -> Any:
    """``response`` is what the document says for its status: body schema, required headers."""
    documented = documented_response(path, method, response.status_code)
    schema = _by_id(documented["content"][response.mimetype]["schema"])
    validator = Draft202012Validator(
        schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    body = response.get_json()
    problems = [f"{error.json_path}: {error.message}" for error in validator.iter_errors(body)]
    assert problems == [], f"{method} {path} {response.status_code}: {problems}"
    for name, header in documented.get("headers", {}).items():
        if dereferenced(header).get("required"):
            assert name in response.headers, f"{method} {path} {response.status_code}: {name}"
    return body


@pytest.fixture
def app() -> Any:
    return build_app()


@pytest.fixture
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(EmulatorConfig(job_seconds=0)) as emulator:
        yield emulator


def close(deps: Dependencies) -> None:
    if isinstance(deps.ims, HttpImsClient):
        deps.ims._http.close()
    if deps.webhooks is not None:
        deps.webhooks.close()
    deps.store.close()


@pytest.fixture
def emulated(ims: ImsEmulator, tmp_path: Path) -> Iterator[Dependencies]:
    """Real IMS client and poller against the emulator; one chat channel writing to a file."""
    settings = make_settings(
        ims_endpoint=ims.url,
        access_key=ims.config.ak,
        secret_key=ims.config.sk,
        project_id=ims.config.project_id,
        poll_min_interval=0,
        poll_max_interval=0,
        api_token=API_TOKEN,
        channels=[{"name": "ops", "format": "slack", "url": f"file:{tmp_path / 'chat.jsonl'}"}],
    )
    deps = Dependencies(settings=settings, store=SqliteJobStore(str(tmp_path / "state.db")))
    set_dependencies(deps)
    yield deps
    set_dependencies(None)
    close(deps)


@pytest.fixture
def fake_ims() -> FakeImsClient:
    return FakeImsClient()


@pytest.fixture
def scripted(tmp_path: Path, fake_ims: FakeImsClient) -> Iterator[Dependencies]:
    """A fake IMS whose answers the test scripts (errors included)."""
    deps = make_dependencies(tmp_path, fake_ims, api_token=API_TOKEN)
    set_dependencies(deps)
    yield deps
    set_dependencies(None)
    close(deps)


def post_json(client: Client, path: str, body: Any, **headers: str) -> TestResponse:
    return client.post(
        path,
        data=json.dumps(body),
        headers={**AUTH, "Content-Type": "application/json", **headers},
    )


def test_a_submission_its_replay_and_reading_it_back_match_the_document(app, emulated):
    client = Client(app)

    created = post_json(client, "/create", ECS_BODY, **{"Idempotency-Key": "nightly-1"})
    replayed = post_json(client, "/create", ECS_BODY, **{"Idempotency-Key": "nightly-1"})
    job = assert_documented("/create", "POST", created)
    assert_documented("/create", "POST", replayed)
    by_job = client.get("/create", query_string={"job_id": job["job_id"]}, headers=AUTH)
    by_request = client.get("/create", query_string={"request_id": job["request_id"]}, headers=AUTH)

    assert created.status_code == replayed.status_code == 202
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert job["status_url"].startswith("http://localhost/create/?job_id=")
    assert assert_documented("/create", "GET", by_job)["job_id"] == job["job_id"]
    assert assert_documented("/create", "GET", by_request)["request_id"] == job["request_id"]


def test_a_cloud_event_submission_matches_the_document(app, emulated):
    event = CloudEvent({"type": "com.example.backup.done", "source": "/backups"}, ECS_BODY)
    headers, data = to_structured(event)

    response = Client(app).post("/create", data=data, headers={**AUTH, **headers})

    assert response.status_code == 202
    assert assert_documented("/create", "POST", response)["requested_by"] == "/backups"


@pytest.mark.slow
def test_a_check_tick_that_ends_a_job_and_notifies_matches_the_document(app, emulated):
    # Due at once (the first poll follows the settings' schedule, 0 s here), and the emulator
    # ends its jobs at once.
    client = Client(app)
    post_json(client, "/create", ECS_BODY)

    ended = client.post("/check", headers=AUTH)
    idle = client.get("/check", headers=AUTH)

    summary = assert_documented("/check", "POST", ended)
    assert summary["ended"] == {"SUCCESS": 1}
    assert summary["notify"]["delivered"] == 1
    assert assert_documented("/check", "GET", idle)["polled"] == 0


@pytest.mark.slow
def test_notify_calls_match_the_document(app, emulated):
    client = Client(app)
    now = datetime.now(UTC)
    dead = Notification.new(
        result_key="wi_gone_fail", channel="ops", result_json=json.dumps(JOB_RESULT), now=now
    )
    emulated.store.add_notifications([dead])
    emulated.store.claim_notifications(
        now=now, owner="t", lease_until=now + timedelta(minutes=1), limit=10
    )
    emulated.store.settle_notifications(
        [Settlement(dead.notification_id, "DEAD", now, error="404")], owner="t"
    )

    listed = client.get("/notify", query_string={"dead_letters": "1"}, headers=AUTH)
    counted = client.get("/notify", headers=AUTH)
    delivered = post_json(client, "/notify", JOB_RESULT)
    redriven = client.post("/notify", query_string={"redrive": "all"}, headers=AUTH)
    scheduled = client.post("/notify", headers=AUTH)

    dead_letters = assert_documented("/notify", "GET", listed)["dead_letters"]
    assert [row["id"] for row in dead_letters] == [dead.notification_id]
    assert assert_documented("/notify", "GET", counted)["outbox"] == {"DEAD": 1}
    assert assert_documented("/notify", "POST", delivered)["added"] == 1
    assert assert_documented("/notify", "POST", redriven)["redriven"] == 1
    assert_documented("/notify", "POST", scheduled)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        (
            "POST",
            "/create",
            {"data": b"{}", "content_type": "application/json"},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/create",
            {"data": b"name=x", "content_type": "text/plain"},
            400,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/create",
            {"data": b"{" * 70000, "content_type": "application/json"},
            413,
            "payload_too_large",
        ),
        ("GET", "/create", {}, 400, "invalid_request"),
        ("GET", "/create", {"query_string": {"job_id": "f" * 32}}, 404, "not_found"),
        (
            "GET",
            "/notify",
            {"query_string": {"dead_letters": "", "limit": "many"}},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/notify",
            {"data": b'{"status": "SUCCESS"}', "content_type": "application/json"},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/check",
            {"data": b"x" * 70000, "content_type": "application/json"},
            413,
            "payload_too_large",
        ),
    ],
)
@pytest.mark.slow
def test_a_refused_request_matches_the_document(app, scripted, method, path, kwargs, status, code):
    response = Client(app).open(path, method=method, headers=AUTH, **kwargs)

    assert response.status_code == status
    assert assert_documented(path, method, response)["error"]["code"] == code


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/create", "/check", "/notify"])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_call_without_the_token_is_a_documented_401(app, scripted, path, method):
    response = Client(app).open(path, method=method)

    assert response.status_code == 401
    assert assert_documented(path, method, response)["error"]["code"] == "unauthorized"


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/create", "/check", "/notify"])
def test_another_method_is_a_405_documented_on_each_operation(app, scripted, path):
    response = Client(app).put(path, headers=AUTH)

    assert response.status_code == 405
    for method in ("GET", "POST"):
        assert assert_documented(path, method, response)["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (
            ImsRejectedError(
                "IMS refused",
                http_status=400,
                upstream={"status": 400, "code": "IMG.0005", "message": "no"},
            ),
            400,
            "ims_rejected",
        ),
        (
            ImsRejectedError(
                "IMS refused",
                http_status=404,
                upstream={"status": 404, "code": "IMG.0020", "message": "no"},
            ),
            404,
            "ims_rejected",
        ),
        (ConfigurationError("WHOLEIMAGE_PROJECT_ID is not set"), 500, "misconfigured"),
        (
            UpstreamAuthError(
                "refused", upstream={"status": 401, "code": "APIGW.0301", "message": "x"}
            ),
            502,
            "upstream_auth_failed",
        ),
        (
            UpstreamError(
                "IMS answered 418 unexpectedly",
                upstream={"status": 418, "code": None, "message": None},
            ),
            502,
            "upstream_error",
        ),
        (
            UpstreamUnavailableError(
                "throttled", retry_after=7, upstream={"error": "ConnectError"}
            ),
            503,
            "upstream_unavailable",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
@pytest.mark.slow
def test_an_ims_failure_matches_the_document(app, scripted, fake_ims, failure, status, code):
    fake_ims.script.append(failure)

    response = post_json(Client(app), "/create", ECS_BODY)

    assert response.status_code == status
    assert assert_documented("/create", "POST", response)["error"]["code"] == code


def test_an_uncertain_submission_is_a_documented_202(app, scripted, fake_ims):
    fake_ims.script.append(UpstreamTimeoutError("no answer", request_sent=True))

    response = post_json(Client(app), "/create", ECS_BODY)

    assert response.status_code == 202
    assert assert_documented("/create", "POST", response)["status"] == "SUBMIT_UNCERTAIN"


def test_a_backup_used_twice_is_a_documented_409(app, scripted):
    body = {
        "name": "from-cbr",
        "backup_id": "9b27efab-4a17-4c06-bfa2-3e0cf021d3c3",
        "whole_image_type": "CBR",
    }
    client = Client(app)

    post_json(client, "/create", body)
    again = post_json(client, "/create", {**body, "name": "again"})

    assert again.status_code == 409
    assert assert_documented("/create", "POST", again)["error"]["code"] == "backup_in_use"


def test_any_other_path_of_the_served_functions_is_a_404_error_body(app, scripted):
    response = Client(app).get("/elsewhere")

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    problems = list(
        Draft202012Validator(SCHEMAS["error.schema.json"], registry=REGISTRY).iter_errors(
            response.get_json()
        )
    )
    assert problems == []
