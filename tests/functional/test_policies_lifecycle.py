"""Lifecycle policies end to end (issue 11, "Done when"), against the IMS emulator on a simulated
clock, on SQLite and on PostgreSQL.

Each test runs real ``check`` ticks (``wholeimage.service.tick.tick``: polls, then the
policies' part) whose clock, like the emulator's, runs ahead of real time, and delivers the
outbox to two file sinks (Slack's format and Standard Webhooks) on the same clock:

- ten days of a daily policy over three servers with ``keep_last`` 3 leave exactly 3 images per
  server in IMS; every rotated image is deleted once (with its backup) and named in one run
  message; each run has exactly one message per channel, and the policy's jobs none of their own;
- eight ticks at once at each slot make exactly one image per slot and source;
- a server whose creates fail keeps every old image, and three failures in a row pause the policy;
- images without the policy's tags, and images of another policy, are never touched, also after
  the store is wiped (the policy's own old images are still rotated: IMS says which they are);
- ``plan`` names the images the next slots then create and delete.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.fakes import make_settings
from wholeimage.bootstrap import Dependencies, open_store
from wholeimage.models import POLICY_TAG_KEY, SOURCE_TAG_KEY
from wholeimage.notify import ChannelLimiters, NotifyConfig, deliver_pending
from wholeimage.policies import Policy, policy_from_document
from wholeimage.service.lifecycle import plan_policies
from wholeimage.service.outbox import channels, webhook_http
from wholeimage.service.policies import policy_store
from wholeimage.service.tick import tick

pytestmark = pytest.mark.usefixtures("store_kind")

AK, SK = EmulatorConfig().ak, EmulatorConfig().sk
SERVERS = [
    ("11111111-1111-4111-8111-111111111111", "web-1"),
    ("22222222-2222-4222-8222-222222222222", "web-2"),
    ("33333333-3333-4333-8333-333333333333", "db-1"),
]
VAULT = "99999999-9999-4999-8999-999999999999"
JOB_SECONDS = 1800.0  # an emulated full-ECS image takes 30 minutes
SECRET = "whsec_" + base64.b64encode(b"policies-lifecycle-secret-32-byt").decode()
# AK/SK signatures carry real time; the simulated clock runs days ahead.
ANY_SKEW = 1e10


class SimClock:
    """Seconds since the epoch for the emulator, and ``now`` for the ticks; moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.moment = start.timestamp()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.moment

    def now(self) -> datetime:
        return datetime.fromtimestamp(self(), UTC)

    def set(self, moment: datetime) -> None:
        with self._lock:
            self.moment = max(self.moment, moment.timestamp())

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.moment += seconds


def policy_document(name: str = "nightly", **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": name,
        "schedule": {"cron": "0 2 * * *", "timezone": "UTC"},
        "sources": [
            {"instance_id": instance, "vault_id": VAULT, "label": label}
            for instance, label in SERVERS
        ],
        "image": {"name_template": "{source}-{slot}", "tags": [{"key": "env", "value": "prod"}]},
        "retention": {"keep_last": 3},
        "pause_after_failures": 3,
    }
    document.update(overrides)
    return document


@dataclass
class World:
    ims: ImsEmulator
    clock: SimClock
    deps: Dependencies
    sinks: Path

    def apply(self, document: dict[str, Any]) -> Policy:
        policy = policy_from_document(document, cloud="huaweicloud")
        policy_store(self.deps).put_policy(
            policy.name,
            policy.document(),
            enabled=policy.enabled,
            next_slot_at=policy.next_slot_after(self.clock.now()),
            reschedule=True,
            now=self.clock.now(),
        )
        return policy

    def tick(self) -> dict[str, Any]:
        report = tick(self.deps, now=self.clock.now).as_json()
        # Nothing here may fail inside the policies' part (a store error is contained and
        # counted, so it would go unseen otherwise).
        assert report["policies"]["errors"] == {}, report["policies"]
        deliver_pending(
            store=self.deps.store,
            channels=channels(self.deps),
            http=webhook_http(self.deps),
            config=NotifyConfig(),
            now=self.clock.now,
            monotonic=self.clock,
            sleep=self.clock.advance,
            limiters=ChannelLimiters(clock=self.clock),
        )
        return report

    def day(self, slot: datetime) -> None:
        """The ticks of one slot: at it, when the jobs end, and while deletions are confirmed."""
        for offset in (1, 35, 40, 45, 50):
            self.clock.set(slot + timedelta(minutes=offset))
            self.tick()

    def images(self, *, policy: str = "nightly") -> dict[str, list[dict[str, Any]]]:
        """The emulator's live images of ``policy``, by source instance id, oldest first."""
        found: dict[str, list[dict[str, Any]]] = {instance: [] for instance, _ in SERVERS}
        for image in self.ims.images():
            tags = set(image["tags"])
            if image["status"] == "deleted" or f"{POLICY_TAG_KEY}={policy}" not in tags:
                continue
            for instance, listed in found.items():
                if f"{SOURCE_TAG_KEY}={instance}" in tags:
                    listed.append(image)
        return found

    def messages(self, channel: str) -> list[dict[str, Any]]:
        path = self.sinks / f"{channel}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["message"] for line in path.read_text("utf-8").splitlines()]

    def run_events(self) -> list[dict[str, Any]]:
        """The Standard Webhooks events of policy runs, each result of a digest on its own."""
        events = []
        for event in self.messages("cmdb"):
            data = event["data"]
            for result in data.get("results", [data]):
                events.append(result)
        return events


def settings_for(ims_url: str, state_url: str, sinks: Path) -> Any:
    return make_settings(
        ims_endpoint=ims_url,
        access_key=AK,
        secret_key=SK,
        state_url=state_url,
        ims_timeout=5.0,
        poll_min_interval=0,
        poll_max_interval=0,
        ims_rate_limit=0,
        notify_inline=False,
        channels=[
            {"name": "ops", "format": "slack", "url": f"file:{sinks / 'ops.jsonl'}"},
            {
                "name": "cmdb",
                "format": "standard",
                "url": f"file:{sinks / 'cmdb.jsonl'}",
                "secret": SECRET,
            },
        ],
    )


START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def world(state_url: str, tmp_path: Path) -> Iterator[World]:
    clock = SimClock(START)
    config = EmulatorConfig(job_seconds=JOB_SECONDS, max_clock_skew_seconds=ANY_SKEW)
    with ImsEmulator(config, clock=clock) as ims:
        sinks = tmp_path / "sinks"
        sinks.mkdir()
        deps = Dependencies(
            settings=settings_for(ims.url, state_url, sinks), store=open_store(state_url)
        )
        made = World(ims=ims, clock=clock, deps=deps, sinks=sinks)
        world_deps = [deps]
        try:
            yield made
            world_deps[0] = made.deps
        finally:
            close(world_deps[0])


def close(deps: Dependencies) -> None:
    """Release the store's connections and the IMS clients' sockets."""
    for built in (deps.ims, deps.webhooks):
        close_port = getattr(built, "close", None)
        if close_port is not None:
            close_port()
    deps.store.close()


def rotated_part(text: str) -> str:
    """The "rotated out ..." sentence part of a run message."""
    return next((part for part in text.split(". ") if part.startswith("rotated out")), "")


def slot_of(day: int) -> datetime:
    """The 02:00 UTC slot ``day`` days after the policy was applied (on START's day)."""
    return datetime(2026, 11, 2, 2, 0, tzinfo=UTC) + timedelta(days=day)


def test_ten_days_of_a_daily_policy_keep_three_images_per_server(world: World) -> None:
    world.apply(policy_document())

    for day in range(10):
        world.day(slot_of(day))

    images = world.images()
    assert {instance: len(found) for instance, found in images.items()} == {
        instance: 3 for instance, _ in SERVERS
    }
    for instance, label in SERVERS:
        names = [image["name"] for image in images[instance]]
        assert names == [f"{label}-{slot_of(day):%Y%m%d-%H%M}" for day in (7, 8, 9)]
        assert all(image["status"] == "active" for image in images[instance])
    # Every rotated image deleted once, with its backup: 7 a server.
    deleted = [image_id for image_id, _, _ in world.ims.deletions]
    assert len(deleted) == len(set(deleted)) == 7 * len(SERVERS)
    assert {backup for _, backup, _ in world.ims.deletions} == {True}
    assert world.ims.calls.get("create") == 10 * len(SERVERS)
    # One message per run and channel, naming what it rotated out; none per policy job.
    runs = world.run_events()
    assert all(result["source"]["kind"] == "policy" for result in runs)
    assert Counter(result["key"] for result in runs) == Counter(
        dict.fromkeys({result["key"] for result in runs}, 1)
    )
    assert len(runs) == 10
    assert {result["status"] for result in runs} == {"SUCCESS"}
    named = Counter(
        image_id
        for result in runs
        for image_id in deleted
        if image_id in rotated_part(result["fail_reason"])
    )
    assert named == Counter(dict.fromkeys(deleted, 1))
    ops = world.messages("ops")
    assert sum(1 for message in ops if "Run of policy nightly" in json.dumps(message)) == 10
    assert not any("Image web-1-" in json.dumps(message) for message in ops)


def test_eight_overlapping_ticks_per_slot_make_one_image_per_slot_and_source(
    world: World,
) -> None:
    world.apply(policy_document(retention={"keep_last": 30}))

    for day in range(3):
        world.clock.set(slot_of(day) + timedelta(minutes=1))
        ticks = [threading.Thread(target=world.tick) for _ in range(8)]
        for thread in ticks:
            thread.start()
        for thread in ticks:
            thread.join()
        world.day(slot_of(day))

    assert world.ims.calls.get("create") == 3 * len(SERVERS)
    for instance, label in SERVERS:
        names = sorted(image["name"] for image in world.images()[instance])
        assert names == [f"{label}-{slot_of(day):%Y%m%d-%H%M}" for day in range(3)]
    assert len(world.run_events()) == 3


def test_a_failing_create_keeps_every_old_image_and_pauses_the_policy(world: World) -> None:
    world.apply(policy_document())
    for day in range(4):
        world.day(slot_of(day))
    failing, _ = SERVERS[1]
    kept = {image["id"] for image in world.images()[failing]}
    assert len(kept) == 3
    world.ims.config.fail_sources.add(failing)

    for day in range(4, 8):
        world.day(slot_of(day))

    # The failing server's images are untouched (its failed creates' killed images beside them
    # are left alone too); the others rotate on until the pause.
    images = world.images()[failing]
    assert {image["id"] for image in images if image["status"] == "active"} == kept
    assert Counter(image["status"] for image in images) == {"active": 3, "killed": 3}
    assert not kept & {image_id for image_id, _, _ in world.ims.deletions}
    record = policy_store(world.deps).get_policy("nightly")
    assert record is not None
    assert record.paused
    assert "3 runs in a row had a create that did not succeed" in (record.paused_reason or "")
    # Slots 4, 5, 6 ran (one failure each); the pause stopped slot 7.
    assert world.ims.calls.get("create") == 7 * len(SERVERS)
    runs = world.run_events()
    assert [result["status"] for result in runs] == ["SUCCESS"] * 4 + ["FAIL"] * 3
    assert "paused itself" in runs[-1]["fail_reason"]
    assert runs[-1]["error_code"] == "WHOLEIMAGE.POLICY_PAUSED"


def test_foreign_images_and_other_policies_images_are_never_touched_even_after_a_wipe(
    world: World, state_url: str, tmp_path: Path
) -> None:
    instance, _ = SERVERS[0]
    old = (START - timedelta(days=60)).timestamp()
    foreign = [
        # The source's tag without the policy's.
        world.ims.add_image("hand-made", tags={SOURCE_TAG_KEY: instance}, created_at=old),
        # Another policy's image of the same server.
        world.ims.add_image(
            "other-policy",
            tags={POLICY_TAG_KEY: "weekly", SOURCE_TAG_KEY: instance},
            created_at=old,
        ),
        # The policy's tag with no source tag: not provably one source's.
        world.ims.add_image("no-source", tags={POLICY_TAG_KEY: "nightly"}, created_at=old),
        # The policy's name as a prefix only.
        world.ims.add_image(
            "prefix",
            tags={POLICY_TAG_KEY: "nightly-2", SOURCE_TAG_KEY: instance},
            created_at=old,
        ),
        # No tags at all.
        world.ims.add_image("untagged", created_at=old),
    ]
    world.apply(policy_document())
    for day in range(4):
        world.day(slot_of(day))

    # The store is lost: a new, empty one; the policy is applied again.
    wiped = f"sqlite:///{tmp_path / 'wiped.db'}" if state_url.startswith("sqlite") else None
    if wiped is not None:
        close(world.deps)
        world.deps = Dependencies(settings=world.deps.settings, store=open_store(wiped))
    else:
        store = policy_store(world.deps)
        with store._transaction() as handle:
            for table in (
                "jobs",
                "notifications",
                "policies",
                "policy_runs",
                "policy_items",
                "image_deletions",
            ):
                store._run(handle, f"DELETE FROM {table}", {})
    world.apply(policy_document())
    for day in range(4, 8):
        world.day(slot_of(day))

    deleted = {image_id for image_id, _, _ in world.ims.deletions}
    assert not deleted & {image["id"] for image in foreign}
    live = {image["id"] for image in world.ims.images() if image["status"] != "deleted"}
    assert {image["id"] for image in foreign} <= live
    # The images made before the wipe were rotated out all the same: IMS lists their tags.
    assert {instance: len(found) for instance, found in world.images().items()} == {
        instance: 3 for instance, _ in SERVERS
    }
    assert len(deleted) == 5 * len(SERVERS)


def test_plan_names_what_the_next_slots_then_create_and_delete(world: World) -> None:
    world.apply(policy_document(retention={"keep_last": 2}))
    for day in range(3):
        world.day(slot_of(day))
    world.clock.set(slot_of(2) + timedelta(hours=6))
    creates_before = world.ims.calls.get("create")
    deletes_before = len(world.ims.deletions)

    [plan] = plan_policies(world.deps, name="nightly", slots=3, now=world.clock.now())

    assert world.ims.calls.get("create") == creates_before  # no IMS write
    assert len(world.ims.deletions) == deletes_before
    assert [slot.slot_at for slot in plan.slots] == [slot_of(day) for day in (3, 4, 5)]
    planned_names = [image.name for slot in plan.slots for image in slot.creates]
    planned_deletes = [
        image.image_id
        for slot in plan.slots
        for image in slot.deletes
        if image.image_id and not image.image_id.startswith("planned:")
    ]
    assert len(planned_deletes) == 2 * len(SERVERS)  # the two existing images each, one a slot
    for day in (3, 4, 5):
        world.day(slot_of(day))
    made = sorted(
        image["name"]
        for image in world.ims.images()
        if any(image["name"].endswith(f"{slot_of(day):%Y%m%d-%H%M}") for day in (3, 4, 5))
    )
    assert sorted(planned_names) == made
    deleted_since = [image_id for image_id, _, _ in world.ims.deletions[deletes_before:]]
    # The existing images plan named are what the runs deleted, plus planned images of the
    # first planned slot, which the third slot rotated out.
    assert set(planned_deletes) <= set(deleted_since)
    planned_virtual = [
        image.name
        for slot in plan.slots
        for image in slot.deletes
        if image.image_id and image.image_id.startswith("planned:")
    ]
    deleted_names = {
        image["name"] for image in world.ims.images() if image["id"] in set(deleted_since)
    }
    assert set(planned_virtual) <= deleted_names
    assert len(deleted_since) == len(planned_deletes) + len(planned_virtual)


def test_a_tick_with_policies_answers_the_check_summary_schema(world: World) -> None:
    from wholeimage.validation import validate

    world.apply(policy_document())
    world.clock.set(slot_of(0) + timedelta(minutes=1))
    answer = world.tick()

    validate("check-summary.schema.json", answer)
    assert answer["policies"]["policies_run"] == 1
    assert answer["policies"]["creates"] == {"SUBMITTED": 3}
