"""The ``notify`` use case on both stores: the outbox ``check`` writes, delivery to each target
format, bursts and digests, concurrent and killed runs, local sinks, and channels from settings.

Delivery runs on a fake clock (``FakeTime``: ``now``, ``monotonic`` and ``sleep`` together, with
``ChannelLimiters`` on the same clock), so rate limits, ``Retry-After``, backoff, ``max_age`` and
leases are exercised without sleeping. Services are ``httpx.MockTransport`` handlers. Real time
passes only where concurrency must be real: runs racing in threads and spawned processes, and a
process killed in the middle of a run. The children's entry points are the top-level ``child_*``
functions below.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from pydantic import SecretStr
from standardwebhooks import Webhook

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.functional.test_check import ANY_SKEW, Clock, settings_for, submit, tick, wired
from wholeimage import results as verdicts
from wholeimage.bootstrap import open_store
from wholeimage.channels.registry import target_for
from wholeimage.channels.slack import SlackTarget
from wholeimage.errors import ConfigurationError
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.notify import (
    ChannelLimiters,
    NotifyConfig,
    NotifySummary,
    deliver_pending,
    notifications_for,
    outbox_for,
)
from wholeimage.results import Channel, JobResult, console_url, notification_key
from wholeimage.settings import load_settings
from wholeimage.store.records import NOTIFICATION_COLUMNS, JobStore, Notification, PollUpdate

WAIT_SECONDS = 30.0
EPSILON = 1e-6
CONSOLE = console_url("huaweicloud", "cn-north-4")
SOURCE_ID = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"

# Webhook URLs are credentials: each has a recognisable token, so a test can look for leaks.
SLACK_TOKEN = "slackToken0Secret0123456789"
SLACK_URL = f"https://hooks.slack.com/services/T0TEAM1234/B0HOOK5678/{SLACK_TOKEN}"
DISCORD_TOKEN = "discordToken_0Secret_abcdefghijklmnopqrstuvwxyz0123"
DISCORD_URL = f"https://discord.com/api/webhooks/112233445566778899/{DISCORD_TOKEN}"
FEISHU_TOKEN = "0f1e2d3c-4b5a-6978-8796-feishu0token"
FEISHU_URL = f"https://open.feishu.cn/open-apis/bot/v2/hook/{FEISHU_TOKEN}"
FEISHU_SECRET = "feishuSigningSecret0123"
DINGTALK_TOKEN = "dingtalk0access0token0123456789abcdef"
DINGTALK_URL = f"https://oapi.dingtalk.com/robot/send?access_token={DINGTALK_TOKEN}"
DINGTALK_SECRET = "SECdingtalkSigningSecret0123456789"
STANDARD_TOKEN = "receiverToken0123456789"
STANDARD_URL = f"https://receiver.example.com/hooks/{STANDARD_TOKEN}"
WHSEC = "whsec_" + base64.b64encode(bytes(range(40, 72))).decode()

URLS = {
    "slack": SLACK_URL,
    "discord": DISCORD_URL,
    "feishu": FEISHU_URL,
    "dingtalk": DINGTALK_URL,
    "standard": STANDARD_URL,
}
SECRETS = {"feishu": FEISHU_SECRET, "dingtalk": DINGTALK_SECRET, "standard": WHSEC}
FORMATS = sorted(URLS)
FAILURES = frozenset({"FAIL", "TIMED_OUT", "UNCONFIRMED"})

# conftest's ``state_url`` asks for ``store_kind`` dynamically; naming it parametrizes a test
# over SQLite and PostgreSQL.
BOTH_STORES = pytest.mark.usefixtures("store_kind")


# === builders ====================================================================================


def channel(
    format: str,
    name: str | None = None,
    *,
    url: str | None = None,
    on: frozenset[str] = frozenset(verdicts.VERDICTS),
) -> Channel:
    secret = SECRETS.get(format)
    return Channel(
        name=name or format,
        format=format,
        url=SecretStr(url or URLS[format]),
        secret=SecretStr(secret) if secret else None,
        on=on,
    )


def job_result(index: int = 0, status: verdicts.Verdict = "SUCCESS") -> JobResult:
    request_id = f"req{index:05d}"
    ended = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    return JobResult(
        key=notification_key(request_id, status),
        request_id=request_id,
        job_id=f"{index:032x}",
        status=status,
        image_name=f"web{index:05d}-full",
        image_id=f"img-{index:05d}" if status == "SUCCESS" else None,
        source_kind="ecs",
        source_id=SOURCE_ID,
        requested_by="alice",
        error_code="IMS.0001" if status == "FAIL" else None,
        fail_reason="The ECS is not stopped." if status == "FAIL" else None,
        submitted_at=ended - timedelta(minutes=12),
        ended_at=ended,
        console_url=CONSOLE,
        region="cn-north-4",
    )


def enqueue(
    store: JobStore, results: list[JobResult], channels: list[Channel], *, now: datetime
) -> list[str]:
    """Pending rows, due ``now``, for each result and each channel that wants it; their ids."""
    rows = [row for result in results for row in notifications_for(result, channels, now=now)]
    assert store.add_notifications(rows) == len(rows)
    return [row.notification_id for row in rows]


def row_id(result: JobResult, to: Channel) -> str:
    return f"{result.key}.{to.name}"


def outbox_query(state_url: str, sql: str) -> list[dict[str, Any]]:
    """Read the notifications table behind the store's back, either backend."""
    if state_url.startswith("sqlite:///"):
        with closing(sqlite3.connect(state_url.removeprefix("sqlite:///"))) as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(sql).fetchall()]
    with psycopg.connect(state_url, row_factory=dict_row) as connection:
        return list(connection.execute(sql.encode()).fetchall())


def outbox_rows(state_url: str) -> dict[str, Notification]:
    """Every outbox row, by id."""
    rows = outbox_query(state_url, f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications")
    return {row["notification_id"]: Notification.from_row(row) for row in rows}


def lease_owners(state_url: str) -> dict[str, str | None]:
    rows = outbox_query(state_url, "SELECT notification_id, lease_owner FROM notifications")
    return {row["notification_id"]: row["lease_owner"] for row in rows}


def seconds_between(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


class FakeTime:
    """One fake clock for a delivery run: ``now``, ``monotonic`` and a ``sleep`` that advances it."""

    def __init__(self) -> None:
        # Real time at the start: Standard Webhooks receivers check signatures within 5 minutes.
        self.start = datetime.now(UTC).replace(microsecond=0)
        self.elapsed = 0.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.elapsed

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.elapsed += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.elapsed += seconds

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.monotonic())


Answer = Callable[[httpx.Request], httpx.Response]


def answer(
    status: int = 200,
    *,
    text: str = "",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    def respond(request: httpx.Request) -> httpx.Response:
        if body is not None:
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, text=text, headers=headers)

    return respond


def raising(error: type[httpx.TransportError]) -> Answer:
    def respond(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    return respond


# What each service answers when it accepted a message.
CONFIRMED: dict[str, Answer] = {
    "slack": answer(200, text="ok"),
    "discord": answer(200, body={"id": "1180000000000000000", "type": 0}),
    "feishu": answer(200, body={"code": 0, "msg": "success", "data": {}}),
    "dingtalk": answer(200, body={"errcode": 0, "errmsg": "ok"}),
    "standard": answer(204),
}
HOST_FORMATS = {httpx.URL(url).host: format for format, url in URLS.items()}


def confirmed_by_host(request: httpx.Request) -> httpx.Response:
    return CONFIRMED[HOST_FORMATS[request.url.host]](request)


class Service:
    """Webhook services behind one mock transport: answers from ``script``, then ``then``.

    Every request is recorded with the fake time it arrived at.
    """

    def __init__(
        self, *script: Answer, then: Answer = confirmed_by_host, time: FakeTime | None = None
    ) -> None:
        self.script = list(script)
        self.then = then
        self.time = time
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            self.times.append(self.time.monotonic() if self.time else 0.0)
            step = self.script.pop(0) if self.script else self.then
        return step(request)

    def to(self, url: str) -> list[httpx.Request]:
        host = httpx.URL(url).host
        return [request for request in self.requests if request.url.host == host]


def deliver(
    store: JobStore,
    channels: list[Channel],
    service: Service | Answer,
    time: FakeTime,
    *,
    config: NotifyConfig | None = None,
    limiters: ChannelLimiters | None = None,
    seed: int = 0,
    owner: str | None = None,
) -> NotifySummary:
    """One delivery run on the fake clock, through a mock transport."""
    with httpx.Client(transport=httpx.MockTransport(service)) as http:
        return deliver_pending(
            store=store,
            channels=channels,
            http=http,
            config=config or NotifyConfig(),
            limiters=limiters or ChannelLimiters(clock=time.monotonic),
            now=time.now,
            monotonic=time.monotonic,
            sleep=time.sleep,
            rng=random.Random(seed),
            owner=owner,
        )


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing should be sent, got {request.method} to {request.url.host}")


# === 1. the outbox ===============================================================================


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ims(clock: Clock) -> Iterator[ImsEmulator]:
    config = EmulatorConfig(job_seconds=0, max_clock_skew_seconds=ANY_SKEW)
    with ImsEmulator(config, clock=clock) as emulator:
        yield emulator


@pytest.mark.slow
@BOTH_STORES
def test_a_tick_that_ends_jobs_writes_one_row_per_verdict_and_channel_that_wants_it(
    store, state_url, ims, clock
):
    # Given three due jobs, one doomed to fail, and two channels, one for failures only
    ims.config.fail_sources = {"doomed-0"}
    everyone = channel("slack", "everyone")
    oncall = channel("discord", "oncall", on=FAILURES)
    outbox = outbox_for([everyone, oncall], console=CONSOLE, region="cn-north-4")
    with wired(settings_for(ims), store) as deps:
        fine = submit(deps, 2, now=clock.now, name="fine")
        [doomed] = submit(deps, now=clock.now, name="doomed")
        clock.advance(20)

        # When a tick ends them
        summary = tick(deps, clock, outbox=outbox)

        # Then each verdict has one row per channel that wants it, due at once
        assert dict(summary.ended) == {"SUCCESS": 2, "FAIL": 1}
        rows = outbox_rows(state_url)
        fail_key = notification_key(doomed.request_id, "FAIL")
        assert set(rows) == {
            *(f"{notification_key(job.request_id, 'SUCCESS')}.everyone" for job in fine),
            f"{fail_key}.everyone",
            f"{fail_key}.oncall",
        }
        for row in rows.values():
            assert (row.state, row.attempts) == ("PENDING", 0)
            assert row.created_at == row.next_attempt_at == clock.now()
        failed = JobResult.from_json(json.loads(rows[f"{fail_key}.oncall"].result_json))
        assert failed.status == "FAIL"
        assert failed.error_code == ims.config.fail_error_code
        assert failed.fail_reason == ims.config.fail_reason
        assert failed.image_name == "doomed-0"
        assert (failed.console_url, failed.region) == (CONSOLE, "cn-north-4")
        assert failed.ended_at == clock.now()

        # And a later tick, with nothing left to end, writes nothing more
        clock.advance(60)
        assert tick(deps, clock, outbox=outbox).polled == 0
    assert outbox_rows(state_url) == rows
    assert store.notification_counts() == {"PENDING": 4}


def leased_job(store: JobStore, owner: str, now: datetime) -> Job:
    """A submitted job, due and leased to ``owner``."""
    request = CreateImageRequest(name="web01-full", instance_id=SOURCE_ID)
    created = now - timedelta(minutes=15)
    job = Job(
        request_id="job-ended-twice",
        idempotency_key=None,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="alice",
        source_kind="ecs",
        source_id=SOURCE_ID,
        status=JobStatus.SUBMITTED,
        ims_job_id="a" * 32,
        created_at=created,
        updated_at=created,
        submitted_at=created,
        next_poll_at=created,
    )
    assert store.reserve(job).created
    [claimed] = store.claim_due(
        now=now, owner=owner, lease_until=now + timedelta(minutes=5), limit=10
    )
    return claimed


@BOTH_STORES
def test_a_job_ended_twice_is_notified_once_and_a_filtered_channel_not_at_all(store, state_url):
    now = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    job = leased_job(store, "tick-1", now)
    everyone, oncall = channel("slack", "everyone"), channel("discord", "oncall", on=FAILURES)
    outbox = outbox_for([everyone, oncall])
    end = PollUpdate.end(job, status=JobStatus.SUCCESS, at=now, image_id="img-1")

    # The same end twice in one transaction, then a different end later: one is recorded
    assert store.record_polls([end, end], owner="tick-1", outbox=outbox) == [end]
    later = PollUpdate.end(job, status=JobStatus.FAIL, at=now + timedelta(minutes=1))
    assert store.record_polls([later], owner="tick-1", outbox=outbox) == []

    key = notification_key(job.request_id, "SUCCESS")
    assert set(outbox_rows(state_url)) == {f"{key}.everyone"}  # oncall hears failures only
    assert store.notification_counts() == {"PENDING": 1}


@BOTH_STORES
def test_an_end_is_never_recorded_without_its_notifications(store, state_url):
    now = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    job = leased_job(store, "tick-1", now)
    end = PollUpdate.end(job, status=JobStatus.FAIL, at=now, error_code="IMS.0001")

    def broken_outbox(job: Job, at: datetime) -> list[Notification]:
        raise RuntimeError("cannot build the rows")

    # When writing the rows fails, the end is rolled back with them
    with pytest.raises(RuntimeError, match="cannot build the rows"):
        store.record_polls([end], owner="tick-1", outbox=broken_outbox)
    kept = store.get(job.request_id)
    assert kept is not None
    assert (kept.status, kept.ended_at) == (JobStatus.SUBMITTED, None)
    assert store.notification_counts() == {}

    # And the lease holder records both together on its next try
    assert store.record_polls([end], owner="tick-1", outbox=outbox_for([channel("slack")])) == [end]
    assert set(outbox_rows(state_url)) == {f"{notification_key(job.request_id, 'FAIL')}.slack"}


@BOTH_STORES
def test_add_notifications_ignores_a_verdict_and_channel_already_there(store, state_url):
    now = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    everyone, oncall = channel("slack", "everyone"), channel("discord", "oncall", on=FAILURES)
    failed = job_result(1, "FAIL")
    rows = notifications_for(failed, [everyone, oncall], now=now)
    assert store.add_notifications(rows) == 2
    before = outbox_rows(state_url)

    # The same rows again, or the same verdict with other content later: nothing added
    assert store.add_notifications(rows) == 0
    changed = replace(failed, image_name="renamed", fail_reason="another reason")
    assert store.add_notifications(notifications_for(changed, [everyone], now=now)) == 0
    # A mix adds only what is new
    fresh = notifications_for(job_result(2), [everyone, oncall], now=now)
    assert store.add_notifications(rows + fresh) == 1

    after = outbox_rows(state_url)
    assert {key: after[key] for key in before} == before
    assert set(after) == {*before, row_id(job_result(2), everyone)}


# === 2. delivery, per target =====================================================================


def feishu_sign(timestamp: str, secret: str) -> str:
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def dingtalk_sign(timestamp: str, secret: str) -> str:
    signed = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


def assert_sent_as(format: str, request: httpx.Request, result: JobResult) -> None:
    """The request is the format's message for ``result``, signed where the format signs."""
    assert request.method == "POST"
    assert request.headers["Content-Type"].startswith("application/json")
    body = json.loads(request.content)
    if format == "slack":
        assert str(request.url) == SLACK_URL
        assert result.image_name in body["text"]
        assert body["attachments"][0]["blocks"][0]["type"] == "header"
    elif format == "discord":
        assert request.url.path.endswith(DISCORD_TOKEN)
        assert request.url.params["wait"] == "true"  # without it Discord answers 204 to anything
        assert body["allowed_mentions"] == {"parse": []}
        assert result.image_name in body["embeds"][0]["title"]
    elif format == "feishu":
        assert str(request.url) == FEISHU_URL
        assert body["msg_type"] == "interactive"
        assert body["sign"] == feishu_sign(body["timestamp"], FEISHU_SECRET)
    elif format == "dingtalk":
        params = request.url.params
        assert params["access_token"] == DINGTALK_TOKEN  # kept: merged, never replaced
        assert params["sign"] == dingtalk_sign(params["timestamp"], DINGTALK_SECRET)
        assert body["msgtype"] == "markdown"
        assert result.image_name in body["markdown"]["text"]
    else:
        assert str(request.url) == STANDARD_URL
        event = Webhook(WHSEC).verify(request.content, dict(request.headers))
        assert request.headers["webhook-id"] == result.key
        assert event["data"] == result.to_json()


@pytest.mark.slow
@BOTH_STORES
@pytest.mark.parametrize("format", FORMATS)
def test_each_format_is_delivered_once_its_service_confirms_it(store, state_url, format):
    time = FakeTime()
    to = channel(format)
    result = job_result(7, "FAIL")
    enqueue(store, [result], [to], now=time.now())
    service = Service(time=time)

    summary = deliver(store, [to], service, time)

    [request] = service.requests
    assert_sent_as(format, request, result)
    assert (summary.claimed, summary.delivered, summary.retried, summary.dead) == (1, 1, 0, 0)
    assert summary.messages == {format: 1}
    row = outbox_rows(state_url)[row_id(result, to)]
    assert row.state == "DELIVERED"
    assert row.message_id == result.key
    assert (row.attempts, row.delivered_at, row.last_error) == (1, time.now(), None)
    # Delivered is final: the next run has nothing to send
    assert deliver(store, [to], never_called, time).claimed == 0


# An answer that is not the service's confirmation is never "delivered": (format, answer, the
# row's state after it, a fragment of the recorded error).
REFUSALS: dict[str, tuple[str, Answer, str, str]] = {
    "slack-200-without-ok": ("slack", answer(200, text="accepted"), "DEAD", "other than ok"),
    "slack-invalid-payload": ("slack", answer(400, text="invalid_payload"), "DEAD", "invalid"),
    "slack-channel-archived": (
        "slack",
        answer(410, text="channel_is_archived"),
        "DEAD",
        "archived",
    ),
    "slack-rollup-error": ("slack", answer(500, text="rollup_error"), "PENDING", "rollup_error"),
    "discord-unknown-webhook": (
        "discord",
        answer(404, body={"message": "Unknown Webhook", "code": 10015}),
        "DEAD",
        "10015",
    ),
    "discord-invalid-form-body": (
        "discord",
        answer(400, body={"message": "Invalid Form Body", "code": 50035}),
        "DEAD",
        "50035",
    ),
    "discord-unavailable": ("discord", answer(503, text="upstream"), "PENDING", "HTTP 503"),
    "feishu-not-a-feishu-answer": (
        "feishu",
        answer(200, text="<html>a proxy page</html>"),
        "DEAD",
        "not a Feishu answer",
    ),
    "feishu-keyword-missing": (
        "feishu",
        answer(200, body={"code": 19024, "msg": "Key Words Not Found"}),
        "DEAD",
        "19024",
    ),
    "feishu-throttled": (
        "feishu",
        answer(200, body={"code": 11232, "msg": "frequency limited"}),
        "PENDING",
        "11232",
    ),
    "dingtalk-security-check": (
        "dingtalk",
        answer(200, body={"errcode": 310000, "errmsg": "keywords not in content"}),
        "DEAD",
        "310000",
    ),
    "dingtalk-throttled": (
        "dingtalk",
        answer(200, body={"errcode": 410100, "errmsg": "send too fast"}),
        "PENDING",
        "410100",
    ),
    "standard-gone": ("standard", answer(410), "DEAD", "410"),
    "standard-redirect": (
        "standard",
        answer(302, headers={"Location": "https://elsewhere.example/"}),
        "DEAD",
        "redirect",
    ),
    "standard-unprocessable": ("standard", answer(422, text="no"), "DEAD", "HTTP 422"),
}


@pytest.mark.slow
@BOTH_STORES
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_an_answer_other_than_the_services_confirmation_is_never_delivered(store, state_url, case):
    format, refusal, state, fragment = REFUSALS[case]
    time = FakeTime()
    to = channel(format)
    result = job_result(3)
    enqueue(store, [result], [to], now=time.now())

    summary = deliver(store, [to], Service(then=refusal), time)

    row = outbox_rows(state_url)[row_id(result, to)]
    assert row.state == state
    assert row.attempts == 1
    assert row.last_error is not None
    assert fragment in row.last_error
    assert (row.delivered_at, row.message_id) == (None, None)
    assert summary.delivered == 0
    if state == "DEAD":
        assert row.dead_at == time.now()
        assert summary.dead == 1
    else:
        assert row.next_attempt_at > time.now()
        assert summary.retried == 1


@BOTH_STORES
def test_a_feishu_http_200_with_code_19021_is_dead_at_once_with_the_reason(store):
    time = FakeTime()
    to = channel("feishu")
    result = job_result(1, "FAIL")
    enqueue(store, [result], [to], now=time.now())
    refused = answer(
        200, body={"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}
    )
    service = Service(then=refused)

    summary = deliver(store, [to], service, time)

    assert len(service.requests) == 1  # a permanent refusal is not retried
    assert (summary.dead, summary.retried, summary.delivered) == (1, 0, 0)
    [dead] = store.dead_letters()
    assert dead.notification_id == row_id(result, to)
    assert dead.last_error is not None
    assert "Feishu code 19021" in dead.last_error
    assert "check the secret and the clock" in dead.last_error
    assert "sign match fail" in dead.last_error  # what Feishu said
    assert (dead.attempts, dead.dead_at) == (1, time.now())
    time.advance(3600)
    assert deliver(store, [to], service, time).claimed == 0
    assert len(service.requests) == 1


@BOTH_STORES
def test_a_removed_slack_webhook_no_service_is_dead_at_once(store):
    time = FakeTime()
    to = channel("slack")
    enqueue(store, [job_result(1)], [to], now=time.now())

    summary = deliver(store, [to], Service(then=answer(404, text="no_service")), time)

    assert summary.dead == 1
    [dead] = store.dead_letters()
    assert dead.last_error is not None
    assert "no_service" in dead.last_error
    assert "disable" in dead.last_error
    assert store.notification_counts() == {"DEAD": 1}


def service_result(request: httpx.Request, results: list[JobResult]) -> JobResult:
    """The result a single message was about."""
    [found] = [result for result in results if result.image_name in request.content.decode()]
    return found


# Each channel kind's way of saying "wait 30 s" on its first message.
WAIT_30_S: dict[str, Answer] = {
    "standard": answer(429, text="slow down", headers={"Retry-After": "30"}),
    "slack": answer(429, text="rate_limited", headers={"Retry-After": "30"}),
    "discord": answer(
        429, body={"message": "You are being rate limited.", "retry_after": 30, "global": False}
    ),
}


@BOTH_STORES
@pytest.mark.parametrize("format", sorted(WAIT_30_S))
def test_a_wait_asked_on_a_first_message_holds_back_that_channels_other_messages_only(
    store, state_url, format
):
    # Given three results for a channel that answers its first message "wait 30 s", and two
    # for Feishu; the run's 60 s budget would have room to wait the 30 s out
    time = FakeTime()
    paused, other = channel(format), channel("feishu")
    results = [job_result(index) for index in range(3)]
    enqueue(store, results, [paused], now=time.now())
    enqueue(store, [job_result(7), job_result(8)], [other], now=time.now())
    host = httpx.URL(URLS[format]).host
    says = [WAIT_30_S[format]]

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.host == host and says:
            return says.pop(0)(request)
        return confirmed_by_host(request)

    service = Service(then=respond, time=time)
    limiters = ChannelLimiters(clock=time.monotonic)
    started = time.now()

    # When a run delivers
    summary = deliver(store, [paused, other], service, time, limiters=limiters)

    # Then the channel's other messages are not attempted in this run, and all its rows are
    # due no earlier than 30 s later; Feishu's go out as usual
    [refused] = service.to(URLS[format])
    assert len(service.to(FEISHU_URL)) == 2
    rows = outbox_rows(state_url)
    first = rows[row_id(service_result(refused, results), paused)]
    assert (first.state, first.attempts) == ("PENDING", 1)
    held = [
        rows[row_id(result, paused)]
        for result in results
        if row_id(result, paused) != first.notification_id
    ]
    assert [(row.state, row.attempts) for row in held] == [("PENDING", 0)] * 2
    assert all(seconds_between(row.next_attempt_at, started) >= 30 for row in [first, *held])
    assert {rows[row_id(job_result(index), other)].state for index in (7, 8)} == {"DELIVERED"}
    assert (summary.delivered, summary.retried, summary.dead) == (2, 1, 0)
    assert not summary.budget_exhausted
    assert time.monotonic() < 30  # the run did not sit the pause out

    # And a result due during the pause is held back as well, by a later run of this process
    time.advance(20)
    [late] = enqueue(store, [job_result(3)], [paused], now=time.now())
    during = deliver(store, [paused, other], service, time, limiters=limiters)
    assert (during.claimed, during.messages) == (1, Counter())
    late_row = outbox_rows(state_url)[late]
    assert (late_row.state, late_row.attempts) == ("PENDING", 0)
    assert seconds_between(late_row.next_attempt_at, started) >= 30 - EPSILON

    # Once the pause is over, everything goes out: nothing was dropped
    time.advance(11)
    deliver(store, [paused, other], service, time, limiters=limiters)
    assert store.notification_counts() == {"DELIVERED": 6}
    after = [
        at
        for request, at in zip(service.requests, service.times, strict=True)
        if request.url.host == host
    ][1:]
    assert len(after) == (4 if format == "standard" else 1)  # chat: the four as one digest
    assert min(after) >= 30


@pytest.mark.slow
@BOTH_STORES
def test_discords_json_retry_after_is_honoured(store, state_url):
    time = FakeTime()
    discord = channel("discord")
    results = [job_result(index) for index in range(2)]
    enqueue(store, results, [discord], now=time.now())
    limited = answer(
        429,
        body={"message": "You are being rate limited.", "retry_after": 64.57, "global": False},
    )
    service = Service(limited, time=time)
    limiters = ChannelLimiters(clock=time.monotonic)

    started = time.now()
    deliver(store, [discord], service, time, limiters=limiters)

    assert len(service.requests) == 1  # 64.57 s is past the run's 60 s budget: the rest waits
    rows = outbox_rows(state_url)
    first = rows[row_id(service_result(service.requests[0], results), discord)]
    assert first.state == "PENDING"
    assert seconds_between(first.next_attempt_at, started) >= 64.57
    time.advance(65)
    deliver(store, [discord], service, time, limiters=limiters)
    assert store.notification_counts() == {"DELIVERED": 2}


def test_backoff_is_full_jitter_up_to_base_times_three_to_the_attempts_capped_at_max():
    config = NotifyConfig(base_delay=2.0, max_delay=100.0)
    rng = random.Random(5)
    for attempts in range(6):
        bound = min(100.0, 2.0 * 3**attempts)
        delays = [config.backoff(attempts, rng) for _ in range(400)]
        assert all(0 <= delay <= bound for delay in delays)
        # Full jitter: spread over the whole range, not bunched near the top
        assert min(delays) < 0.1 * bound
        assert max(delays) > 0.9 * bound


@pytest.mark.slow
@BOTH_STORES
def test_a_5xx_is_retried_later_with_full_jitter_backoff_and_every_attempt_is_counted(
    store, state_url
):
    time = FakeTime()
    hook = channel("standard")
    [pending] = enqueue(store, [job_result(1)], [hook], now=time.now())
    config = NotifyConfig(base_delay=2.0)
    service = Service(then=answer(503, text="upstream unavailable"), time=time)

    for attempts in range(4):
        attempted_at = time.now()
        summary = deliver(store, [hook], service, time, config=config, seed=attempts)
        assert summary.retried == 1
        row = outbox_rows(state_url)[pending]
        assert (row.state, row.attempts) == ("PENDING", attempts + 1)
        assert row.last_error is not None
        assert "HTTP 503" in row.last_error
        delay = seconds_between(row.next_attempt_at, attempted_at)
        assert -EPSILON <= delay <= config.base_delay * 3**attempts + EPSILON
        if delay > 0.01:  # not due yet: a run now sends nothing
            assert deliver(store, [hook], service, time, config=config).claimed == 0
        time.advance(delay + 0.001)
    assert len(service.requests) == 4

    service.then = CONFIRMED["standard"]
    deliver(store, [hook], service, time, config=config)
    row = outbox_rows(state_url)[pending]
    assert (row.state, row.attempts, row.message_id) == ("DELIVERED", 5, job_result(1).key)


@pytest.mark.slow
@BOTH_STORES
@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (httpx.ConnectError, "not sent: ConnectError"),
        (httpx.ConnectTimeout, "not sent: ConnectTimeout"),
        (httpx.ReadTimeout, "no answer: ReadTimeout"),
        (httpx.RemoteProtocolError, "no answer: RemoteProtocolError"),
    ],
)
def test_a_connection_failure_leaves_the_row_pending_for_a_retry(store, state_url, error, detail):
    time = FakeTime()
    slack = channel("slack")
    [pending] = enqueue(store, [job_result(1)], [slack], now=time.now())

    summary = deliver(store, [slack], Service(then=raising(error)), time)

    row = outbox_rows(state_url)[pending]
    assert (row.state, row.attempts, row.last_error) == ("PENDING", 1, detail)
    assert summary.retried == 1
    time.advance(3600)
    deliver(store, [slack], Service(), time)
    assert outbox_rows(state_url)[pending].state == "DELIVERED"


@BOTH_STORES
def test_an_answer_that_cannot_be_decoded_leaves_the_row_pending_for_a_retry(store, state_url):
    """A 200 whose body claims gzip and is not was an httpx.DecodingError out of the run: a 500
    of ``notify`` (found by issue 9's fuzz test)."""
    time = FakeTime()
    slack = channel("slack")
    [pending] = enqueue(store, [job_result(1)], [slack], now=time.now())

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    summary = deliver(store, [slack], Service(then=broken), time)

    row = outbox_rows(state_url)[pending]
    assert (row.state, row.attempts, row.last_error) == (
        "PENDING",
        1,
        "unreadable answer: DecodingError",
    )
    assert summary.retried == 1


@BOTH_STORES
def test_a_row_still_undelivered_after_max_age_is_dead(store, state_url):
    time = FakeTime()
    hook = channel("standard")
    [pending] = enqueue(store, [job_result(1)], [hook], now=time.now())
    config = NotifyConfig(max_age=timedelta(minutes=10), base_delay=1.0)
    failing = Service(then=answer(502, text="bad gateway"))

    deliver(store, [hook], failing, time, config=config)
    assert outbox_rows(state_url)[pending].state == "PENDING"

    time.advance(10 * 60 + 1)
    summary = deliver(store, [hook], failing, time, config=config)

    assert summary.dead == 1
    [dead] = store.dead_letters()
    assert dead.notification_id == pending
    assert dead.last_error == "undelivered after 0:10:00: HTTP 502: bad gateway"
    assert dead.attempts == 2


@BOTH_STORES
def test_a_retry_after_beyond_max_age_gives_up_at_once(store, state_url):
    time = FakeTime()
    dingtalk = channel("dingtalk")
    [pending] = enqueue(store, [job_result(1)], [dingtalk], now=time.now())
    throttled = answer(200, body={"errcode": 130101, "errmsg": "send too fast"})  # 600 s

    deliver(store, [dingtalk], throttled, time, config=NotifyConfig(max_age=timedelta(minutes=5)))

    row = outbox_rows(state_url)[pending]
    assert row.state == "DEAD"
    assert row.last_error is not None
    assert row.last_error.startswith("undelivered after 0:05:00: ")


@BOTH_STORES
def test_a_row_for_a_channel_no_longer_configured_is_dead_without_being_sent(store):
    time = FakeTime()
    retired, kept = channel("slack", "retired"), channel("standard", "kept")
    enqueue(store, [job_result(1)], [retired, kept], now=time.now())
    service = Service()

    summary = deliver(store, [kept], service, time)

    assert [request.url.host for request in service.requests] == ["receiver.example.com"]
    assert (summary.delivered, summary.dead) == (1, 1)
    [dead] = store.dead_letters()
    assert dead.channel == "retired"
    assert dead.last_error == "channel no longer configured"


@BOTH_STORES
def test_a_channel_that_cannot_produce_its_message_is_dead_at_once_without_a_send(store):
    # Channels that configuration would refuse, as an older configuration may have left them
    time = FakeTime()
    unsigned = Channel(name="cmdb", format="standard", url=SecretStr(STANDARD_URL))
    connector = (
        "https://contoso.webhook.office.com/webhookb2/0f1e2d3c/IncomingWebhook/a1b2c3d4/e5f6"
    )
    retired = Channel(name="ops", format="teams", url=SecretStr(connector))
    enqueue(store, [job_result(1)], [unsigned, retired], now=time.now())

    summary = deliver(store, [unsigned, retired], never_called, time)

    assert summary.dead == 2
    errors = {row.channel: row.last_error or "" for row in store.dead_letters()}
    assert errors["cmdb"].startswith("cannot build the message: ")
    assert "whsec_" in errors["cmdb"]
    assert errors["ops"].startswith("cannot build the message: ")
    assert "Workflows" in errors["ops"]
    assert "IncomingWebhook/a1b2c3d4" not in errors["ops"]


@BOTH_STORES
def test_dead_letters_are_listed_and_redriven_one_or_all_then_delivered(store, state_url):
    time = FakeTime()
    hook = channel("standard")
    first, second = job_result(1), job_result(2, "FAIL")
    enqueue(store, [first, second], [hook], now=time.now())
    service = Service(answer(410), answer(410), time=time)
    deliver(store, [hook], service, time)
    assert store.notification_counts() == {"DEAD": 2}
    listed = store.dead_letters()
    assert {row.notification_id for row in listed} == {row_id(first, hook), row_id(second, hook)}
    assert all(row.last_error and "410" in row.last_error for row in listed)

    # One by id: it is pending and due now; a run delivers it
    time.advance(60)
    assert store.redrive([row_id(first, hook)], now=time.now()) == 1
    assert store.redrive([row_id(first, hook)], now=time.now()) == 0  # no longer dead
    assert store.redrive(["no-such-row"], now=time.now()) == 0
    redriven = outbox_rows(state_url)[row_id(first, hook)]
    assert (redriven.state, redriven.next_attempt_at, redriven.dead_at) == (
        "PENDING",
        time.now(),
        None,
    )
    assert deliver(store, [hook], service, time).delivered == 1
    assert [row.notification_id for row in store.dead_letters()] == [row_id(second, hook)]

    # All at once
    assert store.redrive(None, now=time.now()) == 1
    assert deliver(store, [hook], service, time).delivered == 1
    assert store.notification_counts() == {"DELIVERED": 2}
    assert store.dead_letters() == []
    delivered = [request.headers["webhook-id"] for request in service.requests[2:]]
    assert delivered == [first.key, second.key]


@pytest.mark.slow
@BOTH_STORES
def test_a_run_stops_sending_when_its_time_budget_is_spent_even_without_rate_limit_waits(
    store, state_url
):
    # Given ten results for a receiver that takes 10 s to answer each, and a 30 s budget
    time = FakeTime()
    hook = channel("standard")
    enqueue(store, [job_result(index) for index in range(10)], [hook], now=time.now())
    config = NotifyConfig(time_budget=30, lease=timedelta(seconds=90), individual_limit=100)

    def slow(request: httpx.Request) -> httpx.Response:
        time.advance(10)
        return httpx.Response(204)

    service = Service(then=slow)

    # When a run delivers
    summary = deliver(store, [hook], service, time, config=config)

    # Then it sends nothing once the budget is spent, so its lease outlives every send
    assert len(service.requests) == 3
    assert summary.budget_exhausted
    assert time.monotonic() <= config.time_budget
    counts = store.notification_counts()
    assert counts == {"DELIVERED": 3, "PENDING": 7}
    rows = outbox_rows(state_url).values()
    assert all(row.attempts == 0 for row in rows if row.state == "PENDING")
    assert all(owner is None for owner in lease_owners(state_url).values())  # handed back
    # The next run takes the rest at once
    deliver(store, [hook], Service(), time, config=config)
    assert store.notification_counts() == {"DELIVERED": 10}


# === 3. bursts and digests =======================================================================


@pytest.mark.slow
@BOTH_STORES
@pytest.mark.parametrize(
    ("count", "messages", "digests"),
    [(1, 1, 0), (3, 3, 0), (4, 1, 1), (200, 1, 1), (201, 2, 1), (400, 2, 2)],
)
def test_up_to_three_results_go_singly_and_more_in_digests_of_the_targets_limit(
    store, state_url, count, messages, digests
):
    time = FakeTime()
    slack = channel("slack")
    enqueue(store, [job_result(index) for index in range(count)], [slack], now=time.now())
    service = Service(time=time)

    summary = deliver(store, [slack], service, time)

    assert len(service.requests) == messages
    assert summary.digests == digests
    rows = outbox_rows(state_url).values()
    assert {row.state for row in rows} == {"DELIVERED"}
    by_message = Counter(row.message_id for row in rows)
    assert len(by_message) == messages
    assert max(by_message.values()) <= SlackTarget.digest_limit
    # A message about one result carries its key; a digest's rows share the digest's id
    for row in rows:
        alone = by_message[row.message_id] == 1
        assert row.message_id == row.result_key if alone else row.message_id != row.result_key


@pytest.mark.slow
@BOTH_STORES
def test_a_burst_of_1000_results_for_slack_is_a_few_paced_digests_and_no_row_is_lost(
    store, state_url
):
    # Given 1,000 results due at once for one Slack channel (1 message a second)
    time = FakeTime()
    slack = channel("slack")
    results = [job_result(index, "FAIL" if index % 50 == 0 else "SUCCESS") for index in range(1000)]
    enqueue(store, results, [slack], now=time.now())
    service = Service(time=time)

    # When one run delivers them
    summary = deliver(store, [slack], service, time)

    # Then a handful of digests went out, a second apart
    assert len(service.requests) <= 10
    assert summary.digests == len(service.requests)
    assert (summary.claimed, summary.delivered) == (1000, 1000)
    gaps = [
        later - earlier for earlier, later in zip(service.times, service.times[1:], strict=False)
    ]
    assert all(gap >= 1.0 - EPSILON for gap in gaps)
    # Every row is delivered with the id of the digest that listed it, and every job is listed
    # in exactly one message
    rows = outbox_rows(state_url)
    assert len(rows) == 1000
    assert {row.state for row in rows.values()} == {"DELIVERED"}
    groups: dict[str | None, set[str]] = {}
    for row in rows.values():
        groups.setdefault(row.message_id, set()).add(row.result_key)
    assert len(groups) == len(service.requests)
    texts = [request.content.decode() for request in service.requests]
    for result in results:
        listed_in = [index for index, text in enumerate(texts) if f"{result.image_name}*" in text]
        assert len(listed_in) == 1, result.image_name
    for message_id, keys in groups.items():
        assert message_id is not None
        assert message_id.startswith("wi_digest_")
        assert len(keys) <= SlackTarget.digest_limit


def verified_events(requests: list[httpx.Request]) -> list[dict[str, Any]]:
    """Each request's event, checked as a receiver would: by the reference library."""
    return [Webhook(WHSEC).verify(request.content, dict(request.headers)) for request in requests]


def ids_by_result(requests: list[httpx.Request]) -> dict[str, set[str]]:
    """For each result key a receiver got, the webhook-ids it came under."""
    seen: dict[str, set[str]] = {}
    for request, event in zip(requests, verified_events(requests), strict=True):
        seen.setdefault(event["data"]["key"], set()).add(request.headers["webhook-id"])
    return seen


@BOTH_STORES
def test_a_standard_result_resent_in_another_run_among_other_results_keeps_its_webhook_id(
    store, state_url
):
    # Given five results due together for a receiver that fails the first message it gets
    time = FakeTime()
    hook = channel("standard")
    first_five = [job_result(index, "FAIL" if index == 2 else "SUCCESS") for index in range(5)]
    enqueue(store, first_five, [hook], now=time.now())
    service = Service(answer(503, text="busy"), time=time)

    # When a run delivers them, then a later run takes the failed one with four new results
    deliver(store, [hook], service, time)
    [failed] = [row for row in outbox_rows(state_url).values() if row.state == "PENDING"]
    time.advance(3)  # past the first backoff (at most 2 s); receivers allow 5 min of skew
    enqueue(store, [job_result(index) for index in range(5, 9)], [hook], now=time.now())
    deliver(store, [hook], service, time)

    # Then every message was one result's signed event, under that result's key: the resend
    # of the failed one, in another run and another company, came under the same id
    assert len(service.requests) == 10
    assert all(
        event["type"].startswith("wholeimage.job.") for event in verified_events(service.requests)
    )
    seen = ids_by_result(service.requests)
    assert seen == {key: {key} for key in seen}
    assert len(seen) == 9
    resent = [r for r in service.requests if r.headers["webhook-id"] == failed.result_key]
    assert len(resent) == 2
    assert resent[0].content == resent[1].content
    assert resent[0].headers["webhook-timestamp"] != resent[1].headers["webhook-timestamp"]
    rows = outbox_rows(state_url).values()
    assert {row.state for row in rows} == {"DELIVERED"}
    assert all(row.message_id == row.result_key for row in rows)
    assert outbox_rows(state_url)[failed.notification_id].attempts == 2


def answered_too_late(request: httpx.Request) -> httpx.Response:
    """The receiver has the message, but its answer comes after our read timeout."""
    raise httpx.ReadTimeout("simulated", request=request)


@BOTH_STORES
def test_a_standard_message_answered_after_our_timeout_is_resent_under_the_same_webhook_id(
    store, state_url
):
    # Given four results for a receiver whose first answer comes after our timeout
    time = FakeTime()
    hook = channel("standard")
    results = [job_result(index) for index in range(4)]
    enqueue(store, results, [hook], now=time.now())
    service = Service(answered_too_late, time=time)

    # When a run delivers them, and a later one retries with another result due as well
    deliver(store, [hook], service, time)
    [late] = [row for row in outbox_rows(state_url).values() if row.state == "PENDING"]
    assert (late.attempts, late.last_error) == (1, "no answer: ReadTimeout")
    time.advance(3)
    enqueue(store, [job_result(4)], [hook], now=time.now())
    deliver(store, [hook], service, time)

    # Then the receiver got that result twice under one webhook-id, and can drop the repeat
    seen = ids_by_result(service.requests)
    assert seen == {result.key: {result.key} for result in [*results, job_result(4)]}
    ids = Counter(request.headers["webhook-id"] for request in service.requests)
    assert ids == Counter([*seen, late.result_key])
    assert outbox_rows(state_url)[late.notification_id].state == "DELIVERED"


class StrictSlack:
    """Slack as it enforces its limit: a message within 1 s of the last accepted one is refused
    with 429 and ``Retry-After: 1``. Each sender (an instance of the function) has its own client."""

    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.last_accepted: float | None = None
        self.log: list[tuple[float, str, int]] = []  # (when, sender, status)
        self.accepted: list[str] = []  # bodies
        self._lock = threading.Lock()

    def client(self, sender: str) -> httpx.Client:
        def respond(request: httpx.Request) -> httpx.Response:
            with self._lock:
                now = self.time.monotonic()
                if self.last_accepted is not None and now - self.last_accepted < 1.0:
                    self.log.append((now, sender, 429))
                    return httpx.Response(429, text="rate_limited", headers={"Retry-After": "1"})
                self.last_accepted = now
                self.log.append((now, sender, 200))
                self.accepted.append(request.content.decode())
                return httpx.Response(200, text="ok")

        return httpx.Client(transport=httpx.MockTransport(respond))


@pytest.mark.slow
@BOTH_STORES
def test_two_instances_sharing_a_slack_webhook_handle_every_429_and_deliver_everything(store):
    # Given 1,000 results and two instances, each with its own limiter, taking 300 rows a run
    time = FakeTime()
    slack = channel("slack")
    results = [job_result(index) for index in range(1000)]
    enqueue(store, results, [slack], now=time.now())
    service = StrictSlack(time)
    config = NotifyConfig(batch_size=300)
    senders = {name: ChannelLimiters(clock=time.monotonic) for name in ("a", "b")}

    # When they take turns, the clock moving on between rounds
    with service.client("a") as client_a, service.client("b") as client_b:
        clients = {"a": client_a, "b": client_b}
        for round_number in range(30):
            for name in ("a", "b"):
                deliver_pending(
                    store=store,
                    channels=[slack],
                    http=clients[name],
                    config=config,
                    limiters=senders[name],
                    now=time.now,
                    monotonic=time.monotonic,
                    sleep=time.sleep,
                    rng=random.Random(round_number),
                    owner=f"{name}-{round_number}",
                )
            if store.notification_counts() == {"DELIVERED": 1000}:
                break
            time.advance(1.0)

    # Then Slack did refuse some messages, and each refusal was honoured by its sender
    refused = [(when, sender) for when, sender, status in service.log if status == 429]
    assert refused
    for when, sender in refused:
        after = [at for at, who, _ in service.log if who == sender and at > when]
        assert not after or min(after) >= when + 1.0 - EPSILON
    # And every row was retried until delivered, each job listed in exactly one accepted message
    assert store.notification_counts() == {"DELIVERED": 1000}
    for result in results:
        assert sum(f"{result.image_name}*" in body for body in service.accepted) == 1


# === 4. concurrency: never sent twice, never lost ================================================

CONCURRENT_ROWS = 200
CONCURRENT_CONFIG = NotifyConfig(individual_limit=10_000, batch_size=20)


def standard_channel() -> Channel:
    return channel("standard", "hook")


def due_results(store: JobStore, count: int) -> list[JobResult]:
    """``count`` pending rows for the standard channel, due (real time) a second ago."""
    results = [job_result(index) for index in range(count)]
    enqueue(store, results, [standard_channel()], now=datetime.now(UTC) - timedelta(seconds=1))
    return results


def deliver_until_empty(
    store: JobStore, http: httpx.Client, owner: str, config: NotifyConfig = CONCURRENT_CONFIG
) -> list[dict[str, Any]]:
    """Runs (real time) until one claims nothing; their summaries."""
    summaries = []
    while True:
        summary = deliver_pending(
            store=store,
            channels=[standard_channel()],
            http=http,
            config=config,
            limiters=ChannelLimiters(),
            owner=owner,
        )
        summaries.append(summary.as_json())
        if summary.claimed == 0:
            return summaries


@pytest.mark.slow
@BOTH_STORES
def test_four_runs_in_threads_deliver_every_row_exactly_once(state_url, store):
    results = due_results(store, CONCURRENT_ROWS)
    received: Counter[str] = Counter()
    lock = threading.Lock()
    threads = 4
    barrier = threading.Barrier(threads)

    def receiver(request: httpx.Request) -> httpx.Response:
        with lock:
            received[request.headers["webhook-id"]] += 1
        time.sleep(0.001)  # a real exchange takes a moment; let the runs interleave
        return httpx.Response(204)

    def one_runner(index: int) -> list[dict[str, Any]]:
        own = open_store(state_url)
        try:
            own.notification_counts()  # connected before the race
            with httpx.Client(transport=httpx.MockTransport(receiver)) as http:
                barrier.wait(timeout=WAIT_SECONDS)
                return deliver_until_empty(own, http, f"thread-{index}")
        finally:
            own.close()

    with ThreadPoolExecutor(threads) as pool:
        outcomes = dict(enumerate(pool.map(one_runner, range(threads))))

    assert received == Counter({result.key: 1 for result in results})
    summaries = [summary for runs in outcomes.values() for summary in runs]
    assert sum(summary["delivered"] for summary in summaries) == CONCURRENT_ROWS
    assert sum(summary["lost_leases"] for summary in summaries) == 0
    assert store.notification_counts() == {"DELIVERED": CONCURRENT_ROWS}
    busy = [index for index, runs in outcomes.items() if any(run["delivered"] for run in runs)]
    assert len(busy) >= 2  # they did overlap


def recording_receiver(record: str) -> Answer:
    """A receiver that appends each message's webhook-id to the file ``record``."""

    def respond(request: httpx.Request) -> httpx.Response:
        with open(record, "a", encoding="utf-8") as sink:
            sink.write(request.headers["webhook-id"] + "\n")
        time.sleep(0.001)
        return httpx.Response(204)

    return respond


def child_deliver(
    state_url: str, owner: str, record: str, barrier: Barrier, results: Queue[dict[str, Any]]
) -> None:
    """Runs in a child process until nothing is left, started together with the others."""
    store = open_store(state_url)
    try:
        store.notification_counts()
        with httpx.Client(transport=httpx.MockTransport(recording_receiver(record))) as http:
            barrier.wait(timeout=WAIT_SECONDS)
            summaries = deliver_until_empty(store, http, owner)
        results.put(
            {
                "owner": owner,
                "delivered": sum(summary["delivered"] for summary in summaries),
                "lost_leases": sum(summary["lost_leases"] for summary in summaries),
            }
        )
    except BaseException as exc:
        results.put({"crashed": repr(exc)})
    finally:
        store.close()


def child_deliver_until_killed(state_url: str, record: str, ready: Event, lease: float) -> None:
    """A run whose receiver records each message, then holds the 5th until this process dies."""
    store = open_store(state_url)
    receive = recording_receiver(record)
    received = 0

    def held_at_the_fifth(request: httpx.Request) -> httpx.Response:
        nonlocal received
        answered = receive(request)  # the service has the message...
        received += 1
        if received == 5:
            ready.set()
            time.sleep(WAIT_SECONDS)  # ...and this process dies before hearing back
        return answered

    with httpx.Client(transport=httpx.MockTransport(held_at_the_fifth)) as http:
        deliver_pending(
            store=store,
            channels=[standard_channel()],
            http=http,
            config=replace(CONCURRENT_CONFIG, batch_size=5000, lease=timedelta(seconds=lease)),
            limiters=ChannelLimiters(),
            owner="doomed",
        )


def recorded_ids(path: Path) -> list[str]:
    return path.read_text("utf-8").split() if path.exists() else []


@pytest.mark.slow
@BOTH_STORES
def test_three_runs_in_processes_deliver_every_row_exactly_once(spawn, state_url, store, tmp_path):
    results = due_results(store, CONCURRENT_ROWS)
    processes = 3
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    outcomes: Queue[dict[str, Any]] = context.Queue()
    records = [tmp_path / f"received-{index}.txt" for index in range(processes)]
    children = [
        spawn(child_deliver, state_url, f"process-{index}", str(record), barrier, outcomes)
        for index, record in enumerate(records)
    ]

    summaries = [outcomes.get(timeout=WAIT_SECONDS) for _ in children]
    for child in children:
        child.join(timeout=WAIT_SECONDS)
        assert child.exitcode == 0
    outcomes.close()
    outcomes.join_thread()

    assert not [summary for summary in summaries if "crashed" in summary], summaries
    received = Counter(key for record in records for key in recorded_ids(record))
    assert received == Counter({result.key: 1 for result in results})
    assert sum(summary["delivered"] for summary in summaries) == CONCURRENT_ROWS
    assert sum(summary["lost_leases"] for summary in summaries) == 0
    assert store.notification_counts() == {"DELIVERED": CONCURRENT_ROWS}


@pytest.mark.slow
@BOTH_STORES
def test_a_run_killed_mid_delivery_loses_nothing_and_repeats_at_most_the_message_in_flight(
    spawn, state_url, store, tmp_path
):
    # Given 12 pending rows and a run in a child process, killed while its 5th message is
    # in flight (the receiver has it; the run never hears back)
    count, lease = 12, 300.0
    due_results(store, count)
    record = tmp_path / "received-by-the-killed-run.txt"
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = spawn(child_deliver_until_killed, state_url, str(record), ready, lease)
    assert ready.wait(timeout=WAIT_SECONDS), "the child never reached its 5th message"
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=WAIT_SECONDS)
    assert child.exitcode == -signal.SIGKILL

    # Then what it settled stays delivered; the rest, the message in flight included, is pending
    sent_by_the_killed_run = recorded_ids(record)
    assert len(sent_by_the_killed_run) == 5
    *settled, in_flight = sent_by_the_killed_run
    rows = {row.result_key: row for row in outbox_rows(state_url).values()}
    assert len(rows) == count
    assert {key for key, row in rows.items() if row.state == "DELIVERED"} == set(settled)
    assert all(rows[key].message_id == key for key in settled)
    pending = {key for key, row in rows.items() if row.state == "PENDING"}
    assert len(pending) == count - 4
    assert in_flight in pending
    assert {lease_owners(state_url)[rows[key].notification_id] for key in pending} == {"doomed"}

    # A run before the dead run's leases expire sends nothing
    sent_later: list[str] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        sent_later.append(request.headers["webhook-id"])
        return httpx.Response(204)

    with httpx.Client(transport=httpx.MockTransport(receiver)) as http:
        early = deliver_pending(
            store=store, channels=[standard_channel()], http=http, config=CONCURRENT_CONFIG
        )
        assert (early.claimed, sent_later) == (0, [])

        # A run after they expire delivers the rest
        after_expiry = datetime.now(UTC) + timedelta(seconds=lease + 1)
        late = deliver_pending(
            store=store,
            channels=[standard_channel()],
            http=http,
            config=replace(CONCURRENT_CONFIG, batch_size=5000),
            now=lambda: after_expiry,
        )
    assert (late.claimed, late.delivered) == (count - 4, count - 4)
    assert store.notification_counts() == {"DELIVERED": count}

    # Only the message in flight when the process died went out twice: the documented window
    # (one HTTP exchange between the service accepting a message and its row being settled).
    sent = Counter(sent_by_the_killed_run + sent_later)
    assert set(sent) == set(rows)
    duplicates = [key for key, times in sent.items() if times > 1]
    assert len(duplicates) <= 1
    assert set(duplicates) <= {in_flight}


# === 5. local sinks ==============================================================================


@pytest.mark.slow
@BOTH_STORES
def test_a_file_sink_appends_one_json_line_per_message_in_the_channels_format(store, tmp_path):
    time = FakeTime()
    sink = tmp_path / "sinks" / "messages.jsonl"
    slack_file = channel("slack", "slack-file", url=f"file:{sink}")
    hook_file = channel("standard", "hook-file", url=f"file://{sink}")
    results = [job_result(1), job_result(2, "FAIL")]
    enqueue(store, results, [slack_file, hook_file], now=time.now())

    summary = deliver(store, [slack_file, hook_file], never_called, time)

    assert summary.delivered == 4
    entries = [json.loads(line) for line in sink.read_text("utf-8").splitlines()]
    assert len(entries) == 4
    for to in (slack_file, hook_file):
        written = [entry for entry in entries if entry["channel"] == to.name]
        assert {entry["format"] for entry in written} == {to.format}
        expected = [
            json.loads(target_for(to.format).render([result], to, time.now()).body)
            for result in results
        ]
        assert sorted(json.dumps(entry["message"], sort_keys=True) for entry in written) == sorted(
            json.dumps(message, sort_keys=True) for message in expected
        )
    assert store.notification_counts() == {"DELIVERED": 4}

    # Appended, never overwritten
    enqueue(store, [job_result(3)], [slack_file], now=time.now())
    deliver(store, [slack_file, hook_file], never_called, time)
    assert len(sink.read_text("utf-8").splitlines()) == 5


@pytest.mark.slow
@BOTH_STORES
def test_a_console_sink_prints_the_message_in_the_channels_format(store, capsys):
    time = FakeTime()
    console = channel("discord", "screen", url="console:")
    result = job_result(4, "FAIL")
    enqueue(store, [result], [console], now=time.now())

    summary = deliver(store, [console], never_called, time)

    assert summary.delivered == 1
    printed = json.loads(capsys.readouterr().out)
    assert (printed["channel"], printed["format"]) == ("screen", "discord")
    assert printed["message"] == json.loads(
        target_for("discord").render([result], console, time.now()).body
    )


# === 6. channels from settings ===================================================================


def channels_from(monkeypatch: pytest.MonkeyPatch, **variables: str) -> list[Channel]:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return load_settings().notification_channels()


def test_wholeimage_webhook_url_makes_the_default_channel_with_its_format_secret_filter_and_keyword(
    monkeypatch,
):
    [default] = channels_from(
        monkeypatch,
        WHOLEIMAGE_WEBHOOK_URL=DINGTALK_URL,
        WHOLEIMAGE_WEBHOOK_SECRET=DINGTALK_SECRET,
        WHOLEIMAGE_WEBHOOK_ON="FAIL, TIMED_OUT, UNCONFIRMED",
        WHOLEIMAGE_WEBHOOK_KEYWORD="[IMS]",
    )
    assert (default.name, default.format, default.keyword) == ("default", "dingtalk", "[IMS]")
    assert default.url.get_secret_value() == DINGTALK_URL
    assert default.secret is not None
    assert default.secret.get_secret_value() == DINGTALK_SECRET
    assert default.on == FAILURES
    assert DINGTALK_TOKEN not in repr(default)


@pytest.mark.parametrize(
    ("on", "verdicts_heard"),
    [
        ("all", {"SUCCESS", "FAIL", "TIMED_OUT", "UNCONFIRMED"}),
        ("failures", {"FAIL", "TIMED_OUT", "UNCONFIRMED"}),
        ("SUCCESS", {"SUCCESS"}),
    ],
)
def test_the_default_channels_filter_is_all_failures_or_a_list(monkeypatch, on, verdicts_heard):
    [default] = channels_from(
        monkeypatch, WHOLEIMAGE_WEBHOOK_URL=SLACK_URL, WHOLEIMAGE_WEBHOOK_ON=on
    )
    assert default.on == verdicts_heard


def test_an_unknown_filter_is_refused_naming_the_variable(monkeypatch):
    with pytest.raises(ConfigurationError, match="WHOLEIMAGE_WEBHOOK_ON"):
        channels_from(monkeypatch, WHOLEIMAGE_WEBHOOK_URL=SLACK_URL, WHOLEIMAGE_WEBHOOK_ON="DONE")


def test_an_explicit_format_wins_over_the_guess(monkeypatch):
    [default] = channels_from(
        monkeypatch,
        WHOLEIMAGE_WEBHOOK_URL="https://chat.example.com/hooks/xj8h3b6mpfbo7q5n3k1w9e4r2c",
        WHOLEIMAGE_WEBHOOK_FORMAT="mattermost",
    )
    assert default.format == "mattermost"


def test_wholeimage_channels_adds_named_channels_after_the_default_one(monkeypatch):
    named = [
        {"name": "ops", "url": DISCORD_URL},
        {
            "name": "oncall",
            "url": FEISHU_URL,
            "secret": FEISHU_SECRET,
            "on": "failures",
            "keyword": "[IMS]",
        },
        {"name": "cmdb", "url": STANDARD_URL, "secret": WHSEC, "on": ["SUCCESS"]},
        {
            "name": "teams-ops",
            "url": "https://prod-12.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?sig=s1g",
        },
        {"name": "screen", "format": "slack", "url": "console:"},
    ]
    channels = channels_from(
        monkeypatch, WHOLEIMAGE_WEBHOOK_URL=SLACK_URL, WHOLEIMAGE_CHANNELS=json.dumps(named)
    )
    assert [(c.name, c.format) for c in channels] == [
        ("default", "slack"),
        ("ops", "discord"),
        ("oncall", "feishu"),
        ("cmdb", "standard"),
        ("teams-ops", "teams"),
        ("screen", "slack"),
    ]
    by_name = {c.name: c for c in channels}
    assert by_name["oncall"].on == FAILURES
    assert by_name["oncall"].keyword == "[IMS]"
    assert by_name["cmdb"].on == frozenset({"SUCCESS"})
    assert by_name["ops"].on == frozenset(verdicts.VERDICTS)


@pytest.mark.parametrize(
    ("url", "format"),
    [
        (SLACK_URL, "slack"),
        (DISCORD_URL, "discord"),
        ("https://discordapp.com/api/webhooks/1/t0ken", "discord"),
        ("https://chat.googleapis.com/v1/spaces/AAA/messages?key=k&token=t", "googlechat"),
        (FEISHU_URL, "feishu"),
        ("https://open.larksuite.com/open-apis/bot/v2/hook/t0ken", "feishu"),
        (DINGTALK_URL, "dingtalk"),
        ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6", "wecom"),
        ("https://prod-01.westus.logic.azure.com/workflows/x", "teams"),
        ("https://env.12.environment.api.powerplatform.com/powerautomate/x", "teams"),
        (STANDARD_URL, "standard"),
    ],
)
def test_the_format_is_guessed_from_the_url_host(monkeypatch, url, format):
    variables = {"WHOLEIMAGE_WEBHOOK_URL": url}
    if format == "standard":
        variables["WHOLEIMAGE_WEBHOOK_SECRET"] = WHSEC
    [default] = channels_from(monkeypatch, **variables)
    assert default.format == format


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",
        "http://127.0.0.1/hook",
        "http://[::1]:9000/hook",
        "console:",
        "file:var/out.jsonl",
    ],
)
def test_plain_http_is_accepted_only_to_this_machine_and_local_sinks_always(monkeypatch, url):
    [default] = channels_from(
        monkeypatch, WHOLEIMAGE_WEBHOOK_URL=url, WHOLEIMAGE_WEBHOOK_FORMAT="slack"
    )
    assert default.url.get_secret_value() == url


@pytest.mark.parametrize(
    "url",
    ["http://hooks.slack.com/services/T/B/x", "ftp://files.example/hook", "hooks.slack.com/x"],
)
def test_a_url_that_is_not_https_is_refused(monkeypatch, url):
    with pytest.raises(ConfigurationError, match="needs an https:// URL") as raised:
        channels_from(monkeypatch, WHOLEIMAGE_WEBHOOK_URL=url, WHOLEIMAGE_WEBHOOK_FORMAT="slack")
    assert "WHOLEIMAGE_WEBHOOK_URL" in raised.value.message
    assert url not in raised.value.message


@pytest.mark.parametrize(
    "url",
    [
        "https://contoso.webhook.office.com/webhookb2/1234@5678/IncomingWebhook/abc/def",
        "https://outlook.webhook.office.com/webhookb2/x",
        "https://outlook.office.com/webhook/1234@5678/IncomingWebhook/abc/def",
        "https://outlook.office365.com/webhook/1234@5678/IncomingWebhook/abc/def",
    ],
)
def test_an_office_365_connector_url_is_refused_with_a_migration_message(monkeypatch, url):
    named = [{"name": "ops", "format": "teams", "url": url}]
    with pytest.raises(ConfigurationError) as raised:
        channels_from(monkeypatch, WHOLEIMAGE_CHANNELS=json.dumps(named))
    message = raised.value.message
    assert "Office 365 connector" in message
    assert "Workflows" in message
    assert url not in message


@pytest.mark.parametrize("secret", [None, "not-a-whsec-key"])
def test_a_standard_channel_without_a_whsec_secret_is_refused(monkeypatch, secret):
    named: dict[str, Any] = {"name": "cmdb", "url": STANDARD_URL}
    if secret is not None:
        named["secret"] = secret
    with pytest.raises(ConfigurationError, match="whsec_") as raised:
        channels_from(monkeypatch, WHOLEIMAGE_CHANNELS=json.dumps([named]))
    assert "'cmdb'" in raised.value.message


@pytest.mark.parametrize(
    "variables",
    [
        {
            "WHOLEIMAGE_CHANNELS": json.dumps(
                [{"name": "ops", "url": SLACK_URL}, {"name": "ops", "url": DISCORD_URL}]
            )
        },
        {
            "WHOLEIMAGE_WEBHOOK_URL": SLACK_URL,
            "WHOLEIMAGE_CHANNELS": json.dumps([{"name": "default", "url": DISCORD_URL}]),
        },
    ],
    ids=["two-named-alike", "named-default-beside-the-webhook-url"],
)
def test_duplicate_channel_names_are_refused(monkeypatch, variables):
    with pytest.raises(ConfigurationError, match="unique"):
        channels_from(monkeypatch, **variables)


@pytest.mark.parametrize(
    "channels",
    [
        '[{"name": "ops", "url": "https://hooks.slack.com/services/T/B/' + SLACK_TOKEN + '"',
        json.dumps([{"name": "Ops Team", "url": SLACK_URL}]),
        json.dumps([{"name": "ops", "url": SLACK_URL, "colour": "red"}]),
        json.dumps([{"name": "ops", "url": SLACK_URL, "format": "msteams"}]),
    ],
    ids=["not-json", "bad-name", "unknown-key", "unknown-format"],
)
def test_a_malformed_channel_list_is_a_configuration_error_naming_the_variable_not_the_url(
    monkeypatch, channels
):
    monkeypatch.setenv("WHOLEIMAGE_CHANNELS", channels)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "WHOLEIMAGE_CHANNELS" in raised.value.message
    assert SLACK_TOKEN not in raised.value.message
    assert raised.value.__cause__ is None


def test_every_webhook_url_and_secret_is_registered_for_redaction(monkeypatch):
    named = [
        {"name": "oncall", "url": FEISHU_URL, "secret": FEISHU_SECRET},
        {"name": "cmdb", "url": STANDARD_URL, "secret": WHSEC},
        {"name": "ops", "url": DISCORD_URL},
    ]
    monkeypatch.setenv("WHOLEIMAGE_WEBHOOK_URL", DINGTALK_URL)
    monkeypatch.setenv("WHOLEIMAGE_WEBHOOK_SECRET", DINGTALK_SECRET)
    monkeypatch.setenv("WHOLEIMAGE_CHANNELS", json.dumps(named))
    settings = load_settings()
    secrets = settings.secret_values()
    for value in (
        DINGTALK_URL,
        DINGTALK_SECRET,
        FEISHU_URL,
        FEISHU_SECRET,
        STANDARD_URL,
        WHSEC,
        DISCORD_URL,
    ):
        assert value in secrets
    shown = repr(settings) + str(settings.model_dump())
    for token in (
        DINGTALK_TOKEN,
        FEISHU_TOKEN,
        FEISHU_SECRET,
        STANDARD_TOKEN,
        WHSEC,
        DISCORD_TOKEN,
    ):
        assert token not in shown


# === what an answered POST is logged as ===========================================================


@pytest.mark.parametrize(
    ("status", "outcome", "level", "message", "state"),
    [
        (200, "delivered", logging.INFO, "notification delivered", "DELIVERED"),
        (
            503,
            "retry",
            logging.WARNING,
            "notification not delivered; retried later unless too old",
            "PENDING",
        ),
        (
            410,
            "permanent",
            logging.ERROR,
            "notification refused for good; it goes to the dead letters",
            "DEAD",
        ),
    ],
    ids=["delivered", "retry", "permanent"],
)
@BOTH_STORES
def test_each_outcome_of_a_post_is_logged_in_its_own_words(
    store, state_url, caplog, status, outcome, level, message, state
):
    # A permanent refusal was logged as "notification sent" (issue 10).
    time = FakeTime()
    hook = channel("standard")
    enqueue(store, [job_result(1, "FAIL")], [hook], now=time.now())

    with caplog.at_level(logging.INFO, logger="wholeimage.notify"):
        deliver(store, [hook], Service(then=answer(status)), time)

    [logged] = [
        record
        for record in caplog.records
        if record.name == "wholeimage.notify" and record.getMessage().startswith("notification")
    ]
    assert (logged.levelno, logged.getMessage()) == (level, message)
    assert logged.__dict__["outcome"] == outcome
    assert [row.state for row in outbox_rows(state_url).values()] == [state]
