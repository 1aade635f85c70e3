"""``FakeImsClient``'s delete, find and tag listing behave as ``HttpImsClient`` promises.

The lifecycle use cases will be tested against the fake, so the fake itself is pinned here.
"""

from __future__ import annotations

import pytest

from tests.fakes import FakeImsClient
from wholeimage.errors import ImageNotFoundError, SubmissionUncertainError
from wholeimage.ims.client import ImageSummary, ImsClient

OLD = ImageSummary("img-old", "web-01-old", "active", tags=("policy=nightly", "owner=ops"))
NEW = ImageSummary("img-new", "web-01-new", "active", tags=("policy=nightly",))
OTHER = ImageSummary("img-other", "db-01", "active", tags=("policy=weekly",))


def fake() -> FakeImsClient:
    return FakeImsClient(
        by_id={image.image_id: image for image in (OLD, NEW, OTHER)}, tagged=[OLD, NEW, OTHER]
    )


def test_the_fake_is_an_ims_client() -> None:
    client: ImsClient = fake()

    assert client.find_image("img-old") == OLD


def test_a_delete_is_recorded_and_the_image_is_no_longer_found_nor_listed() -> None:
    ims = fake()

    ims.delete_image("img-old", delete_backup=True)

    assert ims.deleted == [("img-old", True)]
    assert ims.find_image("img-old") is None
    assert ims.list_images_by_tag(tag_key="policy", tag_value="nightly") == [NEW]


def test_a_scripted_failure_is_raised_and_leaves_the_image_in_place() -> None:
    ims = fake()
    ims.delete_script = [
        SubmissionUncertainError("lost"),
        ImageNotFoundError("gone", http_status=404, upstream={"status": 404}),
        None,
    ]

    with pytest.raises(SubmissionUncertainError):
        ims.delete_image("img-old", delete_backup=False)
    with pytest.raises(ImageNotFoundError):
        ims.delete_image("img-old", delete_backup=False)
    assert ims.find_image("img-old") == OLD
    ims.delete_image("img-old", delete_backup=False)

    assert ims.deleted == [("img-old", False)] * 3
    assert ims.find_image("img-old") is None


def test_the_tag_listing_matches_key_equals_value_and_records_the_query() -> None:
    ims = fake()

    weekly = ims.list_images_by_tag(tag_key="policy", tag_value="weekly", whole_image=False)

    assert weekly == [OTHER]
    assert ims.list_images_by_tag(tag_key="owner", tag_value="dev") == []
    assert ims.tag_queries == [("policy", "weekly", False), ("owner", "dev", True)]
