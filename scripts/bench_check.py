"""Benchmark of ``check``: fan-out, cost against history, and queries per job. Prints figures.

Usage: ``.venv/bin/python scripts/bench_check.py [--jobs 10000] [--history 1000000] [--skip a,b,c]``

(a) Fan-out: N due jobs polled once against the IMS emulator (its own process) answering after
    50 ms, concurrency 64. Prints wall time, the ratio to the floor N x latency / concurrency
    (target <= 1.2) and the polling process's peak RSS (target <= 150 MB). The tick runs in a
    child process so its RSS is its own.
(b) History: tick time with 1,000 due jobs when the store also holds 1,000,000 ended jobs, as
    a ratio to the same tick with no history (target <= 1.1), for SQLite and PostgreSQL
    (``WHOLEIMAGE_TEST_POSTGRES_URL``, default postgresql://postgres@127.0.0.1:5432/test).
(c) Queries spent on one 30-minute job with the default schedule (target <= 12), on a fake clock.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT / "tools")]

from ims_emulator import EmulatorConfig, ImsEmulator  # noqa: E402
from wholeimage.bootstrap import Dependencies, open_store  # noqa: E402
from wholeimage.check import CheckConfig, run_check_sync  # noqa: E402
from wholeimage.ims.connection import ImsConnection  # noqa: E402
from wholeimage.models import CreateImageRequest, Job, JobStatus  # noqa: E402
from wholeimage.poll_backoff import PollBackoff  # noqa: E402
from wholeimage.service.ports import ims_client  # noqa: E402
from wholeimage.service.tick import poller_for  # noqa: E402
from wholeimage.settings import Settings  # noqa: E402
from wholeimage.store.records import job_to_row  # noqa: E402

PROJECT = "0123456789abcdef0123456789abcdef"
AK, SK = "EMULATORAK", "emulator-secret-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_emulator(*extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ims_emulator", "--port", str(port), "--no-record", *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[:2])},
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/_emulator/health", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.02)
    raise SystemExit("the emulator did not start")


def settings_for(ims_url: str, state_url: str, **extra: Any) -> Settings:
    return Settings(
        ims_endpoint=ims_url,
        project_id=PROJECT,
        access_key=AK,
        secret_key=SK,
        state_url=state_url,
        poll_min_interval=0,
        poll_max_interval=0,
        ims_rate_limit=0,
        **extra,
    )


def job_row(ims_job_id: str, status: JobStatus, now: datetime, *, ended: bool) -> dict[str, Any]:
    request = CreateImageRequest(name="bench", instance_id="877a2cda-ba63-4e1e-b95f-e67e48b6129a")
    job = Job(
        request_id=uuid.uuid4().hex,
        idempotency_key=None,
        request_fingerprint=request.fingerprint(),
        request=request,
        requested_by="bench",
        source_kind="ecs",
        source_id=request.source_id,
        status=status,
        ims_job_id=ims_job_id,
        created_at=now,
        updated_at=now,
        submitted_at=now,
        ended_at=now if ended else None,
        next_poll_at=None if ended else now - timedelta(seconds=1),
    )
    return job_to_row(job)


def insert_rows(state_url: str, rows: list[dict[str, Any]]) -> None:
    """Bulk-load rows straight into the jobs table (the store's schema is created first)."""
    open_store(state_url).count_outstanding()  # creates the schema
    columns = list(rows[0])
    if state_url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(state_url.removeprefix("sqlite:///")) as connection:
            connection.executemany(
                f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                [tuple(row[c] for c in columns) for row in rows],
            )
        return
    import psycopg

    with psycopg.connect(state_url) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY jobs ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
        cursor.execute("ANALYZE jobs")


def create_ims_jobs(ims_url: str, count: int) -> list[str]:
    """Submit ``count`` real jobs to the emulator (signed), returning their IMS job ids."""
    settings = settings_for(ims_url, "sqlite:///:memory:")
    client = ImsConnection.from_settings(settings).client(settings)
    body = {"name": "bench", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda _: client.create_whole_image(body), range(count)))


# --- (a) -----------------------------------------------------------------------------------


def tick_in_child(ims_url: str, state_url: str, concurrency: int) -> dict[str, Any]:
    """Run one tick in this process (the child) and report time and peak RSS."""
    store = open_store(state_url)
    deps = Dependencies(settings=settings_for(ims_url, state_url), store=store)
    config = CheckConfig(backoff=PollBackoff(0, 0), concurrency=concurrency, time_budget=600)
    started = time.perf_counter()
    cpu_before = time.process_time()
    summary = run_check_sync(store=store, poller=poller_for(deps), config=config)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    store.close()
    return {
        "cpu": cpu,
        "elapsed": elapsed,
        "polled": summary.polled,
        "errors": dict(summary.errors),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_fanout(jobs: int, latency_ms: float, concurrency: int) -> None:
    emulator, url = start_emulator("--job-seconds", "100000")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            state_url = f"sqlite:///{tmp}/fanout.db"
            ids = create_ims_jobs(url, jobs)
            now = datetime.now(UTC)
            insert_rows(state_url, [job_row(i, JobStatus.RUNNING, now, ended=False) for i in ids])
            httpx.patch(f"{url}/_emulator/config", json={"latency_ms": latency_ms}, timeout=5)
            out = subprocess.run(
                [sys.executable, __file__, "--child-tick", url, state_url, str(concurrency)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    floor = jobs * latency_ms / 1000 / concurrency
    print(f"(a) {jobs} due jobs, {latency_ms:.0f} ms latency, concurrency {concurrency}:")
    print(
        f"    wall {result['elapsed']:.2f} s, floor {floor:.2f} s, ratio {result['elapsed'] / floor:.2f} (target <= 1.2)"
    )
    print(
        f"    polled {result['polled']}, errors {result['errors']}, peak RSS {result['peak_rss_mb']:.0f} MB (target <= 150)"
    )
    print(
        f"    the polling process used {result['cpu']:.2f} s of CPU ({result['cpu'] / result['elapsed']:.0%} of one core)"
    )


# --- (b) -----------------------------------------------------------------------------------


def median_tick(ims_url: str, state_url: str, runs: int) -> float:
    store = open_store(state_url)
    deps = Dependencies(settings=settings_for(ims_url, state_url), store=store)
    config = CheckConfig(backoff=PollBackoff(0, 0), concurrency=64, time_budget=600)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        summary = run_check_sync(store=store, poller=poller_for(deps), config=config)
        times.append(time.perf_counter() - started)
        assert summary.polled == 1000, summary.as_json()  # noqa: S101 (a broken run must not print a figure)
        time.sleep(0.01)  # next_poll_at = now: make the jobs due again
    store.close()
    return statistics.median(times)


def fresh_state_url(kind: str, tmp: str, name: str) -> tuple[str, Any]:
    if kind == "sqlite":
        return f"sqlite:///{tmp}/{name}.db", None
    import psycopg

    base = os.environ.get(
        "WHOLEIMAGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')

    return f"{base}?options=-csearch_path%3D{schema}", drop


def bench_history(history: int, runs: int) -> None:
    emulator, url = start_emulator("--job-seconds", "100000")
    try:
        due_ids = create_ims_jobs(url, 1000)
        now = datetime.now(UTC)
        for kind in ("sqlite", "postgres"):
            with tempfile.TemporaryDirectory() as tmp:
                empty_url, drop_empty = fresh_state_url(kind, tmp, "empty")
                full_url, drop_full = fresh_state_url(kind, tmp, "full")
                try:
                    insert_rows(
                        empty_url,
                        [job_row(i, JobStatus.RUNNING, now, ended=False) for i in due_ids],
                    )
                    ended = [
                        job_row(
                            f"ended{n:026d}",
                            random.choice([JobStatus.SUCCESS, JobStatus.FAIL]),
                            now,
                            ended=True,
                        )
                        for n in range(history)
                    ]
                    insert_rows(
                        full_url,
                        ended + [job_row(i, JobStatus.RUNNING, now, ended=False) for i in due_ids],
                    )
                    del ended
                    median_tick(url, empty_url, 1)  # warm up both paths once
                    empty = median_tick(url, empty_url, runs)
                    full = median_tick(url, full_url, runs)
                finally:
                    for drop in (drop_empty, drop_full):
                        if drop:
                            drop()
            print(
                f"(b) {kind}: tick over 1,000 due jobs: {empty * 1000:.0f} ms with no history, "
                f"{full * 1000:.0f} ms beside {history:,} ended jobs: ratio {full / empty:.2f} (target <= 1.1)"
            )
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


# --- (c) -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.moment = time.time()

    def time(self) -> float:
        return self.moment

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.moment, UTC)


def bench_queries_per_job(job_minutes: float, samples: int) -> None:
    counts = []
    for seed in range(samples):
        clock = FakeClock()
        # The signer dates requests by the real clock; the emulator runs on the fake one.
        emulator_config = EmulatorConfig(
            job_seconds=job_minutes * 60, max_clock_skew_seconds=float("inf")
        )
        with (
            ImsEmulator(emulator_config, clock=clock.time) as ims,
            tempfile.TemporaryDirectory() as tmp,
        ):
            state_url = f"sqlite:///{tmp}/one.db"
            settings = Settings(
                ims_endpoint=ims.url,
                project_id=PROJECT,
                access_key=AK,
                secret_key=SK,
                state_url=state_url,
            )
            store = open_store(state_url)
            deps = Dependencies(settings=settings, store=store)
            from wholeimage.create import submit_create

            submit_create(
                CreateImageRequest(name="one", instance_id="877a2cda-ba63-4e1e-b95f-e67e48b6129a"),
                idempotency_key=None,
                requested_by=None,
                trace=None,
                ims=ims_client(deps),
                store=store,
                first_poll_after=timedelta(seconds=settings.poll_min_interval),
                now=clock.now,
            )
            config = CheckConfig()  # the default schedule: 15 s .. 300 s
            rng = random.Random(seed)
            while store.count_outstanding():
                due = store.next_due_at()
                assert due is not None  # noqa: S101
                clock.moment = max(clock.moment, due.timestamp())
                run_check_sync(
                    store=store, poller=poller_for(deps), config=config, now=clock.now, rng=rng
                )
            job = store.get_by_ims_job_id(next(iter(ims.jobs)))
            if job is None or job.status is not JobStatus.SUCCESS:
                raise SystemExit(f"the job did not succeed: {job}")
            counts.append(ims.calls.get("job", 0))
            store.close()
    print(
        f"(c) one {job_minutes:.0f}-minute job, default schedule (15 s .. 300 s, ±10 % jitter), {samples} runs: "
        f"{min(counts)}-{max(counts)} queries, median {statistics.median(counts):.0f} (target <= 12)"
    )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-tick":
        print(json.dumps(tick_in_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "a" not in skip:
        bench_fanout(args.jobs, args.latency_ms, args.concurrency)
    if "b" not in skip:
        bench_history(args.history, args.runs)
    if "c" not in skip:
        bench_queries_per_job(30, 20)


if __name__ == "__main__":
    main()
