"""``JobStore.claim_unresolved`` and recording reconciliations, against both adapters.

The jobs whose submission outcome is unknown (``SUBMIT_UNCERTAIN``, and ``SUBMITTING`` left by
a process that died) are claimed like due jobs: leased, never to two claimers, and recorded
only while the lease is held (docs/reconcile.md §3).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.adapters.test_store_contract import (
    LEASE,
    NOW,
    T0,
    backend_rows,
    backup_body,
    lease_of,
    new_job,
    opened_stores,
    reserve_all,
    run_at_once,
)
from wholeimage.errors import BackupInUseError
from wholeimage.models import JobStatus
from wholeimage.store.base import INTERRUPTED_REASON
from wholeimage.store.records import JobStore, PollUpdate, to_epoch

pytestmark = pytest.mark.usefixtures("store_kind")
__all__ = ["opened_stores"]  # a fixture, imported to be found here

AFTER = timedelta(minutes=10)


def claim_unresolved(store: JobStore, owner: str, *, now=NOW, limit: int = 100):
    return store.claim_unresolved(
        now=now, owner=owner, lease_until=now + LEASE, stale_before=now - AFTER, limit=limit
    )


def uncertain(store: JobStore, *, updated_at=T0, body=None):
    [job] = reserve_all(store, [new_job(body)])
    store.mark_uncertain(job.request_id, reason="IMS answered 502", now=updated_at)
    return job


def test_an_uncertain_job_is_claimed_once_it_was_uncertain_for_reconcile_after(store):
    old = uncertain(store, updated_at=NOW - AFTER)
    young = uncertain(store, updated_at=NOW - AFTER + timedelta(seconds=1))

    claimed = claim_unresolved(store, "tick-1")

    assert [job.request_id for job in claimed] == [old.request_id]
    assert claimed[0].status is JobStatus.SUBMIT_UNCERTAIN
    assert claimed[0].fail_reason == "IMS answered 502"
    assert store.get(young.request_id).status is JobStatus.SUBMIT_UNCERTAIN


def test_a_stale_submitting_job_is_claimed_as_uncertain_and_a_young_one_left_alone(
    store, state_url
):
    stale, young = reserve_all(store, [new_job(), new_job()])
    backend_rows(
        state_url,
        "UPDATE jobs SET created_at = ?, updated_at = ? WHERE request_id = ?",
        to_epoch(NOW - AFTER),
        to_epoch(NOW - AFTER),
        stale.request_id,
    )
    backend_rows(
        state_url,
        "UPDATE jobs SET updated_at = ? WHERE request_id = ?",
        to_epoch(NOW - timedelta(minutes=1)),
        young.request_id,
    )

    [claimed] = claim_unresolved(store, "tick-1")

    assert claimed.request_id == stale.request_id
    assert claimed.status is JobStatus.SUBMIT_UNCERTAIN
    assert claimed.fail_reason == INTERRUPTED_REASON
    assert store.get(young.request_id).status is JobStatus.SUBMITTING
    assert lease_of(state_url, stale.request_id) == ("tick-1", to_epoch(NOW + LEASE))
    # The process that died answers late after all: its answer no longer applies.
    late = store.mark_submitted(stale.request_id, ims_job_id="ff80", now=NOW, next_poll_at=NOW)
    assert late.status is JobStatus.SUBMIT_UNCERTAIN
    assert late.ims_job_id is None


@pytest.mark.parametrize(
    "status",
    [s for s in JobStatus if s not in (JobStatus.SUBMITTING, JobStatus.SUBMIT_UNCERTAIN)],
    ids=str,
)
def test_jobs_whose_outcome_is_known_are_never_claimed_for_reconciliation(store, status):
    reserve_all(store, [new_job(status=status, next_poll_at=T0)])

    assert claim_unresolved(store, "tick-1", now=NOW + timedelta(days=30)) == []


def test_a_leased_job_is_not_claimed_again_until_its_lease_expires(store):
    job = uncertain(store)
    assert len(claim_unresolved(store, "tick-1")) == 1

    assert claim_unresolved(store, "tick-2") == []
    assert claim_unresolved(store, "tick-2", now=NOW + LEASE - timedelta(seconds=1)) == []
    [taken_over] = claim_unresolved(store, "tick-2", now=NOW + LEASE + timedelta(seconds=1))
    assert taken_over.request_id == job.request_id


def test_after_a_lookup_the_job_is_due_at_its_next_poll_time(store):
    job = uncertain(store)
    [leased] = claim_unresolved(store, "tick-1")
    later = NOW + timedelta(minutes=3)
    progress = PollUpdate.progress(
        leased,
        status=JobStatus.SUBMIT_UNCERTAIN,
        at=NOW,
        process_percent=None,
        next_poll_at=later,
        image_id="c1a4b2f3-0000-4000-8000-000000000001",
    )

    assert store.record_polls([progress], owner="tick-1") == [progress]

    recorded = store.get(job.request_id)
    assert recorded.status is JobStatus.SUBMIT_UNCERTAIN
    assert recorded.image_id == "c1a4b2f3-0000-4000-8000-000000000001"
    assert claim_unresolved(store, "tick-2", now=later - timedelta(seconds=1)) == []
    assert len(claim_unresolved(store, "tick-2", now=later)) == 1


def test_a_reconciled_end_is_recorded_once_and_only_by_the_lease_holder(store):
    job = uncertain(store)
    [leased] = claim_unresolved(store, "tick-1")
    end = PollUpdate.end(leased, status=JobStatus.SUCCESS, at=NOW, image_id="img-1")

    assert store.record_polls([end], owner="tick-2") == []
    assert store.record_polls([end], owner="tick-1") == [end]
    assert store.record_polls([end], owner="tick-1") == []

    recorded = store.get(job.request_id)
    assert (recorded.status, recorded.image_id, recorded.ended_at) == (
        JobStatus.SUCCESS,
        "img-1",
        NOW,
    )
    assert claim_unresolved(store, "tick-3", now=NOW + timedelta(days=1)) == []


@pytest.mark.parametrize("kind", ["csbs", "cbr"])
def test_an_unconfirmed_end_frees_the_backup_and_an_uncertain_job_holds_it(store, kind):
    body = backup_body(kind)
    job = uncertain(store, body=body)
    with pytest.raises(BackupInUseError):
        store.reserve(new_job(body))

    [leased] = claim_unresolved(store, "tick-1")
    end = PollUpdate.end(
        leased,
        status=JobStatus.UNCONFIRMED,
        at=NOW,
        error_code="WHOLEIMAGE.SUBMISSION_UNCONFIRMED",
    )
    assert store.record_polls([end], owner="tick-1") == [end]

    assert store.get(job.request_id).status is JobStatus.UNCONFIRMED
    assert store.reserve(new_job(body)).created is True


def test_claim_unresolved_takes_at_most_limit_oldest_first(store):
    jobs = [uncertain(store, updated_at=T0 - timedelta(seconds=5 - n)) for n in range(5)]

    claimed = claim_unresolved(store, "tick-1", limit=3)

    assert [job.request_id for job in claimed] == [job.request_id for job in jobs[:3]]


@pytest.mark.slow
def test_concurrent_claimers_each_take_a_job_at_most_once(store, opened_stores):
    pool = {uncertain(store).request_id for _ in range(40)}
    stores = opened_stores(6)

    taken = run_at_once(
        6,
        lambda index: [
            job.request_id for job in claim_unresolved(stores[index], f"tick-{index}", limit=9)
        ],
    )

    claimed = [request_id for batch in taken if isinstance(batch, list) for request_id in batch]
    assert [batch for batch in taken if isinstance(batch, Exception)] == []
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= pool
