"""The ``notify`` function through functions-framework's own app (``create_app().test_client()``)
on both stores, webhook credentials kept out of every log line, error and answer, and ``check``
handing ended jobs to notification in the same tick (``WHOLEIMAGE_NOTIFY_INLINE``).

Services are ``httpx.MockTransport`` handlers behind the ``webhooks`` client of ``Dependencies``.
The function reads the real clock, so rows are seeded due a second ago.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from functions_framework import create_app

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.fakes import make_settings
from tests.functional.test_check import a_minute_ago, close_ims, settings_for, submit
from tests.functional.test_notify import (
    DISCORD_TOKEN,
    DISCORD_URL,
    FEISHU_SECRET,
    FEISHU_TOKEN,
    FEISHU_URL,
    SLACK_TOKEN,
    SLACK_URL,
    STANDARD_TOKEN,
    STANDARD_URL,
    WHSEC,
    Service,
    answer,
    channel,
    confirmed_by_host,
    job_result,
    outbox_rows,
    row_id,
)
from wholeimage import notify
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.logs import REDACTED, JsonFormatter, configure_logging, redact
from wholeimage.notify import ChannelLimiters, notifications_for
from wholeimage.service.outbox import deliver_now
from wholeimage.service.tick import tick
from wholeimage.store.records import JobStore

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
API_TOKEN = "notify-test-token-0123456789"
HOOK = {"name": "hook", "url": STANDARD_URL, "secret": WHSEC}
ONCALL = {"name": "oncall", "url": SLACK_URL, "on": "failures"}
SUMMARY_KEYS = {
    "owner",
    "claimed",
    "messages",
    "delivered",
    "retried",
    "dead",
    "digests",
    "errors",
    "budget_exhausted",
    "lost_leases",
}

# conftest's ``state_url`` asks for ``store_kind`` dynamically; naming it here parametrizes
# every test of the module: [sqlite] and [postgres].
pytestmark = pytest.mark.usefixtures("store_kind")


@pytest.fixture(autouse=True)
def unhurried_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The function's per-process buckets on a clock that is 1,000 s further on at each reading,
    so no test really sleeps for a rate limit (``test_notify`` tests them on a fake clock)."""
    readings = itertools.count(start=1000.0, step=1000.0)
    monkeypatch.setattr(notify, "_PROCESS_LIMITERS", ChannelLimiters(clock=lambda: next(readings)))


MakeApp = Callable[..., tuple[FlaskClient, Service]]


@pytest.fixture
def notify_app(store: JobStore) -> Iterator[MakeApp]:
    """Make the ``notify`` app over ``store``, its webhooks answered by a ``Service``."""
    clients: list[httpx.Client] = []

    def make(service: Service | None = None, **overrides: Any) -> tuple[FlaskClient, Service]:
        service = service or Service()
        values: dict[str, Any] = {"channels": [HOOK]}
        values.update(overrides)
        http = httpx.Client(transport=httpx.MockTransport(service))
        clients.append(http)
        set_dependencies(Dependencies(settings=make_settings(**values), store=store, webhooks=http))
        return create_app("notify", MAIN).test_client(), service

    yield make
    set_dependencies(None)
    for http in clients:
        http.close()


def seed_pending(store: JobStore, *indexes: int) -> list[str]:
    """Rows for the ``hook`` channel, due a second ago; their ids."""
    hook = channel("standard", "hook")
    due = datetime.now(UTC) - timedelta(seconds=1)
    rows = [row for i in indexes for row in notifications_for(job_result(i), [hook], now=due)]
    assert store.add_notifications(rows) == len(rows)
    return [row.notification_id for row in rows]


# === POST a job result ===========================================================================


@pytest.mark.slow
def test_a_posted_job_result_is_added_for_each_channel_that_wants_it_and_delivered(
    notify_app, store
):
    client, service = notify_app(channels=[HOOK, ONCALL])
    failed = job_result(1, "FAIL")

    response = client.post("/", json=failed.to_json())

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    answer = response.get_json()
    assert set(answer) == SUMMARY_KEYS | {"added"}
    assert (answer["added"], answer["claimed"], answer["delivered"]) == (2, 2, 2)
    assert answer["messages"] == {"hook": 1, "oncall": 1}
    assert (answer["retried"], answer["dead"], answer["errors"]) == (0, 0, {})
    assert answer["owner"].startswith("notify-")
    [webhook] = service.to(STANDARD_URL)
    assert webhook.headers["webhook-id"] == failed.key
    assert len(service.to(SLACK_URL)) == 1
    assert store.notification_counts() == {"DELIVERED": 2}

    # The same result again adds nothing and sends nothing
    again = client.post("/", json=failed.to_json()).get_json()
    assert (again["added"], again["claimed"]) == (0, 0)
    assert len(service.requests) == 2


@pytest.mark.slow
def test_a_minimal_job_result_is_enough_and_a_filtered_channel_does_not_hear_it(
    notify_app, store, state_url
):
    client, service = notify_app(channels=[HOOK, ONCALL])
    body = {
        "request_id": "9f1c2d3e4b5a69788796a5b4c3d2e1f0",
        "status": "SUCCESS",
        "image_name": "x",
    }

    answer = client.post("/", json=body).get_json()

    assert (answer["added"], answer["delivered"]) == (1, 1)
    assert service.to(SLACK_URL) == []
    [row] = outbox_rows(state_url).values()
    assert (row.channel, row.result_key) == ("hook", "wi_9f1c2d3e4b5a69788796a5b4c3d2e1f0_success")


def test_a_job_result_with_lower_case_t_and_z_is_delivered_with_its_times(notify_app, store):
    # RFC 3339 §5.6 and the job-result schema's pattern allow them; notify answered 400 (issue 10).
    client, service = notify_app()
    body = {
        **job_result(3, "FAIL").to_json(),
        "submitted_at": "2026-11-27t09:00:00z",
        "ended_at": "2026-11-27t09:30:00.5z",
    }

    response = client.post("/", json=body)

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["delivered"] == 1
    [webhook] = service.to(STANDARD_URL)
    sent = json.loads(webhook.content)["data"]
    assert sent["submitted_at"] == "2026-11-27T09:00:00+00:00"
    assert sent["ended_at"] == "2026-11-27T09:30:00.500000+00:00"
    assert sent["duration_s"] == 1800.5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "paths"),
    [
        (
            {"request_id": "a.b", "status": "DONE", "region": "EU DE"},
            ["$.image_name", "$.region", "$.request_id", "$.status"],
        ),
        (
            {**job_result(1).to_json(), "console_url": "http://console.example/x", "extra": 1},
            ["$.console_url", "$.extra"],
        ),
        ([job_result(1).to_json()], ["$"]),
    ],
    ids=["bad-fields", "http-console-and-unknown-field", "not-an-object"],
)
def test_an_invalid_job_result_is_400_naming_its_fields_and_adds_nothing(
    notify_app, store, body, paths
):
    client, service = notify_app()
    seed_pending(store, 9)  # not delivered either: the call fails before delivering

    response = client.post("/", json=body)

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert sorted({detail["path"] for detail in error["details"]}) == paths
    assert store.notification_counts() == {"PENDING": 1}
    assert service.requests == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "content_type"),
    [(b"{not json", "application/json"), (b'{"request_id": "x"}', "text/plain")],
    ids=["not-json", "not-a-json-media-type"],
)
def test_a_body_that_is_not_json_is_refused(notify_app, store, data, content_type):
    client, service = notify_app()
    response = client.post("/", data=data, headers={"Content-Type": content_type})
    assert response.status_code in (400, 415)
    assert store.notification_counts() == {}
    assert service.requests == []


def result_event(index: int) -> CloudEvent:
    return CloudEvent(
        {"type": "wholeimage.job.result", "source": "//wholeimage/check", "id": f"event-{index}"},
        job_result(index, "TIMED_OUT").to_json(),
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", [to_structured, to_binary], ids=["structured", "binary"])
def test_a_job_result_cloudevent_is_added_and_delivered(notify_app, store, mode):
    client, service = notify_app()
    headers, body = mode(result_event(3))

    response = client.post("/", data=body, headers=headers)

    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert (answer["added"], answer["delivered"]) == (1, 1)
    [request] = service.requests
    assert request.headers["webhook-id"] == job_result(3, "TIMED_OUT").key


def scheduler_event() -> CloudEvent:
    return CloudEvent(
        {"type": "google.cloud.scheduler.job.v1.executed", "source": "//scheduler/notify"},
        {"tick": True},
    )


def pubsub_push_body() -> bytes:
    message = {
        "data": base64.b64encode(b"tick").decode(),
        "messageId": "1234567890",
        "publishTime": "2026-11-27T09:27:00.000Z",
    }
    return json.dumps(
        {"message": message, "subscription": "projects/p/subscriptions/wholeimage-notify"}
    ).encode()


TICKS: dict[str, tuple[bytes, dict[str, str]]] = {
    "empty-body": (b"", {}),
    "empty-json-body": (b"", {"Content-Type": "application/json"}),
    "pubsub-push": (pubsub_push_body(), {"Content-Type": "application/json"}),
}
for _name, _mode in (("structured", to_structured), ("binary", to_binary)):
    _headers, _body = _mode(scheduler_event())
    TICKS[f"other-cloudevent-{_name}"] = (_body, _headers)


@pytest.mark.slow
@pytest.mark.parametrize("trigger", sorted(TICKS))
def test_a_call_without_a_job_result_just_delivers_what_is_pending(notify_app, store, trigger):
    client, service = notify_app()
    [pending] = seed_pending(store, 5)
    body, headers = TICKS[trigger]

    response = client.post("/", data=body, headers=headers)

    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert "added" not in answer
    assert (answer["claimed"], answer["delivered"]) == (1, 1)
    assert [request.headers["webhook-id"] for request in service.requests] == [job_result(5).key]
    assert store.notification_counts() == {"DELIVERED": 1}
    assert pending == row_id(job_result(5), channel("standard", "hook"))


# === dead letters, re-drive and counts ===========================================================


@pytest.mark.slow
def test_dead_letters_are_listed_without_urls_and_redriven_by_id_or_all(notify_app, store):
    client, service = notify_app(service=Service(answer(410), answer(410)))
    first, second = seed_pending(store, 1, 2)
    assert client.get("/").get_json() == {"outbox": {"PENDING": 2}}

    dying = client.post("/").get_json()
    assert (dying["dead"], dying["delivered"]) == (2, 0)

    listed = client.get("/?dead_letters=1")
    assert listed.status_code == 200
    dead = listed.get_json()["dead_letters"]
    assert {row["id"] for row in dead} == {first, second}
    for row in dead:
        assert set(row) == {
            "id",
            "channel",
            "result_key",
            "attempts",
            "last_error",
            "created_at",
            "dead_at",
        }
        assert (row["channel"], row["attempts"]) == ("hook", 1)
        assert "410" in row["last_error"]
    assert STANDARD_TOKEN not in listed.get_data(as_text=True)
    assert "receiver.example.com" not in listed.get_data(as_text=True)
    assert len(client.get("/?dead_letters=1&limit=1").get_json()["dead_letters"]) == 1

    by_id = client.post(f"/?redrive={first}").get_json()
    assert (by_id["redriven"], by_id["delivered"]) == (1, 1)
    assert [row["id"] for row in client.get("/?dead_letters=1").get_json()["dead_letters"]] == [
        second
    ]

    everything = client.post("/?redrive=all").get_json()
    assert (everything["redriven"], everything["delivered"]) == (1, 1)
    assert client.get("/").get_json() == {"outbox": {"DELIVERED": 2}}
    assert client.get("/?dead_letters=1").get_json() == {"dead_letters": []}
    assert client.post("/?redrive=all").get_json()["redriven"] == 0
    assert len(service.requests) == 4


@pytest.mark.slow
def test_get_shows_the_outbox_counts(notify_app, store):
    client, _ = notify_app()
    assert client.get("/").get_json() == {"outbox": {}}
    seed_pending(store, 1, 2, 3)
    assert client.get("/").get_json() == {"outbox": {"PENDING": 3}}


# === authentication and methods ==================================================================


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Api-Token": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN}],
    ids=["none", "wrong-x-api-token", "wrong-bearer", "no-scheme"],
)
def test_with_an_api_token_configured_a_call_without_it_is_401_and_does_nothing(
    notify_app, store, headers
):
    client, service = notify_app(api_token=API_TOKEN)
    seed_pending(store, 1)

    posted = client.post("/", json=job_result(2).to_json(), headers=headers)
    read = client.get("/?dead_letters=1", headers=headers)

    for response in (posted, read):
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert store.notification_counts() == {"PENDING": 1}
    assert service.requests == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [{"X-Api-Token": API_TOKEN}, {"Authorization": f"Bearer {API_TOKEN}"}],
    ids=["x-api-token", "bearer"],
)
def test_with_an_api_token_configured_the_token_is_accepted(notify_app, store, headers):
    client, _ = notify_app(api_token=API_TOKEN)
    response = client.post("/", json=job_result(2).to_json(), headers=headers)
    assert response.status_code == 200
    assert response.get_json()["delivered"] == 1
    assert client.get("/", headers=headers).get_json() == {"outbox": {"DELIVERED": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_and_do_nothing(notify_app, store, method):
    client, service = notify_app()
    seed_pending(store, 1)
    response = client.open("/", method=method, json=job_result(2).to_json())
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST, GET"
    assert store.notification_counts() == {"PENDING": 1}
    assert service.requests == []


# === credentials never shown =====================================================================

CREDENTIALS = [
    SLACK_URL,
    SLACK_TOKEN,
    "T0TEAM1234",
    "B0HOOK5678",
    FEISHU_URL,
    FEISHU_TOKEN,
    FEISHU_SECRET,
    STANDARD_URL,
    STANDARD_TOKEN,
    WHSEC,
    DISCORD_URL,
    DISCORD_TOKEN,
]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def echoing_the_url_at_first(request: httpx.Request, seen: set[str]) -> httpx.Response:
    """Each service fails its first message with an answer quoting the URL it was sent to."""
    host = request.url.host
    if host not in seen:
        seen.add(host)
        status = 404 if host == "receiver.example.com" else 500
        return httpx.Response(status, text=f"cannot post to {request.url} ({request.url.path})")
    return confirmed_by_host(request)


@pytest.mark.slow
def test_no_log_line_error_dead_letter_or_answer_shows_a_webhook_credential(
    notify_app, store, state_url
):
    httpx_logger = logging.getLogger("httpx")
    # The leak is real: at INFO, httpx logs every request's full URL.
    level = httpx_logger.level
    leaked = Records()
    httpx_logger.addHandler(leaked)
    httpx_logger.setLevel(logging.INFO)
    try:
        with httpx.Client(transport=httpx.MockTransport(Service())) as http:
            http.post(SLACK_URL, content=b"{}")
    finally:
        httpx_logger.setLevel(level)
        httpx_logger.removeHandler(leaked)
    assert any(SLACK_TOKEN in record.getMessage() for record in leaked.records)

    # Given JSON log lines captured as Cloud Logging would get them
    configure_logging("INFO")
    lines = io.StringIO()
    formatted = logging.StreamHandler(lines)
    formatted.setFormatter(JsonFormatter())
    logging.getLogger("wholeimage").addHandler(formatted)
    from_httpx = Records()
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).addHandler(from_httpx)
    seen: set[str] = set()
    client, _ = notify_app(
        Service(then=lambda request: echoing_the_url_at_first(request, seen)),
        webhook_url=SLACK_URL,
        channels=[
            {"name": "feishu", "url": FEISHU_URL, "secret": FEISHU_SECRET},
            {"name": "hook", "url": STANDARD_URL, "secret": WHSEC},
            {"name": "discord", "url": DISCORD_URL, "on": ["TIMED_OUT"]},
        ],
    )
    try:
        # When deliveries fail (5xx, 404, answers quoting the URL) and then succeed
        failing = client.post("/", json=job_result(1, "FAIL").to_json())
        succeeding = client.post("/", json=job_result(2).to_json())
        dead_letters = client.get("/?dead_letters=1")
        counts = client.get("/")
    finally:
        logging.getLogger("wholeimage").removeHandler(formatted)
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).removeHandler(from_httpx)

    assert (failing.get_json()["retried"], failing.get_json()["dead"]) == (2, 1)
    assert succeeding.get_json()["delivered"] >= 3
    log_text = lines.getvalue()
    assert "notification delivered" in log_text  # the lines were captured
    errors = [row.last_error or "" for row in outbox_rows(state_url).values()]
    assert any("cannot post to" in error for error in errors)  # the answers were recorded...
    shown = {
        "log lines": log_text,
        "settlement errors": "\n".join(errors),
        "answers": "\n".join(
            response.get_data(as_text=True)
            for response in (failing, succeeding, dead_letters, counts)
        ),
    }
    for where, text in shown.items():
        for credential in CREDENTIALS:
            assert credential not in text, f"{where} show {credential}"  # ...without credentials
    # Every URL and secret was registered with the log filter when the channels were read
    for credential in (SLACK_URL, FEISHU_URL, FEISHU_SECRET, STANDARD_URL, WHSEC, DISCORD_URL):
        assert redact(f"<{credential}>") == f"<{REDACTED}>"
    # httpx's request lines never reach a handler
    assert httpx_logger.getEffectiveLevel() >= logging.WARNING
    assert [record for record in from_httpx.records if record.levelno < logging.WARNING] == []


# === check hands ended jobs to notification ======================================================


@pytest.fixture
def live_ims() -> Iterator[ImsEmulator]:
    """An emulator on real time (``tick`` reads the real clock); jobs end at first query."""
    with ImsEmulator(EmulatorConfig(job_seconds=0)) as emulator:
        yield emulator


def tick_with(
    store: JobStore, ims: ImsEmulator, service: Service, **overrides: Any
) -> tuple[dict[str, Any], Dependencies, str]:
    """Submit one job, then run one ``check`` tick with these settings; the answer and job."""
    http = httpx.Client(transport=httpx.MockTransport(service))
    deps = Dependencies(
        settings=settings_for(ims, region="cn-north-4", **overrides), store=store, webhooks=http
    )
    try:
        [job] = submit(deps, now=a_minute_ago, name="inline")
        answer = tick(deps).as_json()
    finally:
        close_ims(deps)
    return answer, deps, job.request_id


@pytest.mark.slow
def test_a_tick_delivers_right_after_a_job_ends(store, live_ims):
    service = Service()
    answer, deps, request_id = tick_with(store, live_ims, service, webhook_url=SLACK_URL)
    assert deps.webhooks is not None
    deps.webhooks.close()

    assert answer["ended"] == {"SUCCESS": 1}
    assert set(answer["notify"]) == SUMMARY_KEYS
    assert (answer["notify"]["claimed"], answer["notify"]["delivered"]) == (1, 1)
    [request] = service.requests
    body = json.loads(request.content)
    assert "inline-0" in body["text"]
    assert "console-intl.huaweicloud.com" in request.content.decode()  # cloud and region known
    assert request_id in request.content.decode()
    assert store.notification_counts() == {"DELIVERED": 1}


@pytest.mark.slow
def test_without_inline_delivery_a_tick_leaves_the_rows_pending_for_notify(store, live_ims):
    service = Service()
    answer, deps, _ = tick_with(
        store, live_ims, service, webhook_url=SLACK_URL, notify_inline=False
    )
    try:
        assert answer["ended"] == {"SUCCESS": 1}
        assert "notify" not in answer
        assert service.requests == []
        assert store.notification_counts() == {"PENDING": 1}

        assert deliver_now(deps).delivered == 1
        assert len(service.requests) == 1
        assert store.notification_counts() == {"DELIVERED": 1}
    finally:
        assert deps.webhooks is not None
        deps.webhooks.close()


@pytest.mark.slow
def test_without_channels_a_tick_writes_no_rows_and_notifies_nothing(store, live_ims):
    service = Service()
    answer, deps, _ = tick_with(store, live_ims, service)
    assert deps.webhooks is not None
    deps.webhooks.close()
    assert answer["ended"] == {"SUCCESS": 1}
    assert "notify" not in answer
    assert store.notification_counts() == {}
    assert service.requests == []
