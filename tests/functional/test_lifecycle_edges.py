"""The policies' part of a tick (``lifecycle.runs.run_lifecycle``) at its edges, on both stores.

Driven directly: the real store, ``FakeImsClient`` for IMS (creates, its tagged image list,
deletes and ``find_image``), the create use case for ``submit``, and a simulated clock (``now``
and ``monotonic``) the tests move. A job "ends" the way ``check`` ends it (``claim_due`` then
``record_polls``), and IMS then lists its image with the policy's two tags.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fakes import FakeImsClient
from wholeimage.create import submit_create
from wholeimage.errors import (
    ImageNotFoundError,
    ImsRejectedError,
    SubmissionUncertainError,
    UpstreamUnavailableError,
)
from wholeimage.ims.client import ImageSummary
from wholeimage.lifecycle.runs import LifecycleConfig, LifecycleSummary, run_lifecycle
from wholeimage.models import POLICY_TAG_KEY, SOURCE_TAG_KEY, CreateImageRequest, Job, JobStatus
from wholeimage.policies import Policy, policy_from_document
from wholeimage.results import JobResult
from wholeimage.store.policy_records import (
    DELETION_DELETED,
    DELETION_FAILED,
    DELETION_PENDING,
    DELETION_SENT,
    ITEM_FAILED,
)
from wholeimage.store.records import Notification, PollUpdate

pytestmark = pytest.mark.usefixtures("store_kind")

VAULT = "99999999-9999-4999-8999-999999999999"
CHANNELS = ("ops", "cmdb")
START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def instance(n: int) -> str:
    return f"{n:08d}-1111-4111-8111-111111111111"


def document(name: str = "nightly", sources: int = 2, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "schedule": {"cron": "0 2 * * *", "timezone": "UTC"},
        "sources": [
            {"instance_id": instance(n), "vault_id": VAULT, "label": f"web-{n}"}
            for n in range(1, sources + 1)
        ],
        "retention": {"keep_last": 2},
        "pause_after_failures": 3,
    }
    body.update(overrides)
    return body


def slot(day: int, hour: int = 2) -> datetime:
    """The ``hour``:00 UTC slot ``day`` days after START's day."""
    return datetime(2026, 11, 2, hour, 0, tzinfo=UTC) + timedelta(days=day)


@dataclass
class Harness:
    store: Any
    ims: FakeImsClient = field(default_factory=FakeImsClient)
    moment: datetime = START
    mono: float = 0.0
    keys: list[str] = field(default_factory=list)
    made: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return self.mono

    def at(self, moment: datetime) -> None:
        self.moment = moment

    def submit(self, request: CreateImageRequest, key: str, requested_by: str) -> Job:
        with self.lock:
            self.keys.append(key)
        return submit_create(
            request,
            idempotency_key=key,
            requested_by=requested_by,
            trace=None,
            ims=self.ims,
            store=self.store,
            first_poll_after=timedelta(0),
            now=self.now,
        ).job

    def outbox(self, result: JobResult, names: Sequence[str] | None) -> list[Notification]:
        payload = json.dumps(result.to_json(), sort_keys=True)
        return [
            Notification.new(result_key=result.key, channel=c, result_json=payload, now=self.now())
            for c in CHANNELS
            if names is None or c in names
        ]

    def apply(self, body: dict[str, Any]) -> Policy:
        policy = policy_from_document(body, cloud="huaweicloud")
        self.store.put_policy(
            policy.name,
            policy.document(),
            enabled=policy.enabled,
            next_slot_at=policy.next_slot_after(self.now()),
            reschedule=True,
            now=self.now(),
        )
        return policy

    def run(self, config: LifecycleConfig | None = None, **kwargs: Any) -> LifecycleSummary:
        return run_lifecycle(
            store=self.store,
            ims=self.ims,
            submit=self.submit,
            outbox=self.outbox,
            config=config or LifecycleConfig(),
            now=self.now,
            monotonic=kwargs.pop("monotonic", self.monotonic),
            owner=kwargs.pop("owner", "tick-1"),
        )

    def list_image(
        self, image_id: str, *, policy: str, source: str, created: datetime, status: str = "active"
    ) -> ImageSummary:
        image = ImageSummary(
            image_id=image_id,
            name=f"{source}-{created:%Y%m%d}",
            status=status,
            created_at=created.isoformat(),
            tags=(f"{POLICY_TAG_KEY}={policy}", f"{SOURCE_TAG_KEY}={source}"),
        )
        self.ims.tagged.append(image)
        self.ims.by_id[image_id] = image
        return image

    def end_jobs(self, status: JobStatus = JobStatus.SUCCESS, *, only: set[str] | None = None):
        """End the due jobs (of sources ``only``) as ``check`` would; a SUCCESS's image is then
        listed by IMS with the policy's tags."""
        claimed = self.store.claim_due(
            now=self.now(), owner="poller", lease_until=self.now() + timedelta(minutes=5), limit=100
        )
        updates = []
        for job in claimed:
            source = job.request.instance_id
            if only is not None and source not in only:
                updates.append(
                    PollUpdate(job.request_id, job.status, self.now(), self.now(), queried=False)
                )
                continue
            image_id = None
            if status is JobStatus.SUCCESS:
                self.made += 1
                image_id = f"img-{self.made:04d}"
                policy = next(
                    t.value for t in job.request.image_tags or () if t.key == POLICY_TAG_KEY
                )
                self.list_image(image_id, policy=policy, source=source, created=self.now())
            updates.append(
                PollUpdate(
                    job.request_id,
                    status,
                    self.now(),
                    None,
                    image_id=image_id,
                    error_code=None if status is JobStatus.SUCCESS else "IMS.0001",
                    fail_reason=None if status is JobStatus.SUCCESS else "the ECS is gone",
                    ended_at=self.now(),
                )
            )
        self.store.record_polls(updates, owner="poller")

    def outbox_rows(self) -> list[Notification]:
        rows: list[Notification] = self.store.claim_notifications(
            now=self.now() + timedelta(days=365),
            owner="reader",
            lease_until=self.now(),  # expired at once: the next read sees the rows again
            limit=1000,
        )
        return rows

    def run_messages(self) -> list[dict[str, Any]]:
        return [json.loads(row.result_json) for row in self.outbox_rows()]


@pytest.fixture
def h(store: Any) -> Harness:
    return Harness(store=store)


# --- 3. slots ----------------------------------------------------------------------------------


def test_nothing_runs_before_the_first_slot(h: Harness) -> None:
    h.apply(document())
    h.at(slot(0) - timedelta(seconds=1))

    summary = h.run()

    assert summary.policies_run == 0
    assert h.ims.submitted == []
    h.at(slot(0))
    assert h.run().policies_run == 1
    assert len(h.ims.submitted) == 2


def test_five_missed_days_make_only_the_latest_slot_and_say_four_were_skipped(h: Harness) -> None:
    h.apply(document())
    h.at(slot(4) + timedelta(minutes=1))

    summary = h.run()

    assert summary.slots_skipped == 4
    assert len(h.ims.submitted) == 2
    assert {key.rsplit(":", 1)[1] for key in h.keys} == {str(int(slot(4).timestamp()))}
    h.end_jobs()
    h.run()
    [message] = [m for m in h.run_messages() if m.get("fail_reason")][:1]
    assert "4 earlier slots from 2026-11-02 02:00 UTC skipped" in message["fail_reason"]


def test_a_budget_that_ends_mid_policy_goes_on_next_tick_without_resending(h: Harness) -> None:
    h.apply(document(sources=10))
    h.at(slot(0) + timedelta(minutes=1))

    # The clock's budget runs out once two sources are submitted.
    def spend_budget() -> None:
        if len(h.ims.submitted) == 2:
            h.mono += 1000.0

    h.ims.on_submit = spend_budget

    first = h.run(LifecycleConfig(time_budget=60.0))
    h.mono = 0.0  # a new tick, a new budget

    assert first.budget_exhausted
    assert len(h.ims.submitted) == 2
    h.ims.on_submit = None
    h.at(slot(0) + timedelta(minutes=2))
    h.run()

    assert len(h.ims.submitted) == 10
    submitted = [body["instance_id"] for body in h.ims.submitted]
    assert sorted(submitted) == sorted({instance(n) for n in range(1, 11)})


def test_a_throttled_create_is_retried_next_tick_with_the_same_key(h: Harness) -> None:
    h.apply(document(sources=1))
    h.ims.script = [UpstreamUnavailableError("slow down", retry_after=10)]
    h.at(slot(0) + timedelta(minutes=1))

    first = h.run()

    assert sum(first.creates.values()) == 1
    h.at(slot(0) + timedelta(minutes=3))
    h.run()

    assert len(h.ims.submitted) == 2
    assert len(set(h.keys)) == 1
    assert len(h.keys) == 2
    h.end_jobs()
    h.run()
    [message] = h.run_messages()[:1]
    assert message["status"] == "SUCCESS"


# --- 2. deletion paths -------------------------------------------------------------------------


class FlakyFindIms(FakeImsClient):
    """``find_image`` raises the next ``find_script`` entry first (IMS's list failing)."""

    def __init__(self) -> None:
        super().__init__()
        self.find_script: list[BaseException] = []

    def find_image(self, image_id: str) -> ImageSummary | None:
        if self.find_script:
            raise self.find_script.pop(0)
        return super().find_image(image_id)


def refused() -> ImsRejectedError:
    return ImsRejectedError(
        "the image is in use", http_status=400, upstream={"code": "IMG.0051", "message": "in use"}
    )


def rotation(h: Harness) -> ImageSummary:
    """A policy keeping 1 image of one source that already has an old one; its slot's image
    succeeds and the tick that sees it decides to delete the old one (and sends the delete)."""
    h.apply(document(sources=1, retention={"keep_last": 1}))
    old = h.list_image(
        "old", policy="nightly", source=instance(1), created=START - timedelta(days=3)
    )
    h.at(slot(0) + timedelta(minutes=1))
    h.run()
    h.at(slot(0) + timedelta(minutes=30))
    h.end_jobs()
    return old


def deletion(h: Harness) -> Any:
    [found] = h.store.list_deletions(policy="nightly")
    return found


def report_of(h: Harness) -> dict[str, Any]:
    messages = h.run_messages()
    assert len(messages) == len(CHANNELS)  # one per channel
    return messages[0]


def test_a_204_while_ims_still_lists_the_image_is_confirmed_once_it_is_gone(h: Harness) -> None:
    old = rotation(h)
    h.run()
    assert deletion(h).state == DELETION_SENT
    h.ims.by_id["old"] = old  # IMS answered 204 but still lists it for a while

    h.at(h.now() + timedelta(minutes=1))
    h.run()
    assert deletion(h).state == DELETION_SENT
    assert h.run_messages() == []  # the run waits for its deletion
    del h.ims.by_id["old"]
    h.at(h.now() + timedelta(minutes=1))
    h.run()

    assert deletion(h).state == DELETION_DELETED
    assert h.ims.deleted == [("old", True)]
    message = report_of(h)
    assert message["status"] == "SUCCESS"
    assert "rotated out 1: " in message["fail_reason"]
    assert "(old)" in message["fail_reason"]


def test_an_uncertain_delete_is_asked_about_and_never_resent(h: Harness) -> None:
    rotation(h)
    h.ims.delete_script = [SubmissionUncertainError("the answer was lost")]
    h.run()
    assert deletion(h).state == DELETION_SENT
    del h.ims.by_id["old"]  # the lost delete did delete it

    h.at(h.now() + timedelta(minutes=1))
    summary = h.run()

    assert deletion(h).state == DELETION_DELETED
    assert summary.deletions["deleted"] == 1
    assert h.ims.deleted == [("old", True)]
    assert report_of(h)["status"] == "SUCCESS"


def test_three_certain_refusals_fail_the_deletion_and_the_run_says_so(h: Harness) -> None:
    rotation(h)
    h.ims.delete_script = [refused(), refused(), refused()]
    h.run()
    for wait in (5, 10):  # retry_delay times the attempts
        assert deletion(h).state == DELETION_PENDING
        h.at(h.now() + timedelta(minutes=wait, seconds=1))
        h.run()

    found = deletion(h)
    assert found.state == DELETION_FAILED
    assert found.attempts == 3
    assert len(h.ims.deleted) == 3
    message = report_of(h)
    assert message["status"] == "FAIL"
    assert "could not delete 1: " in message["fail_reason"]
    assert "(old): IMG.0051" in message["fail_reason"]
    assert "IMG.0051" in message["fail_reason"]


def test_an_image_already_gone_is_deleted(h: Harness) -> None:
    rotation(h)
    h.ims.delete_script = [
        ImageNotFoundError("no such image", http_status=404, upstream={"code": "IMG.0027"})
    ]

    h.run()

    assert deletion(h).state == DELETION_DELETED
    assert report_of(h)["status"] == "SUCCESS"


def test_a_throttled_delete_does_not_count_as_an_attempt(h: Harness) -> None:
    rotation(h)
    h.ims.delete_script = [
        UpstreamUnavailableError("slow down", retry_after=120),
        refused(),
        refused(),
    ]
    h.run()
    throttled = deletion(h)
    assert throttled.state == DELETION_PENDING
    assert throttled.attempts == 0
    assert throttled.next_attempt_at >= h.now() + timedelta(seconds=120)  # Retry-After honoured

    for wait in (2, 5):
        h.at(h.now() + timedelta(minutes=wait, seconds=1))
        h.run()

    # Two refusals after the throttling: one attempt left, not spent.
    assert deletion(h).state == DELETION_PENDING
    assert deletion(h).attempts == 2
    h.at(h.now() + timedelta(minutes=10, seconds=1))
    h.run()
    assert deletion(h).state == DELETION_SENT  # the third attempt got its 204 ...
    h.at(h.now() + timedelta(minutes=1))
    h.run()
    assert deletion(h).state == DELETION_DELETED  # ... and IMS no longer lists it


def test_a_failing_image_query_keeps_the_deletion_sent(store: Any) -> None:
    ims = FlakyFindIms()
    h = Harness(store=store, ims=ims)
    old = rotation(h)
    h.run()
    h.ims.by_id["old"] = old
    ims.find_script = [UpstreamUnavailableError("down", retry_after=1)]

    h.at(h.now() + timedelta(minutes=1))
    summary = h.run()

    assert summary.errors["image_query"] == 1
    assert deletion(h).state == DELETION_SENT
    del h.ims.by_id["old"]
    h.at(h.now() + timedelta(minutes=1))
    h.run()
    assert deletion(h).state == DELETION_DELETED
    assert len(h.ims.deleted) == 1


def test_an_image_still_listed_long_after_its_204_is_deleted_again(h: Harness) -> None:
    old = rotation(h)
    h.run()
    h.ims.by_id["old"] = old

    h.at(h.now() + timedelta(minutes=31))  # beyond resend_after
    h.run()
    assert deletion(h).state == DELETION_PENDING
    h.at(h.now() + timedelta(seconds=1))
    h.run()

    assert h.ims.deleted == [("old", True), ("old", True)]
    assert deletion(h).attempts == 2


def test_a_refused_create_fails_its_item_and_the_other_sources_go_on(h: Harness) -> None:
    h.apply(document(sources=3))
    h.ims.script = ["job-1", refused()]  # the second source's create is refused
    h.at(slot(0) + timedelta(minutes=1))

    summary = h.run()

    assert summary.creates["refused"] == 1
    assert len(h.ims.submitted) == 3
    items = {
        item.source_id: item
        for item in h.store.run_items(f"policy-nightly-{int(slot(0).timestamp())}")
    }
    assert items[instance(2)].state == ITEM_FAILED
    assert items[instance(2)].error_code == "IMG.0051"
    h.end_jobs()
    h.run()
    message = report_of(h)
    assert message["status"] == "FAIL"
    assert "Created 2" in message["fail_reason"]
    assert "failed 1: web-2-20261102-0200: IMG.0051" in message["fail_reason"]


def test_a_policy_deleted_while_its_run_is_open_is_still_reported_once(h: Harness) -> None:
    h.apply(document())
    h.at(slot(0) + timedelta(minutes=1))
    h.run()
    assert h.store.delete_policy("nightly")

    h.at(slot(0) + timedelta(minutes=30))
    h.end_jobs()
    h.run()
    h.at(slot(0) + timedelta(minutes=40))
    h.run()

    message = report_of(h)  # once per channel
    assert message["status"] == "SUCCESS"
    assert "Created 2" in message["fail_reason"]


def put_document(h: Harness, name: str, text: str) -> None:
    """Overwrite a stored policy's document (as a bad migration or hand edit would)."""
    with h.store._transaction() as handle:
        h.store._run(
            handle, "UPDATE policies SET document = :d WHERE name = :n", {"d": text, "n": name}
        )


@pytest.mark.parametrize(
    "broken",
    [
        '{"name": "broken", "schedule": 5}',
        '["not", "a", "policy"]',
        # Reads as a Policy, but its schedule is no cron expression.
        json.dumps({**document("broken"), "schedule": {"cron": "every day", "timezone": "UTC"}}),
        json.dumps(
            {**document("broken"), "schedule": {"cron": "0 2 * * *", "timezone": "Mars/Base"}}
        ),
    ],
)
def test_an_unreadable_stored_policy_is_paused_and_the_others_run(h: Harness, broken: str) -> None:
    h.apply(document("broken", sources=1))
    h.apply(document("nightly", sources=1))
    put_document(h, "broken", broken)
    h.at(slot(0) + timedelta(minutes=1))

    h.run()
    h.at(slot(0) + timedelta(minutes=20))
    h.run()

    record = h.store.get_policy("broken")
    assert record.paused
    assert "cannot be read" in (record.paused_reason or "")
    assert [body["name"] for body in h.ims.submitted] == ["web-1-20261102-0200"]
    assert all(key.startswith("policy:nightly:") for key in h.keys)


# --- 4. exactly once -----------------------------------------------------------------------------


def ended_run(h: Harness) -> None:
    h.apply(document())
    h.at(slot(0) + timedelta(minutes=1))
    h.run()
    h.at(slot(0) + timedelta(minutes=30))
    h.end_jobs()


def test_two_concurrent_phases_write_one_message_per_channel(h: Harness) -> None:
    ended_run(h)
    barrier = threading.Barrier(2)

    def tick(owner: str) -> None:
        barrier.wait()
        h.run(owner=owner)

    threads = [threading.Thread(target=tick, args=(f"tick-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    h.run()

    rows = h.outbox_rows()
    assert Counter(row.channel for row in rows) == dict.fromkeys(CHANNELS, 1)
    assert h.store.policy_runs("nightly")[0].state == "REPORTED"


def test_a_crash_between_the_outbox_and_marking_the_run_repeats_nothing(h: Harness) -> None:
    from wholeimage.lifecycle.report import run_result

    ended_run(h)
    h.run(LifecycleConfig(), owner="first")  # ends the items, and reports
    assert len(h.outbox_rows()) == 2
    # Put the run back as a crash would have left it: in the outbox, not marked reported.
    with h.store._transaction() as handle:
        h.store._run(handle, "UPDATE policy_runs SET state = 'OPEN', reported_at = NULL", {})
    [run] = h.store.unreported_runs(limit=10)
    policy = Policy.model_validate(h.store.get_policy("nightly").document)
    result = run_result(
        policy,
        run,
        h.store.run_items(run.run_id),
        h.store.run_deletions(run.run_id),
        paused_reason=None,
        now=h.now(),
    )
    h.store.add_notifications(h.outbox(result, None))  # the crashed tick's write, again

    h.at(h.now() + timedelta(minutes=5))
    summary = h.run()

    assert summary.runs_reported == 1
    assert Counter(row.channel for row in h.outbox_rows()) == dict.fromkeys(CHANNELS, 1)
    assert h.store.unreported_runs(limit=10) == []


def test_two_ticks_ending_the_same_item_record_each_deletion_once(h: Harness) -> None:
    h.apply(document(sources=1, retention={"keep_last": 1}))
    for n in range(3):
        h.list_image(
            f"old-{n}", policy="nightly", source=instance(1), created=START - timedelta(days=n + 1)
        )
    h.at(slot(0) + timedelta(minutes=1))
    h.run()
    h.at(slot(0) + timedelta(minutes=30))
    h.end_jobs()
    barrier = threading.Barrier(2)
    summaries: list[LifecycleSummary] = []

    def tick(owner: str) -> None:
        barrier.wait()
        summaries.append(h.run(owner=owner))

    threads = [threading.Thread(target=tick, args=(f"tick-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(s.items_ended["SUCCESS"] for s in summaries) == 1
    assert sorted(d.image_id for d in h.store.list_deletions(policy="nightly")) == [
        "old-0",
        "old-1",
        "old-2",
    ]
    assert sorted(image_id for image_id, _ in h.ims.deleted) == ["old-0", "old-1", "old-2"]


# --- 5. failure counting ---------------------------------------------------------------------


def day_with_failing_source(h: Harness, day: int, *, failing: bool) -> None:
    h.at(slot(day) + timedelta(minutes=1))
    h.run()
    h.at(slot(day) + timedelta(minutes=30))
    if failing:
        h.end_jobs(JobStatus.FAIL, only={instance(2)})
    h.end_jobs()
    h.run()
    h.at(slot(day) + timedelta(minutes=40))
    h.run()


def test_two_failing_runs_in_a_row_pause_the_policy(h: Harness) -> None:
    h.apply(document(pause_after_failures=2, retention={"keep_last": 5}))

    day_with_failing_source(h, 0, failing=True)
    assert not h.store.get_policy("nightly").paused
    day_with_failing_source(h, 1, failing=True)

    record = h.store.get_policy("nightly")
    assert record.paused
    assert "2 runs in a row" in (record.paused_reason or "")
    h.at(slot(2) + timedelta(minutes=1))
    h.run()
    assert len(h.ims.submitted) == 4  # the paused policy made nothing on day 2


def test_a_successful_run_in_between_resets_the_count(h: Harness) -> None:
    h.apply(document(pause_after_failures=2, retention={"keep_last": 5}))

    day_with_failing_source(h, 0, failing=True)
    day_with_failing_source(h, 1, failing=False)
    day_with_failing_source(h, 2, failing=True)

    record = h.store.get_policy("nightly")
    assert not record.paused
    assert record.failures == 1
    assert len(h.ims.submitted) == 6


# --- 6. schedules and names ----------------------------------------------------------------------


def night_of(h: Harness, start: datetime, hours: int, every: int) -> None:
    """Ticks every ``every`` minutes for ``hours``, ending each job at once."""
    moment = start
    while moment < start + timedelta(hours=hours):
        h.at(moment)
        h.run()
        h.end_jobs()
        moment += timedelta(minutes=every)


@pytest.mark.parametrize(
    ("night", "local_slot"),
    [
        # Spring forward: 02:30 does not exist that night; the day still gets one image.
        (datetime(2027, 3, 27, 20, 0, tzinfo=UTC), None),
        # Fall back: 02:30 happens twice; a daily policy still makes one image that day.
        (datetime(2027, 10, 30, 20, 0, tzinfo=UTC), "20271031-0230"),
    ],
)
@pytest.mark.parametrize("every", [10, 25, 60, 90])
def test_a_0230_berlin_policy_makes_one_image_on_each_dst_night(
    h: Harness, night: datetime, local_slot: str | None, every: int
) -> None:
    h.at(night)
    h.apply(document(sources=1, schedule={"cron": "30 2 * * *", "timezone": "Europe/Berlin"}))

    night_of(h, night, 12, every)

    names = [body["name"] for body in h.ims.submitted]
    assert len(names) == 1, names
    assert len(set(h.keys)) == 1
    if local_slot is not None:
        assert names == [f"web-1-{local_slot}"]
    assert h.run_messages()[0]["status"] == "SUCCESS"
    assert "skipped" not in h.run_messages()[0]["fail_reason"]


def test_a_cron_that_never_falls_and_a_name_too_long_are_refused_at_apply(h: Harness) -> None:
    from wholeimage.errors import RequestInvalidError

    with pytest.raises(RequestInvalidError) as never:
        h.apply(document(schedule={"cron": "0 2 30 2 *", "timezone": "UTC"}))
    assert never.value.details == [{"path": "$.schedule.cron", "message": "never falls on a date"}]
    # A 64-character label (the most a label may be) in a long template: the name would pass 128.
    long_template = "{policy}-{source}-{source}-{slot}"
    body = document(sources=1, image={"name_template": long_template})
    body["sources"][0]["label"] = "l" * 64
    with pytest.raises(RequestInvalidError) as long_name:
        h.apply(body)
    [problem] = long_name.value.details
    assert problem["path"] == "$.image.name_template"
    assert "gives source 0 the name" in problem["message"]
    assert h.store.list_policies() == []


def test_an_upper_case_source_is_one_source_with_its_lower_case_images(h: Harness) -> None:
    body = document(sources=1, retention={"keep_last": 1})
    body["sources"][0]["instance_id"] = instance(1).upper()
    h.apply(body)
    # An image listed with the id in upper case (as an older apply may have tagged it).
    upper = ImageSummary(
        "old-upper",
        "old",
        "active",
        created_at=(START - timedelta(days=2)).isoformat(),
        tags=("wholeimage_policy=nightly", f"wholeimage_source={instance(1).upper()}"),
    )
    h.ims.tagged.append(upper)
    h.ims.by_id["old-upper"] = upper
    h.at(slot(0) + timedelta(minutes=1))
    h.run()
    h.at(slot(0) + timedelta(minutes=30))
    h.end_jobs()
    h.run()

    assert h.keys == [f"policy:nightly:{instance(1)}:{int(slot(0).timestamp())}"]
    assert h.ims.submitted[0]["instance_id"] == instance(1)
    assert h.ims.deleted == [("old-upper", True)]


def test_a_stored_document_that_is_not_json_stops_neither_other_policies_nor_reports(
    h: Harness,
) -> None:
    h.apply(document("broken", sources=1))
    h.apply(document("nightly", sources=1))
    h.at(slot(0) + timedelta(minutes=1))
    h.run()
    h.at(slot(0) + timedelta(minutes=30))
    h.end_jobs()
    put_document(h, "broken", "{not json")

    h.run()
    h.at(slot(1) + timedelta(minutes=1))
    h.run()

    # nightly's day-0 run is reported and its day-1 slot runs despite the broken row.
    assert {m["request_id"] for m in h.run_messages()} >= {
        f"policy-nightly-{int(slot(0).timestamp())}"
    }
    assert "web-1-20261103-0200" in [body["name"] for body in h.ims.submitted]
    record = h.store.get_policy("broken")
    assert record.paused
    assert "cannot be read" in (record.paused_reason or "")


def test_a_successful_run_still_confirming_a_deletion_breaks_the_row_of_failures(
    h: Harness,
) -> None:
    # Hourly; run 0 fails, run 1 succeeds but its deletion is still being confirmed (IMS lists
    # the image after its 204) when run 2 fails: that is not two failed runs in a row.
    h.apply(
        document(
            pause_after_failures=2,
            retention={"keep_last": 1},
            schedule={"cron": "0 * * * *", "timezone": "UTC"},
        )
    )
    first = datetime(2026, 11, 1, 13, 0, tzinfo=UTC)
    h.at(first + timedelta(minutes=1))
    h.run()
    h.end_jobs(JobStatus.FAIL, only={instance(2)})
    h.end_jobs()
    h.run()
    h.at(first + timedelta(hours=1, minutes=1))
    h.run()
    h.at(first + timedelta(hours=1, minutes=20))
    h.end_jobs()
    h.run()  # run 1 succeeded; source 1's image of run 0 is rotated out (a 204) ...
    for image_id, _ in h.ims.deleted:
        h.ims.by_id[image_id] = ImageSummary(image_id, image_id, "active")  # ... still listed
    h.at(first + timedelta(hours=2, minutes=1))
    h.run()
    h.at(first + timedelta(hours=2, minutes=20))
    h.end_jobs(JobStatus.FAIL, only={instance(2)})
    h.run()

    assert h.ims.deleted  # run 1 did rotate an image out
    assert not h.store.get_policy("nightly").paused
