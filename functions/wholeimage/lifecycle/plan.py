"""``policy plan``: what a policy's next slots would create and rotate out, with no IMS write.

The plan reads IMS's list of the policy's images once (``GET /v2/cloudimages`` by its tag) and
replays retention (``retention.decide_retention``, the rule the tick applies) slot by slot, as
if each planned image succeeded at its slot: each existing image is either dropped after a
given slot, or kept, and the plan says why (docs/policies.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wholeimage.errors import UpstreamError
from wholeimage.ims.client import ImsClient
from wholeimage.lifecycle.retention import PolicyImage, decide_retention, policy_images
from wholeimage.models import POLICY_TAG_KEY
from wholeimage.policies import Policy
from wholeimage.store.policy_records import PolicyRecord

PLANNED_ID_PREFIX = "planned:"


@dataclass(frozen=True)
class PlannedImage:
    """An image the plan names: to create, to delete, or kept."""

    source: str
    name: str
    image_id: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Its JSON form."""
        return {
            "source": self.source,
            "name": self.name,
            "image_id": self.image_id,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PlannedSlot:
    """One slot: the images it creates, and the images retention deletes after them."""

    slot_at: datetime
    creates: list[PlannedImage]
    deletes: list[PlannedImage]

    def as_json(self) -> dict[str, Any]:
        """Its JSON form."""
        return {
            "slot_at": self.slot_at.isoformat(),
            "creates": [image.as_json() for image in self.creates],
            "deletes": [image.as_json() for image in self.deletes],
        }


@dataclass
class PolicyPlan:
    """What ``plan`` shows for one policy."""

    name: str
    state: str
    timezone: str = "UTC"
    slots: list[PlannedSlot] = field(default_factory=list)
    kept: list[PlannedImage] = field(default_factory=list)
    images_listed: int = 0  # what IMS's tag filter returned
    images_read: int = 0  # of those, the ones provably the policy's (both tags listed)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Its JSON form (``policy plan --json``)."""
        return {
            "name": self.name,
            "state": self.state,
            "timezone": self.timezone,
            "images_listed": self.images_listed,
            "images_read": self.images_read,
            "error": self.error,
            "slots": [slot.as_json() for slot in self.slots],
            "kept": [image.as_json() for image in self.kept],
        }


def planned_slots(
    policy: Policy, record: PolicyRecord, *, slots: int, now: datetime
) -> list[datetime]:
    """The next ``slots`` slots the tick would run: a due slot first (the latest one, as the
    tick runs it), then those after it."""
    if slots < 1:
        return []
    due = record.next_slot_at
    first = (
        policy.latest_slot_at_or_before(now)
        if due is not None and due <= now
        else due or policy.next_slot_after(now)
    )
    found = [first]
    while len(found) < slots:
        found.append(policy.next_slot_after(found[-1]))
    return found


def _state(record: PolicyRecord) -> str:
    if not record.enabled:
        return "disabled: nothing runs until it is enabled"
    if record.paused:
        return (
            f"paused: {record.paused_reason or 'by an operator'}; nothing runs until it is resumed"
        )
    return "active"


def plan_policy(
    policy: Policy, record: PolicyRecord, ims: ImsClient, *, slots: int, now: datetime
) -> PolicyPlan:
    """The plan of ``policy`` (the module docstring); IMS is only read."""
    plan = PolicyPlan(name=policy.name, state=_state(record), timezone=policy.schedule.timezone)
    moments = planned_slots(policy, record, slots=slots, now=now)
    try:
        listed = ims.list_images_by_tag(
            tag_key=POLICY_TAG_KEY,
            tag_value=policy.name,
            enterprise_project_id=policy.image.enterprise_project_id,
        )
    except UpstreamError as exc:
        plan.error = f"IMS's image list could not be read ({exc.code}): retention is not shown"
        listed = None
    plan.images_listed = len(listed or [])
    existing = policy_images(listed or [], policy.name)
    plan.images_read = sum(len(images) for images in existing.values())
    labels = {source.instance_id: source.shown for source in policy.sources}
    pools: dict[str, list[PolicyImage]] = {
        source.instance_id: list(existing.get(source.instance_id, [])) for source in policy.sources
    }
    last_verdicts: dict[str, dict[str, str]] = {source: {} for source in pools}
    for moment in moments:
        slot = PlannedSlot(slot_at=moment, creates=[], deletes=[])
        for source in policy.sources:
            name = policy.image_name(source, moment)
            slot.creates.append(PlannedImage(source=source.shown, name=name))
            if listed is None:
                continue
            new = PolicyImage(
                image_id=f"{PLANNED_ID_PREFIX}{name}",
                name=name,
                status="active",
                created_at=moment,
                source_id=source.instance_id,
            )
            pool = [*pools[source.instance_id], new]
            verdicts = decide_retention(policy, pool, now=moment, succeeded_image_id=new.image_id)
            dropped = {v.image.image_id for v in verdicts if not v.keep}
            for verdict in verdicts:
                last_verdicts[source.instance_id][verdict.image.image_id] = verdict.reason
                if not verdict.keep:
                    slot.deletes.append(
                        PlannedImage(
                            source=source.shown,
                            name=verdict.image.name,
                            image_id=verdict.image.image_id,
                            reason=verdict.reason,
                        )
                    )
            pools[source.instance_id] = [image for image in pool if image.image_id not in dropped]
        plan.slots.append(slot)
    for source_id, pool in pools.items():
        for image in pool:
            if image.image_id.startswith(PLANNED_ID_PREFIX):
                continue
            plan.kept.append(
                PlannedImage(
                    source=labels.get(source_id, source_id),
                    name=image.name,
                    image_id=image.image_id,
                    reason=last_verdicts[source_id].get(image.image_id, "kept: no slot is planned"),
                )
            )
    return plan
