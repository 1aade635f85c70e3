"""Benchmark of ``notify``: delivery throughput and what a burst costs a rate-limited channel.

Usage: ``.venv/bin/python scripts/bench_notify.py [--rows 5000] [--jobs 1000]``

(a) Deliveries per second to a local file sink (SQLite outbox), for one message per result and
    with the default digests.
(b) 1,000 jobs end in one ``check`` tick (IMS emulator, jobs of 0 s) and are handed to a
    Slack-like channel that allows 1 message per second and answers 429 + Retry-After: 1 to
    anything faster. Prints the chat messages sent (target <= 10 thanks to digests), the 429s
    received, and whether every row was delivered. Runs on a fake clock: no real waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT / "tools")]

from pydantic import SecretStr  # noqa: E402

from ims_emulator import EmulatorConfig, ImsEmulator  # noqa: E402
from wholeimage.bootstrap import Dependencies, open_store  # noqa: E402
from wholeimage.check import CheckConfig, run_check_sync  # noqa: E402
from wholeimage.create import submit_create  # noqa: E402
from wholeimage.models import CreateImageRequest  # noqa: E402
from wholeimage.notify import (  # noqa: E402
    ChannelLimiters,
    NotifyConfig,
    deliver_pending,
    notifications_for,
    outbox_for,
)
from wholeimage.poll_backoff import PollBackoff  # noqa: E402
from wholeimage.results import Channel, JobResult  # noqa: E402
from wholeimage.service.ports import ims_client  # noqa: E402
from wholeimage.service.tick import poller_for  # noqa: E402
from wholeimage.settings import Settings  # noqa: E402

SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def sample_result(index: int) -> JobResult:
    now = datetime.now(UTC)
    request_id = uuid.uuid4().hex
    return JobResult(
        key=f"wi_{request_id}_success",
        request_id=request_id,
        job_id=uuid.uuid4().hex,
        status="SUCCESS" if index % 10 else "FAIL",
        image_name=f"nightly-{index:05d}",
        image_id=str(uuid.uuid4()),
        source_kind="ecs",
        source_id=str(uuid.uuid4()),
        requested_by="bench",
        error_code=None if index % 10 else "IMG.0126",
        fail_reason=None if index % 10 else "ECS state does not allow a full-ECS image",
        submitted_at=now - timedelta(minutes=12),
        ended_at=now,
    )


def bench_sink(rows: int) -> None:
    for label, individual_limit, channel_format in (
        ("one message per result (standard)", rows, "standard"),
        ("default digests (slack)", 3, "slack"),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(f"sqlite:///{tmp}/outbox.db")
            channel = Channel(
                name="sink",
                format=channel_format,
                url=SecretStr(f"file:{tmp}/sink.jsonl"),
                secret=SecretStr(SECRET),
            )
            now = datetime.now(UTC)
            for start in range(0, rows, 1000):
                batch = []
                for index in range(start, min(rows, start + 1000)):
                    batch += notifications_for(sample_result(index), [channel], now=now)
                store.add_notifications(batch)
            config = NotifyConfig(
                individual_limit=individual_limit, batch_size=rows, time_budget=600
            )
            started = time.perf_counter()
            with httpx.Client() as http:
                summary = deliver_pending(store=store, channels=[channel], http=http, config=config)
            elapsed = time.perf_counter() - started
            lines = len(Path(f"{tmp}/sink.jsonl").read_text("utf-8").splitlines())
            store.close()
        print(
            f"(a) {label}: {summary.delivered} results delivered in {elapsed:.2f} s = "
            f"{summary.delivered / elapsed:,.0f} results/s, {lines} messages written"
        )


class FakeClock:
    def __init__(self) -> None:
        self.moment = time.time()  # also the wall clock of the run, so outbox rows are due

    def monotonic(self) -> float:
        return self.moment

    def sleep(self, seconds: float) -> None:
        self.moment += seconds


class SlackLike:
    """Answers ``ok``, or 429 + Retry-After: 1 to a message within a second of the last one."""

    def __init__(self, clock: FakeClock, min_gap: float = 1.0) -> None:
        self.clock = clock
        self.min_gap = min_gap
        self.last: float | None = None
        self.accepted = 0
        self.throttled = 0
        self.results_listed = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.clock.monotonic()
        if self.last is not None and now - self.last < self.min_gap:
            self.throttled += 1
            return httpx.Response(429, headers={"Retry-After": "1"}, text="rate_limited")
        self.last = now
        self.accepted += 1
        return httpx.Response(200, text="ok")


def bench_burst(jobs: int, min_gap: float = 1.0) -> None:
    clock = FakeClock()
    with (
        ImsEmulator(EmulatorConfig(job_seconds=0, record_requests=False)) as ims,
        tempfile.TemporaryDirectory() as tmp,
    ):
        state_url = f"sqlite:///{tmp}/burst.db"
        settings = Settings(
            ims_endpoint=ims.url,
            project_id=ims.config.project_id,
            access_key=ims.config.ak,
            secret_key=ims.config.sk,
            state_url=state_url,
            ims_rate_limit=0,
        )
        store = open_store(state_url)
        deps = Dependencies(settings=settings, store=store)
        for index in range(jobs):
            submit_create(
                CreateImageRequest(name=f"burst-{index:04d}", instance_id=str(uuid.uuid4())),
                idempotency_key=None,
                requested_by="bench",
                trace=None,
                ims=ims_client(deps),
                store=store,
                first_poll_after=timedelta(seconds=settings.poll_min_interval),
                now=lambda: datetime.now(UTC) - timedelta(seconds=30),
            )
        channel = Channel(
            name="slack",
            format="slack",
            url=SecretStr("https://hooks.slack.com/services/T0/B0/XXXX"),
        )
        tick = run_check_sync(
            store=store,
            poller=poller_for(deps),
            config=CheckConfig(backoff=PollBackoff(0, 0), concurrency=32, time_budget=600),
            outbox=outbox_for([channel]),
        )
        clock = FakeClock()  # started after the tick, so every outbox row is due at once
        slack = SlackLike(clock, min_gap)
        limiters = ChannelLimiters(clock=clock.monotonic)
        runs = 0
        with httpx.Client(transport=httpx.MockTransport(slack)) as http:
            while store.notification_counts().get("PENDING", 0) and runs < 5000:
                deliver_pending(
                    store=store,
                    channels=[channel],
                    http=http,
                    limiters=limiters,
                    monotonic=clock.monotonic,
                    sleep=clock.sleep,
                    now=lambda: datetime.fromtimestamp(clock.moment, UTC),
                    config=NotifyConfig(time_budget=120),
                )
                runs += 1
                clock.sleep(1.0)
        counts = store.notification_counts()
        store.close()
    print(
        f"(b) {tick.ended.get('SUCCESS', 0) + tick.ended.get('FAIL', 0)} jobs ended in one tick -> "
        f"{slack.accepted} chat messages accepted by a Slack-like channel allowing 1 message per "
        f"{min_gap:.0f} s (target <= 10), "
        f"{slack.throttled} answered 429 and retried; outbox {json.dumps(counts)} after {runs} run(s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    bench_sink(args.rows)
    bench_burst(args.jobs)
    # A channel stricter than its documented limit: the 429s it sends are honoured, nothing is lost.
    bench_burst(args.jobs, min_gap=3.0)


if __name__ == "__main__":
    main()
