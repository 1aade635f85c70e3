"""``wholeimage policy plan``: the plan as people read it (``--json`` prints ``as_json``)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from wholeimage.lifecycle.plan import PLANNED_ID_PREFIX, PlannedImage, PolicyPlan


def _image(image: PlannedImage) -> str:
    if image.image_id and not image.image_id.startswith(PLANNED_ID_PREFIX):
        return f"{image.name} ({image.image_id})"
    return f"{image.name} (planned)"


def plan_text(plans: list[PolicyPlan]) -> str:
    """Each policy: its state, every planned slot's creates and deletes, and what stays."""
    if not plans:
        return "no policies"
    blocks = []
    for plan in plans:
        lines = [f"policy {plan.name}: {plan.state}"]
        if plan.error:
            lines.append(f"  ! {plan.error}")
        lines.append(f"  images of the policy IMS lists now: {plan.images_read}")
        if plan.images_listed != plan.images_read:
            lines.append(
                f"  ! IMS's tag filter returned {plan.images_listed}; only {plan.images_read} "
                "list both of the policy's tags, and only those are ever deleted"
            )
        for slot in plan.slots:
            local = slot.slot_at.astimezone(ZoneInfo(plan.timezone))
            lines.append(
                f"  slot {local:%Y-%m-%d %H:%M} {plan.timezone} ({slot.slot_at:%H:%M} UTC)"
            )
            lines.extend(f"    + create {image.name}" for image in slot.creates)
            lines.extend(f"    - delete {_image(image)}: {image.reason}" for image in slot.deletes)
        if plan.kept:
            lines.append("  kept after these slots:")
            lines.extend(f"    = {_image(image)}: {image.reason}" for image in plan.kept)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
