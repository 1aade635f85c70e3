"""Retention (``lifecycle.retention``): which of a policy's images IMS lists are its, and which go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from wholeimage.ims.client import ImageSummary
from wholeimage.lifecycle.retention import PolicyImage, decide_retention, policy_images
from wholeimage.policies import Policy

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SOURCE = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"


def policy(**retention: Any) -> Policy:
    return Policy.model_validate(
        {
            "name": "nightly",
            "schedule": {"cron": "0 2 * * *"},
            "sources": [{"instance_id": SOURCE}],
            "retention": retention,
        }
    )


def image(image_id: str, days_old: float | None, status: str = "active") -> PolicyImage:
    created = NOW - timedelta(days=days_old) if days_old is not None else None
    return PolicyImage(image_id, f"name-{image_id}", status, created, SOURCE)


def dropped(verdicts: list[Any]) -> set[str]:
    return {v.image.image_id for v in verdicts if not v.keep}


def listed(image_id: str, *tags: str, created: str | None = "2026-11-01T02:00:00Z") -> ImageSummary:
    return ImageSummary(image_id, image_id, "active", created_at=created, tags=tags or None)


MINE = ("wholeimage_policy=nightly", f"wholeimage_source={SOURCE}")


# --- decide_retention ----------------------------------------------------------------------------


def test_keep_last_only_drops_beyond_the_count_whatever_their_age() -> None:
    images = [image(f"i{n}", n) for n in range(5)]

    verdicts = decide_retention(policy(keep_last=2), images, now=NOW)

    assert dropped(verdicts) == {"i2", "i3", "i4"}
    assert [v.image.image_id for v in verdicts] == ["i0", "i1", "i2", "i3", "i4"]  # newest first


def test_max_age_only_drops_what_is_older_than_it() -> None:
    images = [image("new", 1), image("week", 6.9), image("old", 7.1), image("older", 30)]

    verdicts = decide_retention(policy(max_age_days=7), images, now=NOW)

    assert dropped(verdicts) == {"old", "older"}


def test_both_rules_drop_what_either_drops() -> None:
    images = [image("a", 1), image("b", 2), image("c", 10), image("d", 3)]

    verdicts = decide_retention(policy(keep_last=3, max_age_days=5), images, now=NOW)

    # d is number 3 (kept by keep_last, young); c is number 4 and old: both rules drop it.
    assert dropped(verdicts) == {"c"}
    verdicts = decide_retention(policy(keep_last=10, max_age_days=2), images, now=NOW)
    assert dropped(verdicts) == {"c", "d"}


def test_the_newest_active_image_is_kept_even_beyond_max_age() -> None:
    images = [image("only", 400), image("older", 500)]

    verdicts = decide_retention(policy(max_age_days=1), images, now=NOW)

    assert dropped(verdicts) == {"older"}
    assert next(v for v in verdicts if v.image.image_id == "only").reason.startswith(
        "kept: the newest"
    )


def test_images_being_made_failed_or_deleted_are_never_dropped_nor_counted() -> None:
    images = [
        image("queued", 0.1, "queued"),
        image("saving", 0.2, "saving"),
        image("killed", 50, "killed"),
        image("deleted", 60, "deleted"),
        image("a", 1),
        image("b", 2),
        image("c", 3),
    ]

    verdicts = decide_retention(policy(keep_last=2, max_age_days=30), images, now=NOW)

    assert dropped(verdicts) == {"c"}  # the in-progress images do not take keep_last's places
    assert "deleted" not in {v.image.image_id for v in verdicts}
    assert {v.image.image_id for v in verdicts if v.keep} == {
        "queued",
        "saving",
        "killed",
        "a",
        "b",
    }


def test_the_just_succeeded_image_counts_as_newest_while_ims_still_shows_it_saving() -> None:
    images = [image("new", 0.01, "saving"), image("a", 1), image("b", 2)]

    verdicts = decide_retention(policy(keep_last=2), images, now=NOW, succeeded_image_id="new")

    assert dropped(verdicts) == {"b"}


def test_an_image_without_a_creation_time_is_kept_and_not_ranked() -> None:
    images = [image("timeless", None), image("a", 1), image("b", 2)]

    verdicts = decide_retention(policy(keep_last=1), images, now=NOW)

    assert dropped(verdicts) == {"b"}
    assert "timeless" not in dropped(verdicts)


def test_ties_on_creation_time_are_broken_the_same_way_every_time() -> None:
    images = [image("x", 1), image("y", 1), image("z", 1)]

    first = dropped(decide_retention(policy(keep_last=1), images, now=NOW))
    again = dropped(decide_retention(policy(keep_last=1), list(reversed(images)), now=NOW))

    assert len(first) == 2
    assert first == again


# --- policy_images: which listed images are the policy's ---------------------------------------


def test_only_images_with_the_policy_tag_and_exactly_one_source_tag_are_the_policys() -> None:
    images = [
        listed("mine", *MINE),
        listed("untagged"),
        listed("no-source", "wholeimage_policy=nightly"),
        listed("two-sources", *MINE, f"wholeimage_source={OTHER}"),
        listed("other-policy", "wholeimage_policy=weekly", f"wholeimage_source={SOURCE}"),
        listed("prefix", "wholeimage_policy=nightly-2", f"wholeimage_source={SOURCE}"),
        listed("shorter", "wholeimage_policy=night", f"wholeimage_source={SOURCE}"),
        listed("two-policies", *MINE, "wholeimage_policy=weekly"),
        listed("old-style", "wholeimage_policy.nightly", f"wholeimage_source.{SOURCE}"),
    ]

    found = policy_images(images, "nightly")

    assert list(found) == [SOURCE]
    assert [i.image_id for i in found[SOURCE]] == ["mine", "old-style"]


def test_a_source_tag_in_upper_case_is_the_same_source() -> None:
    found = policy_images(
        [listed("upper", "wholeimage_policy=nightly", f"wholeimage_source={SOURCE.upper()}")],
        "nightly",
    )

    assert [i.image_id for i in found[SOURCE]] == ["upper"]


def test_missing_or_unreadable_creation_times_are_none() -> None:
    found = policy_images(
        [
            listed("none", *MINE, created=None),
            listed("empty", *MINE, created=""),
            listed("garbage", *MINE, created="yesterday"),
            listed("naive", *MINE, created="2026-11-01T02:00:00"),
        ],
        "nightly",
    )

    times = {i.image_id: i.created_at for i in found[SOURCE]}
    assert times == {
        "none": None,
        "empty": None,
        "garbage": None,
        "naive": datetime(2026, 11, 1, 2, 0, tzinfo=UTC),
    }
    # And an image without a readable time is never dropped.
    assert not dropped(decide_retention(policy(keep_last=1), found[SOURCE], now=NOW)) & {
        "none",
        "empty",
        "garbage",
    }
