"""``kill -9`` of ``create`` at any point of a submission (issue 9, "Done when" item 2).

The ``create`` function runs as documented (``functions-framework --source functions/main.py
--target create``: gunicorn, one worker) against the IMS emulator in this process, with an IAM
password login so that every fresh worker asks IAM for a token between recording the job and
sending it to IMS. Its worker, the process running the use case, is killed with SIGKILL (the
gunicorn master starts the next one, as a platform starts a new instance), ten times at each of
four points, on a SQLite and a PostgreSQL store:

- ``before-ims``: the job is recorded (``SUBMITTING``) and the IAM token request is held
  (``Fault(delay=...)`` on the ``iam`` route): IMS is never called;
- ``in-flight``: the create POST has reached IMS and is held before the route runs
  (``Fault(delay=...)``): IMS makes the job after the caller is gone;
- ``accepted``: IMS has made the job and holds its answer (``Fault(after=True, delay=...)``):
  the store is never told;
- ``recording``: the test holds the store's write lock, so the create blocks before it can
  record the job: nothing is recorded, and the same key then makes a new submission, once.

Each kill lands at a seeded random moment inside the hold. Where the job was recorded, the
same request with the same ``Idempotency-Key`` right after the kill is answered 409
``submission_in_progress`` without an IMS call. Then ``check`` (in this process,
``WHOLEIMAGE_RECONCILE_AFTER=1``, on a simulated clock shared with the emulator) runs until
nothing is unresolved or outstanding, and: every IMS job ends with its verdict (``SUCCESS``
with its image, ``FAIL``) and every job IMS never saw ends ``UNCONFIRMED``, each with exactly
one message per channel; no IMS job is unknown to the store; no row stays ``SUBMITTING`` or
``SUBMIT_UNCERTAIN``; and repeating every request with its key (to the live function) replays
it, making no second IMS job. ``-s`` prints the counts.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
import pytest

from ims_emulator import EmulatorConfig, Fault, ImsEmulator
from tests.functional.test_exactly_once_faults import (
    ANY_SKEW,
    SimClock,
    Sinks,
    all_jobs,
    cbr_body,
    ecs_body,
    marker_images,
    markers_in_ims,
    tick_at,
    wholeimage_settings,
)
from tests.functional.test_openapi import close
from tests.system.test_served import Served, serve
from wholeimage.bootstrap import Dependencies, open_store
from wholeimage.models import JobStatus
from wholeimage.statuses import OUTSTANDING, UNRESOLVED

pytestmark = pytest.mark.slow

Point = Literal["recording", "before-ims", "in-flight", "accepted"]
# "recording" last: its repeat leaves a worker alive that holds an IAM token, and "before-ims"
# needs a fresh worker, which asks IAM first.
POINTS: tuple[Point, ...] = ("before-ims", "in-flight", "accepted", "recording")
KILLS_PER_POINT = 10
SEED = 9
# How long the emulator holds the call the kill lands in, and the latest moment in it the
# kill is aimed at: far apart, so a slow machine still kills inside the hold.
HOLD_SECONDS = 3.0
KILL_WITHIN = 0.5
WAIT_SECONDS = 20.0


@dataclass
class CreateProcess:
    """The served ``create`` function: the gunicorn master and its one worker."""

    served: Served

    def worker(self) -> int:
        master = self.served.process.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def kill_worker(self) -> None:
        """SIGKILL the worker, then wait until its successor answers."""
        killed = self.worker()
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            assert self.served.process.poll() is None, self.served.log()
            try:
                if self.worker() != killed:
                    httpx.get(self.served.url, timeout=2)
                    return
            except (AssertionError, httpx.TransportError):
                pass
            time.sleep(0.02)
        raise AssertionError(f"no new worker within {WAIT_SECONDS} s: {self.served.log()}")

    def post(self, body: dict[str, Any], key: str, timeout: float = 30) -> httpx.Response:
        return httpx.post(
            self.served.url, json=body, headers={"Idempotency-Key": key}, timeout=timeout
        )


def create_env(ims: ImsEmulator, state_url: str) -> dict[str, str]:
    """The function's environment: IAM password login (a token request before each fresh
    worker's first IMS call), a timeout longer than every hold."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WHOLEIMAGE_", "HUAWEICLOUD_SDK_"))
    }
    config = ims.config
    env.update(
        {
            "WHOLEIMAGE_IMS_ENDPOINT": ims.url,
            "WHOLEIMAGE_IAM_ENDPOINT": ims.url,
            "WHOLEIMAGE_PROJECT_ID": config.project_id,
            "WHOLEIMAGE_IAM_USER": config.iam_user,
            "WHOLEIMAGE_IAM_PASSWORD": config.iam_password,
            "WHOLEIMAGE_IAM_DOMAIN": config.iam_domain,
            "WHOLEIMAGE_STATE_URL": state_url,
            "WHOLEIMAGE_IMS_TIMEOUT": "10",
            "WHOLEIMAGE_LOG_LEVEL": "WARNING",
        }
    )
    return env


@dataclass
class Killed:
    """One request whose create was killed, and where."""

    point: Point
    body: dict[str, Any]
    key: str
    hold_ends: float = 0.0  # time.monotonic() when the emulator is done with the held call


class Unanswered:
    """The request whose worker is killed, sent from a thread: it must get no answer."""

    def __init__(self, create: CreateProcess, body: dict[str, Any], key: str) -> None:
        self.outcome: list[httpx.Response | httpx.TransportError] = []
        self._thread = threading.Thread(target=self._send, args=(create, body, key), daemon=True)
        self._thread.start()

    def _send(self, create: CreateProcess, body: dict[str, Any], key: str) -> None:
        try:
            self.outcome.append(create.post(body, key))
        except httpx.TransportError as exc:
            self.outcome.append(exc)

    def assert_unanswered(self) -> None:
        self._thread.join(timeout=WAIT_SECONDS)
        [outcome] = self.outcome
        assert isinstance(outcome, httpx.TransportError), f"it was answered: {outcome}"


@contextmanager
def store_write_lock(state_url: str) -> Iterator[None]:
    """Hold the store's write lock, so a create blocks before it can record anything."""
    if state_url.startswith("sqlite:///"):
        connection = sqlite3.connect(state_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield
            connection.execute("ROLLBACK")
        finally:
            connection.close()
        return
    with psycopg.connect(state_url) as pg:
        pg.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")  # reads go on, writes wait
        yield
        pg.rollback()


def kill_at(
    create: CreateProcess,
    ims: ImsEmulator,
    point: Point,
    killed: Killed,
    rng: random.Random,
    state_url: str,
) -> None:
    """Send the request, SIGKILL the worker at ``point`` (inside the held call), repeat it."""
    if point == "recording":
        creates = ims.calls.get("create", 0)
        with store_write_lock(state_url):
            request = Unanswered(create, killed.body, killed.key)
            time.sleep(rng.uniform(0.05, KILL_WITHIN))
            create.kill_worker()
            request.assert_unanswered()
        # Nothing was recorded: the same key is a new submission, made once.
        repeat = create.post(killed.body, killed.key)
        assert repeat.status_code == 202, repeat.text
        assert repeat.json()["status"] == "SUBMITTED"
        assert ims.calls.get("create", 0) == creates + 1
        return
    route = "iam" if point == "before-ims" else "create"
    ims.inject(route, Fault(delay=HOLD_SECONDS, after=point == "accepted"))
    arrived = ims.calls.get(route, 0)
    creates = ims.calls.get("create", 0)
    request = Unanswered(create, killed.body, killed.key)
    deadline = time.monotonic() + WAIT_SECONDS
    while ims.calls.get(route, 0) == arrived:
        assert time.monotonic() < deadline, f"the request never reached the {route} route"
        time.sleep(0.005)
    killed.hold_ends = time.monotonic() + HOLD_SECONDS
    time.sleep(rng.uniform(0, KILL_WITHIN))
    create.kill_worker()
    request.assert_unanswered()
    assert ims.pending_faults()[route] == 0
    # The job stays SUBMITTING; the same key is "in progress" now, and nothing goes to IMS.
    repeat = create.post(killed.body, killed.key)
    assert repeat.status_code == 409, repeat.text
    assert repeat.json()["error"]["code"] == "submission_in_progress"
    assert ims.calls.get("create", 0) == creates + (0 if point == "before-ims" else 1)


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def ims(clock: SimClock) -> Iterator[ImsEmulator]:
    config = EmulatorConfig(
        job_seconds=600, fail_ratio=0.3, seed=SEED, max_clock_skew_seconds=ANY_SKEW
    )
    with ImsEmulator(config, clock=clock) as emulator:
        yield emulator


@pytest.fixture
def create(ims: ImsEmulator, state_url: str, tmp_path: Path) -> Iterator[CreateProcess]:
    served = serve("create", create_env(ims, state_url), tmp_path / "create.log")
    try:
        yield CreateProcess(served)
    finally:
        served.process.terminate()
        served.process.wait(timeout=15)


def test_a_create_killed_at_any_point_is_reconciled_once_and_never_resubmitted(
    store_kind: str, state_url: str, tmp_path: Path, ims: ImsEmulator, clock: SimClock, create
):
    rng = random.Random(f"{SEED}-{store_kind}")
    sinks = Sinks(ops=tmp_path / "ops.jsonl", cmdb=tmp_path / "cmdb.jsonl")
    deps = Dependencies(
        settings=wholeimage_settings(ims.url, state_url, sinks, reconcile_after=1),
        store=open_store(state_url),
    )
    try:
        store = deps.store
        store.count_outstanding()  # the schema exists before a test lock can hold its table
        killed: list[Killed] = []
        started = time.monotonic()
        for point in POINTS:
            for index in range(KILLS_PER_POINT):
                name = f"kill-{point}-{index:02d}"
                body = cbr_body(name) if index % 2 else ecs_body(name)
                killed.append(Killed(point, body, f"key-{name}"))
                kill_at(create, ims, point, killed[-1], rng, state_url)
        killing = time.monotonic() - started
        by_point = {point: [k for k in killed if k.point == point] for point in POINTS}
        jobs = all_jobs(store)
        assert len(jobs) == len(killed)
        assert Counter(job.status for job in jobs) == {
            JobStatus.SUBMITTED: KILLS_PER_POINT,
            JobStatus.SUBMITTING: len(killed) - KILLS_PER_POINT,
        }
        # An in-flight create reaches IMS's route only when its hold is over, whoever waits for
        # it. IMS lists its image from then on: before the reconcile window closes, as in life.
        time.sleep(max(0.0, max(k.hold_ends for k in killed) - time.monotonic()))
        clock.advance(2)
        ticks = 0
        while ticks < 30 and store.list_jobs(
            statuses=UNRESOLVED | OUTSTANDING, since=None, limit=1
        ):
            tick_at(deps, clock)
            ticks += 1
            clock.advance(900)
        tick_at(deps, clock)  # nothing left: says nothing more
        jobs = all_jobs(store)
    finally:
        close(deps)
    assert len(ims.jobs) == len(killed) - len(by_point["before-ims"])

    by_key = {job.idempotency_key: job for job in jobs}
    markers = markers_in_ims(ims)
    ends = {point: Counter(by_key[k.key].status.value for k in by_point[point]) for point in POINTS}
    creates = ims.calls.get("create", 0)
    print(
        f"\nkill -9 of create ({store_kind}): {len(killed)} kills "
        f"({KILLS_PER_POINT} per point) in {killing:.1f} s; IMS create calls {creates}, "
        f"IAM token requests {ims.calls.get('iam', 0)}, IMS jobs {len(ims.jobs)}; ends by point "
        f"{ {point: dict(counts) for point, counts in ends.items()} }; messages ops "
        f"{len(sinks.messages('ops'))}, cmdb {len(sinks.messages('cmdb'))} (results "
        f"{sum(sinks.cmdb_results().values())}); check ticks {ticks + 1}"
    )

    # No row stays unresolved or outstanding; every IMS job is known and ended with its verdict.
    assert not [job for job in jobs if job.status in UNRESOLVED | OUTSTANDING]
    assert all(count == 1 for count in markers.values())
    assert set(markers) <= {job.request_id for job in jobs}
    emulated = {job.image_id: job for job in ims.jobs.values()}
    for job in jobs:
        images = marker_images(ims, job.request_id)
        if not images:
            assert job.status is JobStatus.UNCONFIRMED
            continue
        verdict = emulated[images[0]["id"]]
        assert job.status.value == verdict.outcome
        if job.status is JobStatus.SUCCESS:
            assert job.image_id == verdict.image_id
    assert sum(ends["before-ims"].values()) == ends["before-ims"]["UNCONFIRMED"]
    assert not [point for point in POINTS if point != "before-ims" and ends[point]["UNCONFIRMED"]]
    # Exactly one message per job and channel.
    assert sinks.cmdb_results() == Counter({(job.request_id, job.status.value): 1 for job in jobs})
    assert all(sinks.ops_messages_naming(job.request.name) == 1 for job in jobs)

    # Every request again, with its key, to the live function: its job, and no second IMS job.
    for k in killed:
        again = create.post(k.body, k.key)
        assert again.status_code == 202, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["status"] == by_key[k.key].status.value
    assert ims.calls.get("create", 0) == creates
    assert len(ims.jobs) == len(markers)
