"""Benchmark of the lifecycle policies' part of a ``check`` tick. Prints figures.

Usage: ``.venv/bin/python scripts/bench_policies.py [--policies 1000] [--sources 10]
[--store sqlite|postgres] [--repeat 20]``

(a) Nothing due: a tick's policy part (``service.lifecycle.lifecycle_phase``) over a store holding
    ``--policies`` policies of ``--sources`` sources each, none due, against the same part over
    an empty store, measured in the same run (median of ``--repeat``). Target: the policies add
    under 10 ms to a tick, since due slots are found through an index (docs/policies.md §4).
    The whole poll tick over the same store (no job due) is printed beside it for scale.
(b) Everything due: every policy due at once; one tick with a ``--budget`` of 60 s, IMS a fake
    answering at once (so the figure is wholeimage's own cost: create use case, store writes)
    or after ``--ims-latency-ms``. Prints the creates submitted in that tick, the cost per
    create, and how many ticks the whole set takes (the rest stays due for the next ticks).

PostgreSQL: ``WHOLEIMAGE_TEST_POSTGRES_URL``, default postgresql://postgres@127.0.0.1:5432/test
(the tables are dropped first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT / "tools"), str(ROOT)]

from tests.fakes import FakeImsClient, make_settings  # noqa: E402

from wholeimage.bootstrap import Dependencies, open_store  # noqa: E402
from wholeimage.check import CheckConfig, run_check_sync  # noqa: E402
from wholeimage.httputil import RateLimiter  # noqa: E402
from wholeimage.ims.poller import JobPoller  # noqa: E402
from wholeimage.policies import policy_from_document  # noqa: E402
from wholeimage.service.lifecycle import lifecycle_phase  # noqa: E402
from wholeimage.store.base import SqlJobStore  # noqa: E402

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
TABLES = ("image_deletions", "policy_items", "policy_runs", "policies", "notifications", "jobs")


def open_fresh(kind: str, directory: Path, name: str) -> SqlJobStore[Any]:
    if kind == "sqlite":
        store = open_store(f"sqlite:///{directory / name}.db")
    else:
        import psycopg

        url = os.environ.get(
            "WHOLEIMAGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        )
        with psycopg.connect(url, autocommit=True) as connection:
            for table in (*TABLES, "wholeimage_schema"):
                connection.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        store = open_store(url)
    if not isinstance(store, SqlJobStore):
        raise TypeError("the benchmark needs one of wholeimage's SQL stores")
    store.count_outstanding()  # connected and migrated
    return store


def document(index: int, sources: int) -> dict[str, Any]:
    return {
        "name": f"policy-{index:05d}",
        "schedule": {"cron": f"{index % 60} {index % 24} * * *", "timezone": "Europe/Berlin"},
        "sources": [
            {
                "instance_id": str(uuid.UUID(int=index * 1000 + source + 1)),
                "vault_id": "99999999-9999-4999-8999-999999999999",
                "label": f"server-{index}-{source}",
            }
            for source in range(sources)
        ],
        "retention": {"keep_last": 7},
    }


def fill(store: SqlJobStore[Any], policies: int, sources: int, *, due: bool) -> None:
    for index in range(policies):
        policy = policy_from_document(document(index, sources), cloud="huaweicloud")
        next_slot = policy.latest_slot_at_or_before(NOW) if due else policy.next_slot_after(NOW)
        store.put_policy(
            policy.name,
            policy.document(),
            enabled=True,
            next_slot_at=next_slot,
            reschedule=True,
            now=NOW - timedelta(days=1),
        )


def wired(store: SqlJobStore[Any], ims: FakeImsClient) -> Dependencies:
    """What ``check`` holds for the process: the settings, the store, IMS (here a fake)."""
    return Dependencies(settings=make_settings(), store=store, ims=ims)


def phase(deps: Dependencies, *, budget: float) -> Any:
    """The policies' part of a tick as ``check`` wires it (``service.lifecycle``)."""
    return lifecycle_phase(
        deps, budget=budget, owner=f"bench-{uuid.uuid4().hex[:8]}", now=lambda: NOW
    )


def timed(action: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


class IdleClient:
    """A poll client no query is ever made with."""

    async def aclose(self) -> None:
        return None


def poll_tick(store: SqlJobStore[Any]) -> None:
    # No job is due, so nothing is polled: each worker's client is never used.
    poller = JobPoller(project_id="0" * 32, client_factory=IdleClient, limiter=RateLimiter(0))
    run_check_sync(store=store, poller=poller, config=CheckConfig(), now=lambda: NOW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--budget", type=float, default=60.0, help="the policy part's seconds")
    parser.add_argument(
        "--ims-latency-ms", type=float, default=0.0, help="how long the fake IMS takes a create"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        ims = FakeImsClient()
        empty = open_fresh(args.store, directory, "empty")
        empty_deps = wired(empty, ims)
        baseline = timed(lambda: phase(empty_deps, budget=60), args.repeat)
        empty_tick = timed(lambda: poll_tick(empty), args.repeat)
        empty.close()

        full = open_fresh(args.store, directory, "full")
        fill(full, args.policies, args.sources, due=False)
        full_deps = wired(full, ims)
        idle = timed(lambda: phase(full_deps, budget=60), args.repeat)
        full_tick = timed(lambda: poll_tick(full), args.repeat)
        print(f"store: {args.store}; {args.policies} policies x {args.sources} sources")
        print(
            f"(a) nothing due: policy part {idle:.2f} ms with the policies vs {baseline:.2f} ms "
            f"with none: +{idle - baseline:.2f} ms (target < 10 ms); the poll part of the same "
            f"tick {full_tick:.2f} ms ({empty_tick:.2f} ms over an empty store)"
        )
        full.close()

        due = open_fresh(args.store, directory, "due")
        fill(due, args.policies, args.sources, due=True)
        latency = args.ims_latency_ms / 1000
        ims = FakeImsClient(on_submit=(lambda: time.sleep(latency)) if latency else None)
        total = args.policies * args.sources
        due_deps = wired(due, ims)
        started = time.perf_counter()
        first = phase(due_deps, budget=args.budget)
        spent = time.perf_counter() - started
        made = sum(first.creates.values())
        ticks = 1
        while made < total and ticks < 100:
            summary = phase(due_deps, budget=args.budget)
            made += sum(summary.creates.values())
            ticks += 1
        per_create = spent / max(sum(first.creates.values()), 1) * 1000
        print(
            f"(b) everything due: the first tick ({args.budget:g} s budget) submitted "
            f"{sum(first.creates.values())} of {total} creates in {spent:.2f} s "
            f"({per_create:.2f} ms a create, IMS answering in {args.ims_latency_ms:g} ms), "
            "budget exhausted: "
            f"{first.budget_exhausted}; all {total} made after {ticks} tick(s); "
            f"IMS create calls {len(ims.submitted)} (one per slot and source)"
        )
        due.close()


if __name__ == "__main__":
    main()
