"""Managing lifecycle policies: ``/policies`` of the ``create`` function and ``wholeimage policy``,
over both stores (docs/policies.md §2).

HTTP goes through ``wholeimage.cli.serve.build_app`` (the functions-framework apps, ``create`` at
``/create``, as openapi/openapi.json names the paths), and every answer is checked against what
the document says for its status; the CLI runs in process with the environment a real process
would have. A store opened beside them seeds what only the engine writes (runs, deletions, a
pause after failures, a next slot in the past or far ahead).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from tests.fakes import make_settings
from tests.functional.test_openapi import assert_documented, close
from wholeimage import bootstrap
from wholeimage.bootstrap import Dependencies, open_store, set_dependencies
from wholeimage.cli.main import main
from wholeimage.cli.output import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from wholeimage.cli.serve import build_app
from wholeimage.policies import Policy, policy_from_document
from wholeimage.settings import get_settings
from wholeimage.store.policy_records import (
    DELETION_PENDING,
    ITEM_CREATING,
    ITEM_DONE,
    FailureCount,
    ImageDeletion,
    PolicyItem,
    PolicyRun,
)
from wholeimage.store.policy_store import PolicyStoreMixin
from wholeimage.validation import validator_for

ROOT = Path(__file__).resolve().parents[2]
API_TOKEN = "policy-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
INSTANCE_ID = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"
OTHER_INSTANCE_ID = "5e2b7f9c-0d4a-4b8e-9f1a-2c3d4e5f6a7b"
DOCUMENT: dict[str, Any] = {
    "name": "nightly-web",
    "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Berlin"},
    "sources": [{"instance_id": INSTANCE_ID, "label": "web01"}],
    "retention": {"keep_last": 3},
}
ITEM = "/create/policies/{name}"
# A document wrong in four places at once (and the paths its answer must name).
INVALID: dict[str, Any] = {
    "name": "nightly-web",
    "schedule": {"cron": "0 0 2 * * *", "timezone": "Mars/Olympus"},
    "sources": [{"instance_id": INSTANCE_ID}],
    "retention": {},
    "image": {"name_template": "{source}-{week}"},
}
INVALID_PATHS = {
    "$.schedule.cron",
    "$.schedule.timezone",
    "$.retention",
    "$.image.name_template",
}
FAR_AHEAD = datetime(2031, 1, 1, 1, 0, tzinfo=UTC)

# Every test runs once per store, SQLite and PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_kind")


def problems(schema_name: str, instance: Any) -> list[str]:
    """Why ``instance`` does not match ``schemas/<schema_name>``; empty when it does."""
    return [
        f"{error.json_path}: {error.message}"
        for error in validator_for(schema_name).iter_errors(instance)
    ]


def first_slot_after(document: dict[str, Any], moment: datetime) -> datetime:
    return policy_from_document(document, cloud="huaweicloud").next_slot_after(moment)


def at(text: str) -> datetime:
    """A time of an answer (a null one fails the test here)."""
    return datetime.fromisoformat(text)


@pytest.fixture
def store(state_url: str) -> Iterator[PolicyStoreMixin[Any]]:
    """The state, opened beside the functions and commands, to seed and to read."""
    opened = open_store(state_url)
    assert isinstance(opened, PolicyStoreMixin)
    yield opened
    opened.close()


def seed(
    store: PolicyStoreMixin[Any],
    document: dict[str, Any],
    *,
    next_slot_at: datetime,
    enabled: bool = True,
) -> None:
    """A stored policy whose next slot the test chose (apply would pick the first after now)."""
    policy = Policy.model_validate({**document, "enabled": enabled})
    store.put_policy(
        policy.name,
        policy.document(),
        enabled=enabled,
        next_slot_at=next_slot_at,
        reschedule=True,
        now=datetime.now(UTC) - timedelta(days=1),
    )


# --- HTTP ----------------------------------------------------------------------------------------


@pytest.fixture
def configure(state_url: str) -> Iterator[Callable[..., Client]]:
    """A client of the served functions whose settings the test picks (the state URL is the
    parametrized store's, the API token set)."""
    built: list[Dependencies] = []

    def client(**settings: Any) -> Client:
        deps = Dependencies(
            settings=make_settings(api_token=API_TOKEN, state_url=state_url, **settings),
            store=open_store(state_url),
        )
        built.append(deps)
        set_dependencies(deps)
        return Client(build_app())

    yield client
    set_dependencies(None)
    for deps in built:
        close(deps)


@pytest.fixture
def http(configure: Callable[..., Client]) -> Client:
    """The served functions with one channel configured, ``ops``."""
    return configure(channels=[{"name": "ops", "format": "slack", "url": "file:/dev/null"}])


def put(client: Client, name: str, document: Any, **headers: str) -> TestResponse:
    return client.put(
        f"/create/policies/{name}",
        data=json.dumps(document),
        headers={**AUTH, "Content-Type": "application/json", **headers},
    )


def documented(response: TestResponse, method: str, path: str = ITEM) -> dict[str, Any]:
    body = assert_documented(path, method, response)
    assert isinstance(body, dict)
    return body


def test_put_creates_a_policy_whose_first_slot_is_the_first_after_it_was_applied(http, store):
    before = datetime.now(UTC)
    created = put(http, "nightly-web", DOCUMENT)
    after = datetime.now(UTC)
    listed = http.get("/create/policies", headers=AUTH)
    shown = http.get("/create/policies/nightly-web", headers=AUTH)

    assert created.status_code == 201
    view = documented(created, "PUT")
    assert problems("policy-view.schema.json", view) == []
    assert view["name"] == "nightly-web"
    assert view["document"] == Policy.model_validate(DOCUMENT).document()
    assert (view["enabled"], view["paused"], view["failures"]) == (True, False, 0)
    assert view["paused_reason"] is None
    assert view["last_slot_at"] is None
    slot = at(view["next_slot_at"])
    assert slot is not None
    assert first_slot_after(DOCUMENT, before) <= slot <= first_slot_after(DOCUMENT, after)
    assert slot > after  # slots before the policy existed never run
    assert view["next_slot_at"].endswith("+00:00")
    assert documented(listed, "GET", "/create/policies") == {"policies": [view]}
    assert problems("policy-list.schema.json", listed.get_json()) == []
    assert documented(shown, "GET") == {**view, "runs": [], "deletions": []}
    record = store.get_policy("nightly-web")
    assert record is not None
    assert record.next_slot_at == slot


def test_put_again_replaces_the_document_and_keeps_the_next_slot_when_the_schedule_did_not_change(
    http, store
):
    seed(store, DOCUMENT, next_slot_at=FAR_AHEAD)
    created_at = store.get_policy("nightly-web").created_at

    replaced = put(http, "nightly-web", {**DOCUMENT, "description": "the web tier"})

    assert replaced.status_code == 200
    view = documented(replaced, "PUT")
    assert view["document"]["description"] == "the web tier"
    assert at(view["next_slot_at"]) == FAR_AHEAD
    assert at(view["created_at"]) == created_at
    assert at(view["updated_at"]) > created_at


@pytest.mark.parametrize(
    "schedule",
    [
        {"cron": "30 3 * * *", "timezone": "Europe/Berlin"},
        {"cron": "0 2 * * *", "timezone": "Asia/Shanghai"},
        {"cron": "0 2 * * *"},  # UTC, the default: another time zone than the stored one
    ],
)
def test_a_changed_schedule_moves_the_next_slot_to_the_first_after_now(http, store, schedule):
    seed(store, DOCUMENT, next_slot_at=FAR_AHEAD)
    changed = {**DOCUMENT, "schedule": schedule}

    before = datetime.now(UTC)
    replaced = put(http, "nightly-web", changed)

    assert replaced.status_code == 200
    slot = at(documented(replaced, "PUT")["next_slot_at"])
    assert slot is not None
    assert first_slot_after(changed, before) <= slot <= first_slot_after(changed, datetime.now(UTC))


def test_a_policy_enabled_again_is_rescheduled_past_the_slots_it_missed(http, store):
    missed = datetime.now(UTC) - timedelta(days=3)
    seed(store, DOCUMENT, next_slot_at=missed, enabled=False)

    before = datetime.now(UTC)
    enabled = put(http, "nightly-web", {**DOCUMENT, "enabled": True})

    view = documented(enabled, "PUT")
    assert view["enabled"] is True
    assert at(view["next_slot_at"]) == first_slot_after(DOCUMENT, before)


@pytest.mark.parametrize("enabled", [False, True], ids=["disabled", "still-enabled"])
def test_a_policy_disabled_or_left_enabled_keeps_its_next_slot(http, store, enabled):
    seed(store, DOCUMENT, next_slot_at=FAR_AHEAD)

    replaced = put(http, "nightly-web", {**DOCUMENT, "enabled": enabled})

    view = documented(replaced, "PUT")
    assert view["enabled"] is enabled
    assert at(view["next_slot_at"]) == FAR_AHEAD


def test_an_invalid_policy_is_a_400_naming_every_failing_field_and_stores_nothing(http, store):
    refused = put(http, "nightly-web", INVALID)

    assert refused.status_code == 400
    error = documented(refused, "PUT")["error"]
    assert error["code"] == "invalid_request"
    assert {detail["path"] for detail in error["details"]} == INVALID_PATHS
    assert all(detail["message"] for detail in error["details"])
    assert store.get_policy("nightly-web") is None
    assert http.get("/create/policies", headers=AUTH).get_json() == {"policies": []}


def test_an_invalid_replacement_leaves_the_stored_policy_as_it_was(http, store):
    seed(store, DOCUMENT, next_slot_at=FAR_AHEAD)
    stored = store.get_policy("nightly-web")

    refused = put(http, "nightly-web", INVALID)

    assert refused.status_code == 400
    assert store.get_policy("nightly-web") == stored


def test_the_name_in_the_path_must_be_the_documents(http, store):
    refused = put(http, "other", DOCUMENT)
    both = put(http, "other", {**DOCUMENT, "retention": {}})

    assert refused.status_code == 400
    assert documented(refused, "PUT")["error"]["details"] == [
        {"path": "$.name", "message": "must be the name in the path, 'other'"}
    ]
    # With other problems, one answer names them all.
    assert {d["path"] for d in documented(both, "PUT")["error"]["details"]} == {
        "$.name",
        "$.retention",
    }
    assert store.list_policies() == []


def test_a_channel_that_is_not_configured_is_refused_at_its_index(http, store):
    refused = put(http, "nightly-web", {**DOCUMENT, "channels": ["ops", "pager"]})
    accepted = put(http, "nightly-web", {**DOCUMENT, "channels": ["ops"]})

    assert refused.status_code == 400
    details = documented(refused, "PUT")["error"]["details"]
    assert [d["path"] for d in details] == ["$.channels[1]"]
    assert "configured: ops" in details[0]["message"]
    assert accepted.status_code == 201


def test_without_any_channel_configured_channel_names_cannot_be_checked_and_are_kept(
    configure, store
):
    # As on Huawei Cloud, whose create function has no channel settings (infra/huaweicloud).
    client = configure()

    accepted = put(client, "nightly-web", {**DOCUMENT, "channels": ["pager"]})

    assert accepted.status_code == 201
    assert documented(accepted, "PUT")["document"]["channels"] == ["pager"]


def test_a_template_valid_on_huawei_cloud_only_is_refused_where_the_cloud_is_otc(configure, store):
    # Huawei Cloud's image names may hold Chinese characters, OTC's not (create schema).
    document = {**DOCUMENT, "image": {"name_template": "{source}-\u6574\u673a-{slot}"}}

    on_otc = put(configure(cloud="otc"), "nightly-web", document)
    on_huawei = put(configure(cloud="huaweicloud"), "nightly-web", document)

    assert on_otc.status_code == 400
    assert [d["path"] for d in documented(on_otc, "PUT")["error"]["details"]] == [
        "$.image.name_template"
    ]
    assert on_huawei.status_code == 201


def test_pause_then_resume_and_slots_missed_while_paused_do_not_run(http, store):
    due = datetime.now(UTC) - timedelta(hours=5)
    seed(store, DOCUMENT, next_slot_at=due)

    paused = http.post("/create/policies/nightly-web/pause", headers=AUTH)
    shown = http.get("/create/policies/nightly-web", headers=AUTH)
    before = datetime.now(UTC)
    resumed = http.post("/create/policies/nightly-web/resume", headers=AUTH)

    view = documented(paused, "POST", ITEM + "/pause")
    assert (view["paused"], view["paused_reason"]) == (True, "paused by an operator")
    assert documented(shown, "GET")["paused"] is True
    after = documented(resumed, "POST", ITEM + "/resume")
    assert (after["paused"], after["paused_reason"], after["failures"]) == (False, None, 0)
    assert at(after["next_slot_at"]) == first_slot_after(DOCUMENT, before)
    record = store.get_policy("nightly-web")
    assert record is not None
    assert not record.paused
    assert record.next_slot_at > before


def test_pausing_a_policy_that_paused_itself_keeps_its_reason(http, store):
    seed(store, DOCUMENT, next_slot_at=FAR_AHEAD)
    reason = "3 failed creates in a row"
    store.pause_policy("nightly-web", reason=reason, now=datetime.now(UTC))
    stored = store.get_policy("nightly-web")

    paused = http.post("/create/policies/nightly-web/pause", headers=AUTH)

    assert documented(paused, "POST", ITEM + "/pause")["paused_reason"] == reason
    assert store.get_policy("nightly-web") == stored


def test_resuming_a_policy_that_is_not_paused_changes_nothing(http, store):
    due = datetime.now(UTC) - timedelta(minutes=1)
    seed(store, DOCUMENT, next_slot_at=due)
    stored = store.get_policy("nightly-web")

    resumed = http.post("/create/policies/nightly-web/resume", headers=AUTH)

    assert resumed.status_code == 200
    assert store.get_policy("nightly-web") == stored  # its due slot still runs


def test_delete_forgets_the_policy_and_a_second_delete_is_a_404(http, store):
    put(http, "nightly-web", DOCUMENT)

    deleted = http.delete("/create/policies/nightly-web", headers=AUTH)
    again = http.delete("/create/policies/nightly-web", headers=AUTH)
    shown = http.get("/create/policies/nightly-web", headers=AUTH)

    assert deleted.status_code == 204
    assert deleted.get_data() == b""
    assert "Content-Type" not in deleted.headers
    assert documented(again, "DELETE")["error"]["code"] == "not_found"
    assert documented(shown, "GET")["error"]["code"] == "not_found"
    assert store.get_policy("nightly-web") is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ITEM),
        ("DELETE", ITEM),
        ("POST", ITEM + "/pause"),
        ("POST", ITEM + "/resume"),
    ],
)
def test_a_policy_that_does_not_exist_is_a_404(http, method, path):
    response = http.open(path.format(name="absent"), method=method, headers=AUTH)

    assert response.status_code == 404
    assert documented(response, method, path)["error"]["code"] == "not_found"


def test_show_includes_the_latest_runs_and_deletions(http, store):
    seed(store, DOCUMENT, next_slot_at=FAR_AHEAD)
    now = datetime.now(UTC).replace(microsecond=0)
    slot = now - timedelta(days=1)
    run = PolicyRun(
        run_id="policy-nightly-web-1",
        policy="nightly-web",
        slot_at=slot,
        skipped=2,
        skipped_first=slot - timedelta(days=2),
        state="CREATING",
        paused_reason=None,
        created_at=now,
    )
    assert store.open_run(run)
    item = PolicyItem(
        item_id="item-1",
        run_id=run.run_id,
        policy="nightly-web",
        source_id=INSTANCE_ID,
        request_id="0" * 32,
        state=ITEM_CREATING,
        image_name="web01-20261201-0200",
        created_at=now,
        updated_at=now,
    )
    assert store.add_item(item, now=now)[0]
    deletion = ImageDeletion(
        image_id="11111111-2222-3333-4444-555555555555",
        policy="nightly-web",
        source_id=INSTANCE_ID,
        run_id=run.run_id,
        image_name="web01-20261101-0200",
        delete_backup=True,
        reason="keep_last 3",
        state=DELETION_PENDING,
        next_attempt_at=now,
        created_at=now,
    )
    store.close_item(
        item,
        state=ITEM_DONE,
        deletions=[deletion],
        failure=FailureCount(failed=False, pause_after=3, pause_reason=""),
        now=now,
    )

    shown = documented(http.get("/create/policies/nightly-web", headers=AUTH), "GET")

    assert problems("policy-view.schema.json", shown) == []
    assert [(r["run_id"], r["skipped"], at(r["slot_at"])) for r in shown["runs"]] == [
        (run.run_id, 2, slot)
    ]
    assert [(d["image_id"], d["state"], d["reason"]) for d in shown["deletions"]] == [
        (deletion.image_id, "PENDING", "keep_last 3")
    ]
    listed = http.get("/create/policies", headers=AUTH).get_json()["policies"][0]
    assert "runs" not in listed
    assert "deletions" not in listed


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/create/policies"),
        ("GET", ITEM),
        ("PUT", ITEM),
        ("DELETE", ITEM),
        ("POST", ITEM + "/pause"),
        ("POST", ITEM + "/resume"),
        ("GET", ITEM + "/elsewhere"),  # not a route: still 401 first, telling nothing
    ],
)
@pytest.mark.parametrize(
    "credentials",
    [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"X-Api-Token": "wrong"}],
    ids=["none", "wrong-bearer", "wrong-api-token"],
)
def test_a_call_without_the_token_is_refused_and_changes_nothing(
    http, store, method, path, credentials
):
    seed(store, DOCUMENT, next_slot_at=FAR_AHEAD)
    stored = store.get_policy("nightly-web")

    response = http.open(
        path.format(name="nightly-web"),
        method=method,
        data=json.dumps({**DOCUMENT, "description": "changed"}),
        headers={"Content-Type": "application/json", **credentials},
    )

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if not path.endswith("elsewhere"):
        assert documented(response, method, path)["error"]["code"] == "unauthorized"
    assert store.get_policy("nightly-web") == stored


def test_the_x_api_token_header_is_accepted_as_for_create(http):
    response = http.get("/create/policies", headers={"X-Api-Token": API_TOKEN})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/create/policies", "GET"),
        ("PATCH", "/create/policies/nightly-web", "GET, PUT, DELETE"),
        ("GET", "/create/policies/nightly-web/pause", "POST"),
    ],
)
def test_another_method_is_a_405_saying_which_are_allowed(http, method, path, allowed):
    response = http.open(path, method=method, headers=AUTH)

    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert response.get_json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("name", ["Nightly", "-web", "a" * 33, "web_01"])
def test_a_path_that_is_no_policy_name_is_a_400_at_the_name(http, name):
    response = http.get(f"/create/policies/{name}", headers=AUTH)

    assert response.status_code == 400
    assert documented(response, "GET")["error"]["details"][0]["path"] == "path:name"


def test_an_unknown_path_under_policies_is_a_404(http):
    response = http.get("/create/policies/nightly-web/run", headers=AUTH)

    assert response.status_code == 404
    assert problems("error.schema.json", response.get_json()) == []


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (json.dumps(DOCUMENT).encode(), "text/plain", 400, "unsupported_media_type"),
        (b"{", "application/json", 400, "invalid_request"),
        (b"", "application/json", 400, "invalid_request"),
        (b"[" * 70000, "application/json", 413, "payload_too_large"),
    ],
    ids=["not-json-type", "not-json", "empty", "too-large"],
)
def test_a_body_that_is_no_json_document_is_refused_as_creates_is(
    http, store, data, content_type, status, code
):
    response = http.put(
        "/create/policies/nightly-web",
        data=data,
        headers={**AUTH, "Content-Type": content_type},
    )

    assert response.status_code == status
    assert documented(response, "PUT")["error"]["code"] == code
    assert store.get_policy("nightly-web") is None


def test_the_create_routes_still_submit_and_read_jobs(http):
    # /policies is routed first; every other path of create is what it was.
    response = http.get("/create", headers=AUTH)

    assert response.status_code == 400
    assert response.get_json()["error"]["details"][0]["path"] == "query:job_id"


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli(state_url: str) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Run ``wholeimage`` in process as a new process would: settings and dependencies from the
    environment (the parametrized store, one channel ``ops``), closed afterwards."""
    os.environ["WHOLEIMAGE_STATE_URL"] = state_url
    os.environ["WHOLEIMAGE_CHANNELS"] = json.dumps(
        [{"name": "ops", "format": "slack", "url": "file:/dev/null"}]
    )
    logger = logging.getLogger("wholeimage")
    level = logger.level
    streams = {h: h.stream for h in logger.handlers if type(h) is logging.StreamHandler}
    get_settings.cache_clear()
    set_dependencies(None)
    captured: list[pytest.CaptureFixture[str]] = []

    def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        captured.append(capsys)
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    if bootstrap._dependencies is not None:
        close(bootstrap._dependencies)
    set_dependencies(None)
    get_settings.cache_clear()
    logger.setLevel(level)
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.stream = streams.get(handler, sys.stdout)


@pytest.fixture
def policy_file(tmp_path: Path) -> Callable[[Any], str]:
    def write(document: Any) -> str:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(document), "utf-8")
        return str(path)

    return write


def test_cli_apply_list_show_pause_resume_delete(cli, capsys, policy_file, store):
    path = policy_file(DOCUMENT)

    code, out, err = cli(capsys, "policy", "apply", path, "--json")
    assert (code, err) == (EXIT_OK, "")
    applied = json.loads(out)
    assert problems("policy-view.schema.json", applied) == []
    assert at(applied["next_slot_at"]) > datetime.now(UTC)

    code, out, _ = cli(capsys, "policy", "apply", path)
    assert code == EXIT_OK
    assert "Replaced policy 'nightly-web'" in out
    assert "0 2 * * * (Europe/Berlin)" in out

    code, out, _ = cli(capsys, "policy", "list", "--json")
    listed = json.loads(out)
    assert problems("policy-list.schema.json", listed) == []
    assert [p["name"] for p in listed["policies"]] == ["nightly-web"]
    assert listed["policies"][0]["next_slot_at"] == applied["next_slot_at"]  # kept

    code, out, _ = cli(capsys, "policy", "list")
    header, row = out.splitlines()
    assert header.split() == [
        "NAME", "CRON", "TIME", "ZONE", "SOURCES", "ENABLED", "PAUSED", "FAILURES",
        "NEXT", "SLOT", "LAST", "SLOT",
    ]  # fmt: skip
    assert row.startswith("nightly-web  0 2 * * *  Europe/Berlin")

    code, out, _ = cli(capsys, "policy", "pause", "nightly-web", "--json")
    assert code == EXIT_OK
    assert json.loads(out)["paused_reason"] == "paused by an operator"
    assert store.get_policy("nightly-web").paused

    code, out, _ = cli(capsys, "policy", "show", "nightly-web", "--json")
    shown = json.loads(out)
    assert problems("policy-view.schema.json", shown) == []
    assert (shown["paused"], shown["runs"], shown["deletions"]) == (True, [], [])

    code, out, _ = cli(capsys, "policy", "show", "nightly-web")
    assert "paused by an operator" in out
    assert "(no run yet)" in out

    code, out, _ = cli(capsys, "policy", "resume", "nightly-web", "--json")
    assert code == EXIT_OK
    assert json.loads(out)["paused"] is False
    assert not store.get_policy("nightly-web").paused

    code, out, _ = cli(capsys, "policy", "delete", "nightly-web", "--json")
    assert (code, json.loads(out)) == (EXIT_OK, {"name": "nightly-web", "deleted": True})
    assert store.get_policy("nightly-web") is None


def test_cli_apply_reschedules_only_a_changed_schedule(cli, capsys, policy_file, store):
    seed(store, DOCUMENT, next_slot_at=FAR_AHEAD)

    cli(capsys, "policy", "apply", policy_file({**DOCUMENT, "description": "same slots"}))
    kept = store.get_policy("nightly-web").next_slot_at
    cli(capsys, "policy", "apply", policy_file({**DOCUMENT, "schedule": {"cron": "0 4 * * 0"}}))
    moved = store.get_policy("nightly-web").next_slot_at

    assert kept == FAR_AHEAD
    assert moved is not None
    assert moved < FAR_AHEAD
    assert moved.weekday() == 6
    assert (moved.hour, moved.minute) == (4, 0)


def test_cli_an_invalid_policy_lists_every_failing_field_as_submit_does_and_stores_nothing(
    cli, capsys, policy_file, store
):
    code, out, err = cli(capsys, "policy", "apply", policy_file(INVALID))

    assert code == EXIT_USAGE
    assert out == ""
    assert set(re.findall(r"^  (\$\S*): ", err, re.MULTILINE)) == INVALID_PATHS
    assert "next: fix what is listed above" in err
    assert store.get_policy("nightly-web") is None


def test_cli_an_invalid_policy_with_json_prints_the_error_body_put_answers(
    cli, capsys, policy_file, http
):
    code, out, err = cli(capsys, "policy", "apply", policy_file(INVALID), "--json")
    answered = put(http, "nightly-web", INVALID)

    assert code == EXIT_USAGE
    assert out == ""
    error = json.loads(err)
    assert problems("error.schema.json", error) == []
    assert error == answered.get_json()


def test_cli_a_channel_that_is_not_configured_is_refused(cli, capsys, policy_file):
    code, _, err = cli(capsys, "policy", "apply", policy_file({**DOCUMENT, "channels": ["x"]}))

    assert code == EXIT_USAGE
    assert "$.channels[0]: is not a configured channel; configured: ops" in err


@pytest.mark.parametrize("action", ["show", "pause", "resume", "delete"])
def test_cli_a_policy_that_does_not_exist_is_exit_4(cli, capsys, action):
    code, out, err = cli(capsys, "policy", action, "absent", "--json")
    text_code, _, text = cli(capsys, "policy", action, "absent")

    assert (code, text_code) == (EXIT_NOT_FOUND, EXIT_NOT_FOUND)
    assert out == ""
    assert json.loads(err)["error"]["code"] == "not_found"
    assert "wholeimage policy list" in text


def test_cli_an_empty_list_says_how_to_add_one(cli, capsys):
    code, out, _ = cli(capsys, "policy", "list")

    assert code == EXIT_OK
    assert "(no policies; add one: wholeimage policy apply" in out


def test_cli_a_file_that_is_not_json_is_a_usage_error_naming_it(cli, capsys, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("name: nightly-web\n", "utf-8")

    code, _, err = cli(capsys, "policy", "apply", str(path))
    missing_code, _, missing = cli(capsys, "policy", "apply", str(tmp_path / "absent.json"))

    assert code == EXIT_USAGE
    assert "the policy in" in err
    assert "not valid JSON" in err
    assert missing_code == EXIT_USAGE
    assert "FILE" in missing


def test_cli_policy_without_an_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["policy"])

    assert exited.value.code == 2
    assert "ACTION" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_cli_apply_reads_the_document_from_stdin(state_url, store):
    environment = {
        **os.environ,
        "WHOLEIMAGE_STATE_URL": state_url,
        "PYTHONPATH": str(ROOT / "functions"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "wholeimage", "policy", "apply", "-", "--json"],
        input=json.dumps(DOCUMENT),
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )

    assert done.returncode == EXIT_OK, done.stderr
    assert json.loads(done.stdout)["name"] == "nightly-web"
    assert store.get_policy("nightly-web") is not None


def test_the_documents_example_policy_is_applied_as_it_stands(http):
    openapi = json.loads((ROOT / "openapi" / "openapi.json").read_text("utf-8"))
    example = openapi["paths"][ITEM]["put"]["requestBody"]["content"]["application/json"]["example"]

    response = put(http, example["name"], example)

    assert response.status_code == 201
    assert documented(response, "PUT")["document"]["retention"] == example["retention"]


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_the_create_function_loads_croniter_only_when_a_schedule_is_evaluated():
    # /policies is served by create, whose cold start must not pay for the cron parser.
    program = (
        "import sys\n"
        "import wholeimage.web.create\n"
        "print('croniter' in sys.modules)\n"
        "from wholeimage.policies import policy_from_document\n"
        f"policy_from_document({DOCUMENT!r}, cloud='huaweicloud')\n"
        "print('croniter' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PYTHONPATH": str(ROOT / "functions")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
