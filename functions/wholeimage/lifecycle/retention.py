"""Which of a policy's images retention keeps, decided from what IMS itself lists (pure).

An image is the policy's only when IMS lists it with both the policy's tags,
``wholeimage_policy=<name>`` and ``wholeimage_source=<instance id>`` (docs/policies.md §3):
IMS's tag filter is not trusted, the image's listed tags are read, and an image listed without
tags is never a candidate. So neither a lost store nor a foreign one can make retention touch an
image the policy did not make, nor one of another policy.

Among one source's images: the newest successful (``active``) image is always kept; images
still being made (``queued``, ``saving``) and failed ones (``killed``) are left alone; the other
active images are kept while they are among the newest ``keep_last`` and younger than
``max_age_days`` (each rule only when given), and dropped otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from wholeimage.ims.client import ImageSummary
from wholeimage.models import POLICY_TAG_KEY, SOURCE_TAG_KEY
from wholeimage.policies import Policy
from wholeimage.results import read_date_time


@dataclass(frozen=True)
class PolicyImage:
    """One image IMS lists with a policy's tags."""

    image_id: str
    name: str
    status: str
    created_at: datetime | None
    source_id: str
    protected: bool = False


@dataclass(frozen=True)
class RetentionVerdict:
    """What retention does with one image, and why (the words ``plan`` and chat show)."""

    image: PolicyImage
    keep: bool
    reason: str


def _tag_values(tags: tuple[str, ...], key: str) -> set[str]:
    """The values ``key`` has among listed tags, written ``key=value`` or old-style ``key.value``."""
    values = set()
    for tag in tags:
        for separator in ("=", "."):
            prefix = f"{key}{separator}"
            if tag.startswith(prefix):
                values.add(tag[len(prefix) :])
    return values


def policy_images(images: list[ImageSummary], policy: str) -> dict[str, list[PolicyImage]]:
    """The images IMS lists with ``policy``'s tags, by source instance id.

    An image whose listed tags do not show ``wholeimage_policy=<policy>`` and exactly one
    ``wholeimage_source`` is left out: it is not provably this policy's.
    """
    found: dict[str, list[PolicyImage]] = defaultdict(list)
    for image in images:
        if not image.tags:
            continue
        if _tag_values(image.tags, POLICY_TAG_KEY) != {policy}:
            continue
        sources = _tag_values(image.tags, SOURCE_TAG_KEY)
        if len(sources) != 1:
            continue
        (source_id,) = sources
        found[source_id.lower()].append(
            PolicyImage(
                image_id=image.image_id,
                name=image.name,
                status=image.status,
                created_at=_created(image.created_at),
                source_id=source_id.lower(),
                protected=image.protected is True,
            )
        )
    return dict(found)


def _created(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return read_date_time(text)
    except ValueError:
        return None


def _not_ranked(image: PolicyImage, succeeded_image_id: str | None) -> RetentionVerdict | None:
    """Why an image is kept outside the ranking of successful images; None to rank it."""
    if image.protected:
        return RetentionVerdict(image, True, "left alone: protected in IMS, it cannot be deleted")
    # The image a job just reported: successful while IMS still lists it as being made, never
    # when IMS lists it failed (killed).
    succeeded = image.image_id == succeeded_image_id and image.status in ("queued", "saving")
    if succeeded or image.status == "active":
        if image.created_at is None:
            return RetentionVerdict(image, True, "kept: IMS lists no creation time for it")
        return None
    if image.status == "killed":
        return RetentionVerdict(image, True, "left alone: IMS failed to write it (killed)")
    return RetentionVerdict(image, True, f"kept: still being made ({image.status})")


def decide_retention(
    policy: Policy,
    images: list[PolicyImage],
    *,
    now: datetime,
    succeeded_image_id: str | None = None,
) -> list[RetentionVerdict]:
    """The verdict on each of one source's images (newest first).

    ``succeeded_image_id`` is the image a job just reported ``SUCCESS`` for: it counts as
    successful even while IMS's list still shows it being saved.
    """
    verdicts: list[RetentionVerdict] = []
    successful: list[PolicyImage] = []
    for image in images:
        if image.status == "deleted":
            continue
        left = _not_ranked(image, succeeded_image_id)
        if left is None:
            successful.append(image)
        else:
            verdicts.append(left)
    successful.sort(key=lambda image: (image.created_at, image.image_id), reverse=True)
    keep_last = policy.retention.keep_last
    max_age = (
        timedelta(days=policy.retention.max_age_days)
        if policy.retention.max_age_days is not None
        else None
    )
    for rank, image in enumerate(successful):
        assert image.created_at is not None  # sorted in only with a time  # noqa: S101
        age = now - image.created_at
        if rank == 0:
            verdicts.append(RetentionVerdict(image, True, "kept: the newest successful image"))
        elif keep_last is not None and rank >= keep_last:
            verdicts.append(
                RetentionVerdict(
                    image, False, f"dropped: number {rank + 1} by age, beyond keep_last {keep_last}"
                )
            )
        elif max_age is not None and age > max_age:
            verdicts.append(
                RetentionVerdict(
                    image,
                    False,
                    f"dropped: {age.total_seconds() / 86400:.1f} days old, beyond max_age_days "
                    f"{policy.retention.max_age_days}",
                )
            )
        else:
            verdicts.append(
                RetentionVerdict(
                    image, True, f"kept: number {rank + 1} by age, within the retention"
                )
            )
    verdicts.sort(
        key=lambda v: (v.image.created_at is not None, v.image.created_at or now), reverse=True
    )
    return verdicts
