"""Exactly once, whatever goes wrong between wholeimage and IMS (issue 9, "Done when" item 1).

The IMS emulator runs in this process, with a fault on the create POST; the caller's request
goes through the ``create`` function as functions-framework serves it
(``create_app(...).test_client()``), on SQLite and on PostgreSQL. For each fault:

- the first answer is 202 (``SUBMIT_UNCERTAIN``, or ``SUBMITTED`` when a certain refusal was
  retried), or the 4xx / 503 of a certain refusal, and never another 5xx;
- five repeats with the same ``Idempotency-Key`` make no further IMS create call once a 202
  was given, and IMS holds at most one job (and image) for the request;
- ``check`` ticks on a simulated clock (the emulator's clock and the ticks' ``now`` both run
  ahead of real time) end the job with the emulator's verdict: ``SUCCESS`` with the image IMS
  made, ``FAIL`` when the emulator's job failed, or ``UNCONFIRMED`` when IMS never took the
  request (a 5xx, drop or hang before the route ran) and the reconcile window closed;
- each channel (Slack and Standard Webhooks formats, written to file sinks) gets exactly one
  message about it;
- its CBR backup is refused (409 ``backup_in_use``) to a new request while the job is
  unresolved or outstanding, and accepted once it ended ``FAIL`` or ``UNCONFIRMED``; after
  ``SUCCESS`` it stays refused.

Then a seeded mixed run: 100 requests, about 30 % of their create answers faulted with the
same mix, each repeated three times, then ticks until nothing is unresolved or outstanding.
``-s`` prints its figures.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from flask.testing import FlaskClient
from functions_framework import create_app
from werkzeug.test import TestResponse

from ims_emulator import EmulatedJob, EmulatorConfig, Fault, ImsEmulator
from tests.fakes import make_settings
from tests.functional.test_openapi import close
from wholeimage.bootstrap import Dependencies, open_store, set_dependencies
from wholeimage.check import CheckSummary, run_check_sync
from wholeimage.ims.client import HttpImsClient
from wholeimage.models import ENDED, MARKER_TAG_KEY, Job, JobStatus
from wholeimage.notify import (
    ChannelLimiters,
    NotifyConfig,
    NotifySummary,
    deliver_pending,
    outbox_for,
)
from wholeimage.reconcile import IMAGE_KILLED_CODE, UNCONFIRMED_CODE
from wholeimage.service.outbox import channels, webhook_http
from wholeimage.service.tick import check_config, marker_lookup, poller_for
from wholeimage.settings import Settings
from wholeimage.statuses import OUTSTANDING, UNRESOLVED
from wholeimage.store.records import JobStore

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
AK, SK = EmulatorConfig().ak, EmulatorConfig().sk
# Short, so a hanging IMS costs a test about a second; the emulator answers in milliseconds.
IMS_TIMEOUT = 1.0
HANG_SECONDS = 3.0
# Two attempts: a refusal that lasts "throughout" needs two faults, and costs one wait.
MAX_ATTEMPTS = 2
# The defaults: the first marker lookup 10 minutes after the doubt, "no image" final after 3 h.
RECONCILE_AFTER = 600.0
RECONCILE_WINDOW = 3 * 3600.0
# Emulator jobs of the one-fault tests never end on their own: the test ends them.
LONG_JOB_SECONDS = 10 * 3600.0
# Far beyond any time the tests move the clock: AK/SK signatures carry real time.
ANY_SKEW = 1e10
CMDB_SECRET = "whsec_" + base64.b64encode(b"exactly-once-faults-secret-32by").decode()
Verdict = Literal["SUCCESS", "FAIL"]


# === the world: a simulated clock, the emulator, the create function, two chat channels =======


class SimClock:
    """Real time plus an offset the test moves forward: the emulator's clock, and ``now`` of the
    ticks and deliveries, so IMS jobs, reconcile windows and rate limits pass without sleeping.
    The create function records its jobs in real time, which lies behind the clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self(), UTC)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass(frozen=True)
class Sinks:
    """The two channels' file sinks: ``ops`` in Slack's format, ``cmdb`` as Standard Webhooks."""

    ops: Path
    cmdb: Path

    def channel_settings(self) -> list[dict[str, str]]:
        return [
            {"name": "ops", "format": "slack", "url": f"file:{self.ops}"},
            {
                "name": "cmdb",
                "format": "standard",
                "url": f"file:{self.cmdb}",
                "secret": CMDB_SECRET,
            },
        ]

    def messages(self, channel: Literal["ops", "cmdb"]) -> list[dict[str, Any]]:
        path = self.ops if channel == "ops" else self.cmdb
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
        assert all(line["channel"] == channel for line in lines)
        return [line["message"] for line in lines]

    def cmdb_results(self) -> Counter[tuple[str, str]]:
        """(request id, verdict) of every result in every cmdb event, single or digest."""
        found: Counter[tuple[str, str]] = Counter()
        for event in self.messages("cmdb"):
            data = event["data"]
            for result in data.get("results", [data]):
                found[(result["request_id"], result["status"])] += 1
        return found

    def ops_messages_naming(self, image_name: str) -> int:
        """How many ops (Slack) messages mention the image name (a digest lists every job)."""
        return sum(1 for message in self.messages("ops") if image_name in json.dumps(message))


def wholeimage_settings(ims_url: str, state_url: str, sinks: Sinks, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ims_endpoint": ims_url,
        "access_key": AK,
        "secret_key": SK,
        "state_url": state_url,
        "ims_timeout": IMS_TIMEOUT,
        "ims_max_attempts": MAX_ATTEMPTS,
        "ims_retry_budget": 5,
        "poll_min_interval": 0,
        "poll_max_interval": 0,
        # Every outstanding job is polled at every tick; 20/s of real time would dominate the run.
        "ims_rate_limit": 0,
        "reconcile_after": RECONCILE_AFTER,
        "reconcile_window": RECONCILE_WINDOW,
        "channels": sinks.channel_settings(),
    }
    values.update(overrides)
    return make_settings(**values)


def tick_at(deps: Dependencies, clock: SimClock) -> tuple[CheckSummary, NotifySummary]:
    """One ``check`` tick as ``wholeimage.service.tick.tick`` runs it (reconcile, poll, outbox,
    inline delivery), at the simulated ``now``; rate limits wait in simulated time."""
    configured = channels(deps)
    summary = run_check_sync(
        store=deps.store,
        poller=poller_for(deps),
        config=check_config(deps.settings),
        now=clock.now,
        outbox=outbox_for(configured),
        lookup=marker_lookup(deps),
    )
    delivered = deliver_pending(
        store=deps.store,
        channels=configured,
        http=webhook_http(deps),
        config=NotifyConfig(),
        now=clock.now,
        monotonic=clock,
        sleep=clock.advance,
        limiters=ChannelLimiters(clock=clock),
    )
    return summary, delivered


def marker_images(ims: ImsEmulator, request_id: str) -> list[dict[str, Any]]:
    """The emulator's images carrying this request's marker tag."""
    tag = f"{MARKER_TAG_KEY}={request_id}"
    return [image for image in ims.images() if tag in image["tags"]]


def markers_in_ims(ims: ImsEmulator) -> Counter[str]:
    """Request ids named by the marker tags of the emulator's images, with their counts."""
    prefix = f"{MARKER_TAG_KEY}="
    return Counter(
        tag.removeprefix(prefix)
        for image in ims.images()
        for tag in image["tags"]
        if tag.startswith(prefix)
    )


def emulated_job(ims: ImsEmulator, request_id: str) -> EmulatedJob | None:
    """The emulator's job for this request (found through its image), if IMS accepted it."""
    images = marker_images(ims, request_id)
    assert len(images) <= 1, f"IMS made {len(images)} images for request {request_id}"
    if not images:
        return None
    [job] = [job for job in ims.jobs.values() if job.image_id == images[0]["id"]]
    return job


def all_jobs(store: JobStore) -> list[Job]:
    return store.list_jobs(statuses=None, since=None, limit=10_000)


def closed_port_url() -> str:
    """A URL nothing listens on: connection refused, so nothing is ever sent."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class World:
    ims: ImsEmulator
    clock: SimClock
    deps: Dependencies
    sinks: Sinks
    client: FlaskClient
    state_url: str
    extra: list[Dependencies] = field(default_factory=list)

    def post(self, body: dict[str, Any], key: str) -> TestResponse:
        return self.client.post(
            "/",
            data=json.dumps(body),
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )

    def unreachable_ims(self) -> Dependencies:
        """Dependencies over the same store whose IMS endpoint refuses connections."""
        deps = Dependencies(
            settings=wholeimage_settings(closed_port_url(), self.state_url, self.sinks),
            store=self.deps.store,
        )
        self.extra.append(deps)
        return deps

    def tick(self) -> tuple[CheckSummary, NotifySummary]:
        return tick_at(self.deps, self.clock)


@pytest.fixture
def world(store_kind: str, state_url: str, tmp_path: Path) -> Iterator[World]:
    clock = SimClock()
    config = EmulatorConfig(job_seconds=LONG_JOB_SECONDS, max_clock_skew_seconds=ANY_SKEW)
    sinks = Sinks(ops=tmp_path / "ops.jsonl", cmdb=tmp_path / "cmdb.jsonl")
    with ImsEmulator(config, clock=clock) as ims:
        deps = Dependencies(
            settings=wholeimage_settings(ims.url, state_url, sinks), store=open_store(state_url)
        )
        set_dependencies(deps)
        built = World(
            ims=ims,
            clock=clock,
            deps=deps,
            sinks=sinks,
            client=create_app("create", MAIN).test_client(),
            state_url=state_url,
        )
        # Only warnings and errors (loading main.py set INFO), so the figures of -s stand out.
        logger = logging.getLogger("wholeimage")
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            yield built
        finally:
            logger.setLevel(level)
            set_dependencies(None)
            for other in built.extra:  # their store is the world's, closed just below
                if isinstance(other.ims, HttpImsClient):
                    other.ims._http.close()
            close(deps)


def cbr_body(name: str) -> dict[str, Any]:
    return {"name": name, "backup_id": str(uuid.uuid4()), "whole_image_type": "CBR"}


def ecs_body(name: str) -> dict[str, Any]:
    return {"name": name, "instance_id": str(uuid.uuid4())}


def is_documented_server_error(response: TestResponse) -> bool:
    """The one 5xx a caller may see: 503 ``upstream_unavailable`` (throttled or unreachable)."""
    error = (response.get_json(silent=True) or {}).get("error", {})
    return (
        response.status_code == 503
        and error.get("code") == "upstream_unavailable"
        and int(response.headers["Retry-After"]) >= 1
    )


# === the faults ================================================================================


@dataclass(frozen=True)
class Case:
    """One fault on the create POST and what it must lead to.

    ``first``: the first answer's HTTP status and, for a 202, the job's status. ``accepted``:
    IMS made the job during the first request (the fault came after the route, or a certain
    refusal was retried within the call). ``verdict``: how the test ends the emulator's job.
    """

    id: str
    faults: tuple[Fault, ...]
    first: tuple[int, str | None]
    accepted: bool
    verdict: Verdict = "SUCCESS"
    unreachable: bool = False

    @property
    def waits(self) -> bool:
        """Whether it takes real time: a client timeout, or the waits between retries."""
        return self.unreachable or any(
            fault.hang or (fault.status in (429, 503) and not fault.after) for fault in self.faults
        )

    @property
    def uncertain(self) -> bool:
        return self.first == (202, "SUBMIT_UNCERTAIN")

    @property
    def expected_end(self) -> JobStatus:
        if self.uncertain and not self.accepted:
            return JobStatus.UNCONFIRMED
        return JobStatus(self.verdict)


UNCERTAIN = (202, "SUBMIT_UNCERTAIN")
SUBMITTED = (202, "SUBMITTED")
HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"
CASES = [
    # IMS accepted the request (the route ran), then its answer was lost or garbled.
    Case("after-500", (Fault(after=True, status=500),), UNCERTAIN, True, "SUCCESS"),
    Case("after-502", (Fault(after=True, status=502),), UNCERTAIN, True, "FAIL"),
    Case("after-503", (Fault(after=True, status=503),), UNCERTAIN, True, "SUCCESS"),
    Case("after-504", (Fault(after=True, status=504),), UNCERTAIN, True, "FAIL"),
    Case(
        "after-200-html",
        (Fault(after=True, status=200, body=HTML, headers={"Content-Type": "text/html"}),),
        UNCERTAIN,
        True,
        "SUCCESS",
    ),
    Case(
        "after-200-truncated-json",
        (Fault(after=True, status=200, body='{"job_id": "4010a32b5f9098'),),
        UNCERTAIN,
        True,
        "FAIL",
    ),
    Case("after-200-empty-object", (Fault(after=True, status=200, body={}),), UNCERTAIN, True),
    Case(
        "after-200-job-id-with-space",
        (Fault(after=True, status=200, body={"job_id": "4010a32b 5f909853"}),),
        UNCERTAIN,
        True,
        "FAIL",
    ),
    Case("after-drop", (Fault(after=True, drop=True),), UNCERTAIN, True, "SUCCESS"),
    Case(
        "after-hang", (Fault(after=True, hang=True, delay=HANG_SECONDS),), UNCERTAIN, True, "FAIL"
    ),
    # A doubt IMS did not act on (the fault came before the route): no image, UNCONFIRMED.
    Case("before-500", (Fault(status=500),), UNCERTAIN, False),
    Case("before-drop", (Fault(drop=True),), UNCERTAIN, False),
    Case("before-hang", (Fault(hang=True, delay=HANG_SECONDS),), UNCERTAIN, False),
    # Certain refusals before the route: retried within the call, or answered 4xx/503.
    Case("429-once", (Fault.throttled(retry_after=1),), SUBMITTED, True, "SUCCESS"),
    Case(
        "429-throughout",
        (Fault.throttled(retry_after=1),) * MAX_ATTEMPTS,
        (503, None),
        False,
        "FAIL",
    ),
    Case(
        "503-IMG.0060-once",
        (Fault.ims_error("IMG.0060", "flow control", status=503),),
        SUBMITTED,
        True,
        "FAIL",
    ),
    Case(
        "503-IMG.0060-throughout",
        (Fault.ims_error("IMG.0060", "flow control", status=503),) * MAX_ATTEMPTS,
        (503, None),
        False,
        "SUCCESS",
    ),
    Case(
        "400-IMG.0020",
        (Fault.ims_error("IMG.0020", "The backup does not exist."),),
        (400, None),
        False,
        "SUCCESS",
    ),
    Case("connection-refused", (), (503, None), False, "FAIL", unreachable=True),
]


# === one fault at a time =======================================================================


@dataclass
class Caller:
    """What the caller saw: every answer, and IMS's create calls when the first 202 came."""

    answers: list[TestResponse]
    creates_at_202: int


def caller_sends_and_repeats(world: World, case: Case, body: dict[str, Any], key: str) -> Caller:
    """The request with ``case``'s fault on its create call, then five repeats with its key."""
    ims = world.ims
    ims.inject("create", *case.faults)
    if case.unreachable:
        set_dependencies(world.unreachable_ims())
    first = world.post(body, key)
    assert first.status_code == case.first[0], first.get_data(as_text=True)
    if case.first[1] is not None:
        assert first.get_json()["status"] == case.first[1]
    assert ims.pending_faults()["create"] == 0
    answers = [first] + [world.post(body, key) for _ in range(5)]
    assert [a.status_code for a in answers if a.status_code >= 500] == [
        a.status_code for a in answers if is_documented_server_error(a)
    ]
    if case.unreachable:
        # Nothing reached IMS and nothing was recorded: every repeat is refused the same way,
        # until IMS can be reached again; then the same key goes through, once.
        assert {a.status_code for a in answers} == {503}
        assert ims.calls.get("create", 0) == 0
        assert all_jobs(world.deps.store) == []
        set_dependencies(world.deps)
        answers = [world.post(body, key) for _ in range(5)]
    if answers[0].status_code != 202:
        # A certain refusal keeps nothing: the first repeat is a new submission, then replays.
        assert answers[0].status_code in (400, 503)
        answers = answers[1:]
    assert answers[0].status_code == 202
    if case.first[0] != 202:
        assert answers[0].get_json()["status"] == "SUBMITTED"
    replays = answers[1:]
    assert {a.status_code for a in replays} == {202}
    assert all(a.headers.get("Idempotent-Replayed") == "true" for a in replays)
    # Once a 202 was given no repeat reaches IMS's create call again: at most the one that was
    # answered 202, plus the refused ones before it.
    refused_calls = {"429-throughout": 2, "503-IMG.0060-throughout": 2, "400-IMG.0020": 1}
    retried_calls = {"429-once": 1, "503-IMG.0060-once": 1}
    expected_calls = 1 + refused_calls.get(case.id, 0) + retried_calls.get(case.id, 0)
    assert ims.calls.get("create", 0) == expected_calls
    return Caller(answers=answers, creates_at_202=expected_calls)


def assert_the_verdict(ended: Job, case: Case, emulated: EmulatedJob | None) -> None:
    assert ended.status is case.expected_end
    if ended.status is JobStatus.SUCCESS:
        assert emulated is not None
        assert ended.image_id == emulated.image_id
    elif ended.status is JobStatus.FAIL:
        # Found by its marker (the image was killed), or polled by its IMS job id.
        assert ended.error_code == (IMAGE_KILLED_CODE if case.uncertain else "IMG.0014")
    else:
        assert ended.error_code == UNCONFIRMED_CODE


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.waits else [])
        for case in CASES
    ],
)
def test_a_faulted_create_ends_once_with_imss_verdict_and_one_message_per_channel(
    world: World, case: Case
):
    ims, store, clock, sinks = world.ims, world.deps.store, world.clock, world.sinks
    body, key = cbr_body(f"faulted-{case.id}"), "caller-key-1"
    second_try = {**body, "name": "second-try"}

    caller = caller_sends_and_repeats(world, case, body, key)

    [job] = all_jobs(store)
    request_id = job.request_id
    assert {a.get_json()["request_id"] for a in caller.answers} == {request_id}
    emulated = emulated_job(ims, request_id)
    assert len(ims.jobs) == (1 if emulated is not None else 0)
    assert (emulated is not None) == (case.expected_end is not JobStatus.UNCONFIRMED)
    assert job.status is (JobStatus.SUBMIT_UNCERTAIN if case.uncertain else JobStatus.SUBMITTED)
    # While the job is unresolved or outstanding its backup makes no second image.
    assert world.post(second_try, "caller-key-2").status_code == 409

    clock.advance(RECONCILE_AFTER + 1)
    world.tick()
    between = store.get(request_id)
    assert between is not None
    if case.uncertain:
        # Looked up by its marker: IMS lists the image (queued), or nothing yet.
        assert between.status is JobStatus.SUBMIT_UNCERTAIN
        assert between.image_id == (emulated.image_id if emulated is not None else None)
    else:
        assert between.status is JobStatus.INIT
    assert world.post(second_try, "caller-key-2").status_code == 409
    assert sinks.messages("ops") == sinks.messages("cmdb") == []

    if emulated is not None:
        ims.finish_job(emulated.job_id, case.verdict)
    else:
        clock.advance(RECONCILE_WINDOW)
    world.tick()
    world.tick()  # a later tick changes nothing and says nothing again

    ended = store.get(request_id)
    assert ended is not None
    assert_the_verdict(ended, case, emulated)
    # Exactly one message per channel.
    assert len(sinks.messages("ops")) == 1
    assert sinks.ops_messages_naming(body["name"]) == 1
    assert sinks.cmdb_results() == Counter({(request_id, ended.status.value): 1})
    # The caller's key still answers with that job, and still sends nothing.
    again = world.post(body, key)
    assert again.status_code == 202
    assert again.get_json()["status"] == ended.status.value
    assert ims.calls.get("create", 0) == caller.creates_at_202

    # FAIL and UNCONFIRMED free the backup; SUCCESS keeps it (one backup, one image).
    retry = world.post(second_try, "caller-key-2")
    if ended.status is JobStatus.SUCCESS:
        assert retry.status_code == 409
        assert retry.get_json()["error"]["code"] == "backup_in_use"
    else:
        assert retry.status_code == 202, retry.get_data(as_text=True)
        assert retry.get_json()["status"] == "SUBMITTED"
        assert len(ims.jobs) == (2 if emulated is not None else 1)


# === check takes over a create that is still running =========================================


@pytest.mark.slow
def test_a_certain_refusal_after_check_took_the_live_call_over_leaves_nothing_behind(
    world: World,
):
    deps = Dependencies(
        settings=wholeimage_settings(
            world.ims.url, world.state_url, world.sinks, reconcile_after=0, ims_timeout=10
        ),
        store=world.deps.store,
    )
    world.extra.append(deps)
    set_dependencies(deps)
    body = cbr_body("taken-over")
    refusal = Fault.ims_error("IMG.0020", "The backup does not exist.")
    world.ims.inject("create", Fault(delay=1.0, status=refusal.status, body=refusal.body))
    answer: list[TestResponse] = []
    caller = threading.Thread(target=lambda: answer.append(world.post(body, "key-1")))
    caller.start()
    deadline = time.monotonic() + 10
    while not world.ims.calls.get("create"):  # the create call is in IMS's hands now
        assert time.monotonic() < deadline
        time.sleep(0.01)
    tick_at(deps, world.clock)  # reconcile_after=0: the live SUBMITTING row counts as stale
    caller.join(timeout=10)

    assert answer[0].status_code == 400
    assert answer[0].get_json()["error"]["code"] == "ims_rejected"
    # What the caller was told must hold: nothing recorded, the key and the backup free.
    assert all_jobs(world.deps.store) == []
    again = world.post(body, "key-1")
    assert again.status_code == 202
    assert again.get_json()["status"] == "SUBMITTED"


# === a mixed run ===============================================================================

MIX_REQUESTS = 100
MIX_FAULTED = 0.3
MIX_REPEATS = 3
MIX_SEED = 20260917


@dataclass
class MixedRun:
    """The requests of a mixed run (body, key, the fault of its first create call) and what
    their callers were answered."""

    requests: list[tuple[dict[str, Any], str, Case | None]]
    answers: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)

    @property
    def faulted(self) -> Counter[str]:
        return Counter(case.id for _, _, case in self.requests if case is not None)

    @property
    def never_accepted(self) -> int:
        """Requests whose only create call IMS never acted on, the answer a doubt."""
        return sum(
            1
            for _, _, case in self.requests
            if case is not None and case.uncertain and not case.accepted
        )

    def send(self, world: World, body: dict[str, Any], key: str) -> None:
        answer = world.post(body, key)
        self.answers[answer.status_code] += 1
        if answer.status_code >= 500 and not is_documented_server_error(answer):
            self.server_errors.append(f"{key}: {answer.status_code} {answer.get_data()!r}")


def mixed_requests(rng: random.Random) -> MixedRun:
    requests: list[tuple[dict[str, Any], str, Case | None]] = []
    for index in range(MIX_REQUESTS):
        name = f"mix-{index:03d}"
        body = cbr_body(name) if index % 3 == 0 else ecs_body(name)
        case = rng.choice(CASES) if rng.random() < MIX_FAULTED else None
        requests.append((body, f"mix-key-{index:03d}", case))
    return MixedRun(requests)


def send_the_mix(world: World, run: MixedRun, rng: random.Random) -> None:
    """Each request once, with its fault; then every repeat, shuffled, while check runs."""
    for body, key, case in run.requests:
        if case is not None:
            world.ims.inject("create", *case.faults)
            if case.unreachable:
                set_dependencies(world.unreachable_ims())
        run.send(world, body, key)
        set_dependencies(world.deps)
        assert world.ims.pending_faults()["create"] == 0
    repeats = [(body, key) for body, key, _ in run.requests for _ in range(MIX_REPEATS)]
    rng.shuffle(repeats)
    for sent, (body, key) in enumerate(repeats, start=1):
        run.send(world, body, key)
        if sent % 50 == 0:
            world.clock.advance(200)
            world.tick()


def tick_until_settled(world: World, *, step: float = 900, most: int = 40) -> int:
    """Ticks, the clock ``step`` seconds on before each, until nothing is unresolved or
    outstanding; how many it took."""
    for ticks in range(1, most + 1):
        world.clock.advance(step)
        world.tick()
        if not world.deps.store.list_jobs(statuses=UNRESOLVED | OUTSTANDING, since=None, limit=1):
            return ticks
    raise AssertionError(f"jobs still unresolved or outstanding after {most} ticks")


@pytest.mark.slow
def test_a_mixed_run_makes_one_ims_job_per_accepted_request_and_one_message_each(world: World):
    ims, store, sinks = world.ims, world.deps.store, world.sinks
    # Jobs end on their own now, a quarter of them failed (the emulator's seeded lottery).
    ims.config.job_seconds = 600
    ims.config.fail_ratio = 0.25
    rng = random.Random(MIX_SEED)
    run = mixed_requests(rng)

    send_the_mix(world, run, rng)
    creates_after_repeats = ims.calls.get("create", 0)
    ticks = tick_until_settled(world)
    world.tick()  # nothing left: says nothing more

    jobs = {job.request_id: job for job in all_jobs(store)}
    markers = markers_in_ims(ims)
    ends = Counter(job.status.value for job in jobs.values())
    print(
        f"\nmixed run ({ims.calls.get('create', 0)} IMS create calls): {MIX_REQUESTS} requests, "
        f"{sum(run.faulted.values())} first create answers faulted {dict(run.faulted)}, "
        f"each sent {1 + MIX_REPEATS} times; answers {dict(sorted(run.answers.items()))}; "
        f"IMS jobs {len(ims.jobs)} (requests IMS accepted {len(markers)}); tracked jobs "
        f"{len(jobs)}, ends {dict(ends)}; messages ops {len(sinks.messages('ops'))}, "
        f"cmdb {len(sinks.messages('cmdb'))} (results in them: ops "
        f"{sum(sinks.ops_messages_naming(job.request.name) for job in jobs.values())}, cmdb "
        f"{sum(sinks.cmdb_results().values())}); ticks to settle {ticks}"
    )

    assert run.server_errors == []
    assert set(run.answers) <= {202, 400, 503}
    # Never a second IMS job for one request, and every IMS job belongs to a tracked request.
    assert all(count == 1 for count in markers.values())
    assert len(ims.jobs) == len(markers) == MIX_REQUESTS - run.never_accepted
    assert set(markers) <= set(jobs)
    assert ims.calls.get("create", 0) == creates_after_repeats
    # Every request is tracked once and ended: with IMS's verdict, or UNCONFIRMED where IMS
    # never took it.
    assert len(jobs) == MIX_REQUESTS
    by_image = {job.image_id: job for job in ims.jobs.values()}
    for request_id, job in jobs.items():
        images = marker_images(ims, request_id)
        if not images:
            assert job.status is JobStatus.UNCONFIRMED
            continue
        emulated = by_image[images[0]["id"]]
        assert job.status.value == emulated.outcome, request_id
        if job.status is JobStatus.SUCCESS:
            assert job.image_id == emulated.image_id
    assert ends["UNCONFIRMED"] == run.never_accepted
    assert set(ends) <= {status.value for status in ENDED}
    # Exactly one message per ended job and channel, single events and digests alike.
    assert sinks.cmdb_results() == Counter(
        {(request_id, job.status.value): 1 for request_id, job in jobs.items()}
    )
    assert all(sinks.ops_messages_naming(job.request.name) == 1 for job in jobs.values())
    assert store.notification_counts() == {"DELIVERED": 2 * MIX_REQUESTS}
