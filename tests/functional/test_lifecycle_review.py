"""What a review of the policies' engine found, each as the behaviour that now holds, on both
stores: a row that cannot finish never holds the others up; a refused delete ends and is
reported; IMS text is redacted and bounded; a run's message always reaches a channel; a run's
sources are its own; a failed deletion is tried again by the next run.

The harness is ``test_lifecycle_edges``'s: ``run_lifecycle`` over the real store, the create use
case and ``FakeImsClient``, on a simulated clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeImsClient, make_dependencies
from tests.functional.test_lifecycle_edges import Harness, document, h, instance, slot  # noqa: F401
from wholeimage.errors import ImsRejectedError, UpstreamAuthError, UpstreamError
from wholeimage.ims.client import ImageSummary
from wholeimage.lifecycle.retention import policy_images
from wholeimage.lifecycle.runs import LifecycleConfig
from wholeimage.logs import register_secrets
from wholeimage.models import POLICY_TAG_KEY, SOURCE_TAG_KEY
from wholeimage.results import JobResult
from wholeimage.service.lifecycle import run_outbox
from wholeimage.store.policy_records import DELETION_FAILED, ITEM_CREATING

pytestmark = pytest.mark.usefixtures("store_kind")


def ops_messages(harness: Harness) -> list[dict[str, Any]]:
    """The run messages in the outbox of one channel (each run has one per channel)."""
    return [json.loads(row.result_json) for row in harness.outbox_rows() if row.channel == "ops"]


def night(harness: Harness, day: int) -> None:
    """One slot's night: its creates, their jobs' ends 30 minutes on, then hourly ticks for 7
    hours, long enough for deletions to be sent, retried three times and settled."""
    harness.at(slot(day))
    harness.run()
    harness.at(slot(day) + timedelta(minutes=30))
    harness.end_jobs()
    for hours in range(1, 8):
        harness.at(slot(day) + timedelta(hours=hours))
        harness.run()


@dataclass
class ListFailsFor(FakeImsClient):
    """IMS's image list fails for one policy's tag, and answers for the others."""

    failing: str = ""

    def list_images_by_tag(
        self, *, tag_key: str, tag_value: str, **kwargs: Any
    ) -> list[ImageSummary]:
        if tag_value == self.failing:
            raise UpstreamError("IMS answered 403 to an image query", upstream={"status": 403})
        return super().list_images_by_tag(tag_key=tag_key, tag_value=tag_value, **kwargs)


def test_an_item_whose_list_keeps_failing_never_holds_up_other_policies(store: Any) -> None:
    harness = Harness(store=store, ims=ListFailsFor(failing="stuck"))
    harness.apply(document("stuck", sources=3))
    harness.apply(document("fine", sources=1))
    small = LifecycleConfig(batch=2)
    harness.at(slot(0))
    harness.run(small)
    harness.run(small)
    harness.at(slot(0) + timedelta(minutes=30))
    harness.end_jobs()

    for minute in range(31, 36):
        harness.at(slot(0) + timedelta(minutes=minute))
        harness.run(small)

    fine = [m for m in ops_messages(harness) if m["source"]["id"] == "fine"]
    assert [m["status"] for m in fine][:1] == ["SUCCESS"]
    stuck = store.run_items(f"policy-stuck-{int(slot(0).timestamp())}")
    assert {item.state for item in stuck} == {ITEM_CREATING}
    assert all(item.checks >= 1 for item in stuck)
    assert all("IMS's image list failed" in (item.detail or "") for item in stuck)

    # Asked often enough, the images are kept as made and the run says retention did not run.
    config = LifecycleConfig(batch=2, retention_checks=2)
    harness.at(slot(0) + timedelta(hours=2))
    harness.run(config)
    harness.run(config)
    harness.run(config)
    [message] = [m for m in ops_messages(harness) if m["source"]["id"] == "stuck"]
    assert message["status"] == "FAIL"
    assert "retention did not run for 3" in message["fail_reason"]


def test_a_delete_refused_with_403_ends_failed_and_is_reported(h: Harness) -> None:  # noqa: F811
    h.apply(document(sources=1, retention={"keep_last": 1}))
    old = h.list_image(
        "img-old", policy="nightly", source=instance(1), created=slot(0) - timedelta(days=3)
    )
    h.ims.delete_script = [UpstreamAuthError("IMS refused wholeimage's credentials (403)")] * 5

    night(h, 0)

    [deletion] = h.store.list_deletions(policy="nightly")
    assert deletion.image_id == old.image_id
    assert deletion.state == DELETION_FAILED
    assert deletion.attempts == 3
    [message] = ops_messages(h)
    assert "could not delete 1" in message["fail_reason"]


def test_ims_text_is_redacted_and_bounded_in_rows_and_messages(h: Harness) -> None:  # noqa: F811
    secret = "hunter2-webhook-token-0123456789"
    register_secrets([secret])
    h.apply(document(sources=1, retention={"keep_last": 1}))
    h.list_image(
        "img-old", policy="nightly", source=instance(1), created=slot(0) - timedelta(days=3)
    )
    # A NUL too: PostgreSQL refuses one in text, so it must not reach the row.
    quoted = f"IMS refused: the request carried {secret}\x00 " + "x" * 5000
    refusal = ImsRejectedError(quoted, http_status=400, upstream={"code": "IMG.0028"})
    h.ims.delete_script = [refusal] * 3
    night(h, 0)

    [deletion] = h.store.list_deletions(policy="nightly")
    assert secret not in (deletion.last_error or "")
    assert "\x00" not in (deletion.last_error or "")
    assert len(deletion.last_error or "") <= 500
    [message] = ops_messages(h)
    assert secret not in json.dumps(message)
    assert len(message["fail_reason"]) <= 4096


def test_a_policy_naming_only_unknown_channels_is_heard_on_every_channel(tmp_path: Path) -> None:
    deps = make_dependencies(
        tmp_path,
        channels=[
            {"name": "ops", "format": "slack", "url": "file:/dev/null"},
            {"name": "cmdb", "format": "slack", "url": "file:/dev/null"},
        ],
    )
    outbox = run_outbox(deps)  # the outbox as the tick builds it
    assert outbox is not None
    result = JobResult.from_json(
        {"request_id": "policy-nightly-1", "status": "FAIL", "image_name": "policy nightly"}
    )

    try:
        assert {row.channel for row in outbox(result, ["opz"])} == {"ops", "cmdb"}
        assert {row.channel for row in outbox(result, ["ops"])} == {"ops"}
    finally:
        deps.store.close()


def test_a_source_added_while_a_run_is_open_is_not_missing_from_it(h: Harness) -> None:  # noqa: F811
    h.apply(document(sources=1))
    h.at(slot(0))
    h.run()
    h.apply(document(sources=2))  # the same schedule: the next slot stays
    h.at(slot(0) + timedelta(minutes=30))
    h.end_jobs()
    h.run()

    [message] = ops_messages(h)
    assert message["status"] == "SUCCESS"
    assert "not submitted" not in message["fail_reason"]


def test_a_failed_deletion_is_tried_again_by_the_next_run(h: Harness) -> None:  # noqa: F811
    h.apply(document(sources=1, retention={"keep_last": 1}))
    h.list_image(
        "img-old", policy="nightly", source=instance(1), created=slot(0) - timedelta(days=3)
    )
    refusal = ImsRejectedError("in use", http_status=400, upstream={"code": "IMG.0176"})
    h.ims.delete_script = [refusal] * 3
    for day in range(2):
        night(h, day)

    deletions = {d.image_id: d for d in h.store.list_deletions(policy="nightly")}
    # Day 0's refusals spent the first three tries; day 1 tried again and IMS took it.
    assert deletions["img-old"].state == "DELETED"
    assert deletions["img-old"].run_id.endswith(str(int(slot(1).timestamp())))
    assert [image_id for image_id, _ in h.ims.deleted].count("img-old") == 4


def test_a_stored_template_with_an_unknown_placeholder_pauses_that_policy(
    h: Harness,  # noqa: F811
) -> None:
    h.apply(document("broken", sources=1))
    h.apply(document("fine", sources=1))
    record = h.store.get_policy("broken")
    broken = {**record.document, "image": {**record.document["image"], "name_template": "{host}"}}
    h.store.put_policy(
        "broken",
        broken,
        enabled=True,
        next_slot_at=record.next_slot_at,
        reschedule=False,
        now=h.now(),
    )
    h.at(slot(0))

    h.run()

    assert h.store.get_policy("broken").paused
    assert len(h.ims.submitted) == 1


def test_tags_listed_for_other_sources_and_policies_stay_out_of_one_sources_ranking() -> None:
    # A guard on the tags retention reads: both must be listed, as key=value or key.value.
    tagged = ImageSummary(
        image_id="a",
        name="a",
        status="active",
        created_at="2026-11-01T00:00:00Z",
        tags=(f"{POLICY_TAG_KEY}.nightly", f"{SOURCE_TAG_KEY}.{instance(1)}"),
    )
    assert list(policy_images([tagged], "nightly")) == [instance(1)]
