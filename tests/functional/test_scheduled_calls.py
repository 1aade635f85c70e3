"""Every scheduled shape reaches ``check`` and ``notify``, OIDC ID tokens let the platforms' callers
in, and FunctionGraph's event-function contract holds (issue 10, items 2 and 3).

Through functions-framework's own apps (``create_app(target, "functions/main.py")``) over a
SQLite store, with IMS's job queries, the webhook receiver and Google's key set each behind an
``httpx.MockTransport``: the shapes and their sources are in docs/platforms.md §3 and §4, the
token rules in docs/platforms.md §2.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from functions_framework import create_app

from tests.fakes import FakeImsClient, make_dependencies
from tests.functional.test_notify import Service, job_result
from tests.functional.test_notify_function import HOOK, seed_pending
from tests.local_oidc import AUDIENCE, PUSHER, SCHEDULER, STRANGER, LocalGoogle
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.create import submit_create
from wholeimage.httputil import RateLimiter
from wholeimage.ims.poller import JobPoller
from wholeimage.logs import JsonFormatter, configure_logging
from wholeimage.models import CreateImageRequest, Job, JobStatus

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
API_TOKEN = "scheduled-calls-api-token-0123456789"
SCHEDULER_HEADERS = {
    "X-CloudScheduler": "true",
    "X-CloudScheduler-JobName": "projects/p/locations/europe-west3/jobs/wholeimage-check",
    "X-CloudScheduler-ScheduleTime": "2026-12-02T09:27:00.000Z",
    "User-Agent": "Google-Cloud-Scheduler",
}
# A FunctionGraph timer trigger's event, as FunctionGraph documents it (docs/platforms.md §4.2).
TIMER_EVENT = {
    "version": "v1.0",
    "time": "2026-12-02T09:27:00+08:00",
    "trigger_type": "TIMER",
    "trigger_name": "wholeimage-check",
    "user_event": "every minute",
}
FUNCTIONGRAPH_HEADERS = {
    "Content-Type": "application/json",
    "X-Cff-Request-Id": "4c1b7f1e-8d7c-4f0e-9f4b-0c7c0f7f4e21",
    "X-CFF-Func-Name": "wholeimage-check",
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def push_envelope(data: bytes | None) -> dict[str, Any]:
    """A Pub/Sub push body (docs/platforms.md §3.3)."""
    message: dict[str, Any] = {
        "attributes": {"origin": "scheduler"},
        "messageId": "13647293473712112",
        "publishTime": "2026-12-02T09:27:00.123Z",
    }
    if data is not None:
        message["data"] = b64(data)
    return {"message": message, "subscription": "projects/p/subscriptions/wholeimage-tick"}


def scheduler_event() -> CloudEvent:
    return CloudEvent(
        {
            "type": "google.cloud.scheduler.job.v1.executed",
            "source": "//cloudscheduler.googleapis.com/projects/p/locations/l/jobs/wholeimage",
        },
        {"custom_data": b64(b"tick")},
    )


def pubsub_event(data: bytes | None) -> CloudEvent:
    return CloudEvent(
        {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": "//pubsub.googleapis.com/projects/p/topics/wholeimage-tick",
        },
        push_envelope(data),
    )


@dataclass(frozen=True)
class Call:
    """One request: method, body and headers (the path is ``/`` unless said)."""

    method: str = "POST"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/"


def json_call(document: Any, **headers: str) -> Call:
    return Call(
        body=json.dumps(document).encode(), headers={"Content-Type": "application/json"} | headers
    )


def event_call(
    event: CloudEvent, mode: Callable[[CloudEvent], tuple[dict[str, str], bytes]]
) -> Call:
    headers, body = mode(event)
    return Call(body=body, headers=dict(headers))


# Every shape a schedule arrives in; each asks for a run, none carries a job result.
SCHEDULED: dict[str, Call] = {
    "empty-body": Call(),
    "empty-json-object": json_call({}),
    "json-null": json_call(None),
    "curl-d-empty": Call(headers={"Content-Type": "application/x-www-form-urlencoded"}),
    "cloud-scheduler-no-body": Call(headers=SCHEDULER_HEADERS),
    "cloud-scheduler-empty-object": json_call({}, **SCHEDULER_HEADERS),
    "cloud-scheduler-octet-stream": Call(
        body=b"tick", headers={**SCHEDULER_HEADERS, "Content-Type": "application/octet-stream"}
    ),
    "cloud-scheduler-json": json_call({"run": "check"}, **SCHEDULER_HEADERS),
    "pubsub-push-text": json_call(push_envelope(b"tick")),
    "pubsub-push-json": json_call(push_envelope(b'{"run": "check"}')),
    "pubsub-push-no-data": json_call(push_envelope(None)),
    "pubsub-push-not-base64": json_call({**push_envelope(None), "message": {"data": "%%%"}}),
    "cloudevent-scheduler-binary": event_call(scheduler_event(), to_binary),
    "cloudevent-scheduler-structured": event_call(scheduler_event(), to_structured),
    "cloudevent-pubsub-binary": event_call(pubsub_event(b"tick"), to_binary),
    "cloudevent-pubsub-structured": event_call(pubsub_event(b"tick"), to_structured),
    "functiongraph-timer": json_call(TIMER_EVENT),
}


# --- the fixtures ---------------------------------------------------------------------------------


class Ims:
    """IMS's job query behind a mock transport: every job has succeeded."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[-1]
        self.queries.append(job_id)
        return httpx.Response(
            200,
            json={
                "status": "SUCCESS",
                "job_id": job_id,
                "entities": {"image_id": f"img-{job_id[-6:]}", "process_percent": 1.0},
            },
        )

    def poller(self, project_id: str) -> JobPoller:
        return JobPoller(
            project_id=project_id,
            client_factory=lambda: httpx.AsyncClient(
                transport=httpx.MockTransport(self), base_url="https://ims.test"
            ),
            limiter=RateLimiter(0),
        )


@dataclass
class Served:
    """The functions' dependencies, and what IMS and the webhook receiver saw."""

    deps: Dependencies
    ims: Ims
    receiver: Service
    fake_ims: FakeImsClient

    def client(self, target: str) -> FlaskClient:
        return cast(FlaskClient, create_app(target, MAIN).test_client())

    def call(self, target: str, call: Call) -> Any:
        return self.client(target).open(
            call.path, method=call.method, data=call.body, headers=call.headers
        )

    def due_job(self) -> Job:
        """One job IMS accepted a minute ago: due for its first poll."""
        return submit_create(
            CreateImageRequest(name="web01-full", instance_id=str(uuid.uuid4())),
            idempotency_key=None,
            requested_by="tests",
            trace=None,
            ims=self.fake_ims,
            store=self.deps.store,
            now=lambda: datetime.now(UTC) - timedelta(minutes=1),
            first_poll_after=timedelta(seconds=10),
        ).job

    def status_of(self, job: Job) -> JobStatus:
        found = self.deps.store.get(job.request_id)
        assert found is not None
        return found.status


@pytest.fixture
def google() -> LocalGoogle:
    return LocalGoogle()


@pytest.fixture
def served(
    tmp_path: Path, fake_ims: FakeImsClient, google: LocalGoogle
) -> Iterator[Callable[..., Served]]:
    """Make the dependencies every app of the test uses; OIDC tokens are checked against
    ``google``'s local keys whenever the settings ask for them."""
    made: list[Served] = []
    clients: list[httpx.Client] = []

    def make(**overrides: Any) -> Served:
        values: dict[str, Any] = {
            "channels": [HOOK],
            "notify_inline": False,
            "poll_min_interval": 0,
            "poll_max_interval": 0,
        }
        values.update(overrides)
        deps = make_dependencies(tmp_path, fake_ims, **values)
        ims, receiver = Ims(), Service()
        deps.poller = ims.poller(deps.settings.require_project_id())
        deps.webhooks = httpx.Client(transport=httpx.MockTransport(receiver))
        clients.append(deps.webhooks)
        if deps.settings.oidc_configured:
            deps.id_tokens = google.verifier(
                audiences=tuple(deps.settings.oidc_audiences()),
                accounts=tuple(deps.settings.oidc_allowed_accounts()),
            )
        set_dependencies(deps)
        made.append(Served(deps, ims, receiver, fake_ims))
        return made[-1]

    yield make
    set_dependencies(None)
    for each in made:
        each.deps.store.close()
    for client in clients:
        client.close()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """wholeimage's JSON log lines, as Cloud Logging would get them."""
    configure_logging("DEBUG")
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("wholeimage")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
    configure_logging("INFO")


def assert_one_tick(served: Served, answer: Any, job: Job) -> None:
    assert answer.status_code == 200, answer.get_data(as_text=True)
    summary = answer.get_json()
    assert (summary["polled"], summary["ended"]) == (1, {"SUCCESS": 1})
    assert served.ims.queries == [job.ims_job_id]
    assert served.status_of(job) is JobStatus.SUCCESS


def assert_one_delivery_run(served: Served, answer: Any) -> None:
    assert answer.status_code == 200, answer.get_data(as_text=True)
    summary = answer.get_json()
    assert "added" not in summary
    assert (summary["claimed"], summary["delivered"]) == (1, 1)
    assert [request.headers["webhook-id"] for request in served.receiver.requests] == [
        job_result(5).key
    ]


# --- every scheduled shape ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SCHEDULED | {"get": Call(method="GET")}))
def test_every_scheduled_shape_makes_check_tick_once(served, shape):
    app = served()
    job = app.due_job()

    answer = app.call("check", (SCHEDULED | {"get": Call(method="GET")})[shape])

    assert_one_tick(app, answer, job)


@pytest.mark.parametrize("shape", sorted(SCHEDULED))
def test_every_scheduled_shape_makes_notify_deliver_what_is_pending(served, shape):
    app = served()
    seed_pending(app.deps.store, 5)

    answer = app.call("notify", SCHEDULED[shape])

    assert_one_delivery_run(app, answer)
    assert app.deps.store.notification_counts() == {"DELIVERED": 1}


def test_a_get_to_notify_only_shows_the_outbox(served):
    app = served()
    seed_pending(app.deps.store, 5)

    answer = app.call("notify", Call(method="GET"))

    assert answer.get_json() == {"outbox": {"PENDING": 1}}
    assert app.receiver.requests == []


def test_check_never_refuses_a_body_it_cannot_read(served):
    app = served()
    job = app.due_job()
    broken_event = Call(body=b"{", headers={"Content-Type": "application/cloudevents+json"})

    assert_one_tick(app, app.call("check", broken_event), job)


def test_check_names_the_trigger_in_its_log_line(served, log_lines):
    app = served()

    app.call("check", json_call(push_envelope(b"tick")))
    app.call("check", Call(headers=SCHEDULER_HEADERS))

    called = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    called = [entry for entry in called if entry["message"] == "check called"]
    assert [entry["trigger"] for entry in called] == ["pubsub-push", "cloud-scheduler"]
    assert called[0]["subscription"] == "projects/p/subscriptions/wholeimage-tick"
    assert called[0]["message_id"] == "13647293473712112"
    assert called[1]["scheduler_job"].endswith("/jobs/wholeimage-check")


# --- a job result inside a scheduled shape ----------------------------------------------------------


RESULT = json.dumps(job_result(7, "FAIL").to_json()).encode()
CARRYING_A_RESULT: dict[str, Call] = {
    "pubsub-push": json_call(push_envelope(RESULT)),
    "cloudevent-pubsub-structured": event_call(pubsub_event(RESULT), to_structured),
    "cloudevent-pubsub-binary": event_call(pubsub_event(RESULT), to_binary),
    "cloud-scheduler": Call(
        body=RESULT, headers={**SCHEDULER_HEADERS, "Content-Type": "application/json"}
    ),
    "cloud-scheduler-octet-stream": Call(
        body=RESULT, headers={**SCHEDULER_HEADERS, "Content-Type": "application/octet-stream"}
    ),
}


@pytest.mark.parametrize("shape", sorted(CARRYING_A_RESULT))
def test_a_job_result_a_scheduled_shape_carries_is_delivered(served, shape):
    app = served()

    answer = app.call("notify", CARRYING_A_RESULT[shape])

    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert (answer.get_json()["added"], answer.get_json()["delivered"]) == (1, 1)
    [request] = app.receiver.requests
    assert request.headers["webhook-id"] == job_result(7, "FAIL").key


def test_data_that_almost_is_a_job_result_is_a_delivery_run_not_a_400(served, log_lines):
    # Pub/Sub would redeliver a refused push forever: the push is taken as a schedule.
    app = served()
    seed_pending(app.deps.store, 5)
    almost = {**job_result(7).to_json(), "status": "DONE"}

    answer = app.call("notify", json_call(push_envelope(json.dumps(almost).encode())))

    assert_one_delivery_run(app, answer)
    assert "no job result" in log_lines.getvalue()


@pytest.mark.parametrize(
    "body",
    [{"run": "notify"}, {**job_result(7).to_json(), "status": "DONE"}],
    ids=["not-a-result", "an-invalid-result"],
)
def test_plain_json_from_a_caller_that_is_no_scheduler_must_be_a_job_result(served, body):
    app = served()
    seed_pending(app.deps.store, 5)

    answer = app.call("notify", json_call(body))

    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_request"
    assert app.receiver.requests == []


# --- OIDC ID tokens -----------------------------------------------------------------------------------


OIDC = {"oidc_audience": AUDIENCE, "oidc_service_accounts": f"{SCHEDULER},{PUSHER}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("target", ["check", "notify"])
@pytest.mark.parametrize(
    ("shape", "account"),
    [("cloud-scheduler-empty-object", SCHEDULER), ("pubsub-push-text", PUSHER)],
    ids=["cloud-scheduler", "pubsub-push"],
)
def test_the_platforms_oidc_token_lets_a_scheduled_call_in(served, google, target, shape, account):
    app = served(**OIDC, api_token=API_TOKEN)
    job = app.due_job()
    seed_pending(app.deps.store, 5)
    call = SCHEDULED[shape]

    answer = app.call(
        target, Call(body=call.body, headers=call.headers | bearer(google.token(email=account)))
    )

    if target == "check":
        assert_one_tick(app, answer, job)
    else:
        assert_one_delivery_run(app, answer)


WRONG_TOKENS: dict[str, Callable[[LocalGoogle], str]] = {
    "wrong-audience": lambda google: google.token(aud="https://another.a.run.app"),
    "wrong-issuer": lambda google: google.token(iss="https://evil.example.com"),
    "expired": lambda google: google.token(iat=1_700_000_000, exp=1_700_003_600),
    "unknown-service-account": lambda google: google.token(email=STRANGER),
    "unverified-email": lambda google: google.token(email_verified=False),
    "signature-removed": lambda google: (
        google.token().rsplit(".", 1)[0] + ".SIGNATURE_REMOVED_BY_GOOGLE"
    ),
    "the-api-token-as-a-jwt-look-alike": lambda google: "a.b.c",
}


@pytest.mark.parametrize("target", ["check", "notify", "create"])
@pytest.mark.parametrize("wrong", sorted(WRONG_TOKENS))
def test_a_wrong_oidc_token_is_401_with_our_error_body_and_never_logged(
    served, google, log_lines, target, wrong
):
    app = served(**OIDC, api_token=API_TOKEN)
    job = app.due_job()
    seed_pending(app.deps.store, 5)
    token = WRONG_TOKENS[wrong](google)
    call = (
        json_call(push_envelope(b"tick"))
        if target != "create"
        else Call(method="GET", path="/?job_id=x")
    )

    answer = app.call(target, Call(call.method, call.body, call.headers | bearer(token), call.path))

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    error = answer.get_json()["error"]
    assert error["code"] == "unauthorized"
    assert set(answer.get_json()) == {"error"}
    assert app.ims.queries == []
    assert app.receiver.requests == []
    assert app.status_of(job) is JobStatus.SUBMITTED
    assert app.deps.store.notification_counts() == {"PENDING": 1}
    for text in (answer.get_data(as_text=True), log_lines.getvalue()):
        assert token not in text
        if len(token) > 20:  # a real token's claims are not spelt out either
            assert token.split(".")[1] not in text


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Api-Token": API_TOKEN},
        {"Authorization": f"Bearer {API_TOKEN}"},
        {"X-Api-Token": API_TOKEN, "Authorization": "Bearer eyJ.not.checked"},
    ],
    ids=["x-api-token", "bearer", "x-api-token-beside-another-bearer"],
)
def test_with_oidc_configured_the_api_token_keeps_working(served, headers):
    app = served(**OIDC, api_token=API_TOKEN)
    job = app.due_job()

    assert_one_tick(app, app.call("check", Call(headers=headers)), job)


def test_with_oidc_alone_a_call_without_a_token_is_401(served):
    app = served(**OIDC)
    job = app.due_job()

    answer = app.call("check", Call(headers=SCHEDULER_HEADERS))

    assert answer.status_code == 401
    assert app.status_of(job) is JobStatus.SUBMITTED


def test_an_oidc_token_lets_a_caller_into_create_too(served, google):
    app = served(**OIDC, api_token=API_TOKEN)
    job = app.due_job()

    answer = app.call(
        "create",
        Call(method="GET", path=f"/?job_id={job.ims_job_id}", headers=bearer(google.token())),
    )

    assert answer.status_code == 200
    assert answer.get_json()["job_id"] == job.ims_job_id


def test_google_keys_out_of_reach_are_503_with_retry_after(served, google):
    app = served(**OIDC)
    google.answers = [httpx.Response(503)]

    answer = app.call("check", Call(headers=bearer(google.token())))

    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "upstream_unavailable"
    assert int(answer.headers["Retry-After"]) > 0


def test_the_keys_are_fetched_once_for_many_calls(served, google):
    app = served(**OIDC)

    for _ in range(3):
        assert app.call("check", Call(headers=bearer(google.token()))).status_code == 200

    assert google.fetches == 1


# --- FunctionGraph's event-function contract ---------------------------------------------------------


class Untouchable:
    """Dependencies no call may use: the first use fails the request (a 500)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the function used its dependencies ({name})")


@pytest.mark.parametrize("target", ["check", "notify"])
def test_init_answers_200_at_once_and_touches_nothing(target):
    set_dependencies(cast(Dependencies, Untouchable()))
    try:
        answer = create_app(target, MAIN).test_client().post("/init", headers=FUNCTIONGRAPH_HEADERS)
    finally:
        set_dependencies(None)

    assert answer.status_code == 200
    assert answer.get_json() == {"initialized": True}


@pytest.mark.parametrize("target", ["check", "notify"])
def test_init_neither_polls_nor_claims_nor_delivers(served, target):
    app = served(api_token=API_TOKEN)  # FunctionGraph's /init carries no token: still a 200
    job = app.due_job()
    seed_pending(app.deps.store, 5)

    answer = app.call(target, Call(path="/init", headers=FUNCTIONGRAPH_HEADERS))

    assert answer.status_code == 200
    assert app.ims.queries == []
    assert app.receiver.requests == []
    assert app.status_of(job) is JobStatus.SUBMITTED
    assert app.deps.store.notification_counts() == {"PENDING": 1}
    # Nothing was leased either: the next tick takes the job at once.
    assert_one_tick(app, app.call("check", Call(headers={"X-Api-Token": API_TOKEN})), job)


def invoked(answer: Any) -> tuple[int, dict[str, str], Any]:
    """FunctionGraph's structure out of an ``/invoke`` answer: status, headers, decoded body."""
    assert answer.status_code == 200
    assert answer.mimetype == "application/json"
    wrapped = answer.get_json()
    assert set(wrapped) == {"statusCode", "headers", "body", "isBase64Encoded"}
    assert wrapped["isBase64Encoded"] is False
    assert isinstance(wrapped["body"], str)
    assert wrapped["headers"]["Content-Type"] == "application/json"
    return wrapped["statusCode"], wrapped["headers"], json.loads(wrapped["body"])


def test_invoke_with_a_timer_event_ticks_and_answers_in_functiongraphs_structure(served):
    app = served()
    job = app.due_job()

    answer = app.call(
        "check",
        Call(body=json.dumps(TIMER_EVENT).encode(), headers=FUNCTIONGRAPH_HEADERS, path="/invoke"),
    )

    status, _, summary = invoked(answer)
    assert status == 200
    assert (summary["polled"], summary["ended"]) == (1, {"SUCCESS": 1})
    assert app.status_of(job) is JobStatus.SUCCESS


def test_invoke_with_a_timer_event_makes_notify_deliver_what_is_pending(served):
    app = served()
    seed_pending(app.deps.store, 5)

    answer = app.call(
        "notify",
        Call(body=json.dumps(TIMER_EVENT).encode(), headers=FUNCTIONGRAPH_HEADERS, path="/invoke"),
    )

    status, _, summary = invoked(answer)
    assert status == 200
    assert (summary["claimed"], summary["delivered"]) == (1, 1)


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream", None])
def test_invoke_with_a_job_result_delivers_it_whatever_the_media_type(served, content_type):
    app = served()
    headers = {k: v for k, v in FUNCTIONGRAPH_HEADERS.items() if k != "Content-Type"}
    if content_type:
        headers["Content-Type"] = content_type

    answer = app.call("notify", Call(body=RESULT, headers=headers, path="/invoke"))

    status, _, summary = invoked(answer)
    assert status == 200
    assert (summary["added"], summary["delivered"]) == (1, 1)


@pytest.mark.parametrize("target", ["check", "notify"])
def test_invoke_carries_an_error_answer_in_the_structure(served, target):
    app = served(api_token=API_TOKEN)
    job = app.due_job()

    answer = app.call(
        target,
        Call(body=json.dumps(TIMER_EVENT).encode(), headers=FUNCTIONGRAPH_HEADERS, path="/invoke"),
    )

    status, headers, error = invoked(answer)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert error["error"]["code"] == "unauthorized"
    assert app.status_of(job) is JobStatus.SUBMITTED


def test_invoke_with_a_body_that_is_no_job_result_is_a_400_in_the_structure(served):
    app = served()

    answer = app.call(
        "notify", Call(body=b'{"key": "value"}', headers=FUNCTIONGRAPH_HEADERS, path="/invoke")
    )

    status, _, error = invoked(answer)
    assert status == 400
    assert error["error"]["code"] == "invalid_request"


def test_other_paths_keep_the_plain_answer(served):
    app = served()
    app.due_job()

    answer = app.call("check", Call(path="/anything", headers=SCHEDULER_HEADERS))

    assert answer.status_code == 200
    assert "statusCode" not in answer.get_json()
    assert answer.get_json()["polled"] == 1


def test_a_get_of_init_or_invoke_is_no_functiongraph_call(served):
    app = served()
    app.due_job()

    answer = app.call("check", Call(method="GET", path="/init"))

    assert answer.get_json()["polled"] == 1
