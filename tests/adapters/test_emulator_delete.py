"""The emulator's image delete (DELETE /v2/images/{image_id}) with wholeimage's signed client.

``HttpImsClient`` over ``AkSkAuth`` against the real emulator: the delete, its refusals, a lost
answer after the image was deleted, ``find_image`` and paging (docs/ims-api.md §2.5, §2.6).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from ims_emulator import DELETE_IMAGE_PATH_PREFIX, EmulatorConfig, Fault, ImsEmulator
from tests.adapters.conftest import JOB_SECONDS, FakeClock
from tests.adapters.test_emulator import AK, PROJECT, SK, send_signed
from wholeimage.errors import (
    ImageNotFoundError,
    ImsRejectedError,
    SubmissionUncertainError,
    UpstreamError,
    UpstreamUnavailableError,
)
from wholeimage.ims.auth import AkSkAuth
from wholeimage.ims.client import HttpImsClient, RetryPolicy


@pytest.fixture
def client(ims: ImsEmulator, clock: FakeClock) -> Iterator[HttpImsClient]:
    auth = AkSkAuth(AK, SK, PROJECT)
    with httpx.Client(base_url=ims.url, auth=auth, timeout=5.0) as signed:
        yield HttpImsClient(signed, retry=RetryPolicy(max_attempts=3), sleep=clock.advance)


def test_a_delete_answers_204_and_the_image_is_gone_from_the_list(
    ims: ImsEmulator, client: HttpImsClient, clock: FakeClock
) -> None:
    image = ims.add_image("old", tags={"policy": "nightly"})

    client.delete_image(image["id"], delete_backup=True)

    assert client.find_image(image["id"]) is None
    assert client.list_images_by_tag(tag_key="policy", tag_value="nightly") == []
    assert ims.deletions == [(image["id"], True, clock.now)]
    [kept] = [item for item in ims.images() if item["id"] == image["id"]]
    assert kept["status"] == "deleted"
    (request,) = [r for r in ims.requests if r.route == "delete"]
    assert request.method == "DELETE"
    assert json.loads(request.body) == {"delete_backup": True}


def test_deleting_again_or_an_unknown_image_is_not_found(
    ims: ImsEmulator, client: HttpImsClient
) -> None:
    image = ims.add_image("old")
    client.delete_image(image["id"], delete_backup=False)

    with pytest.raises(ImageNotFoundError) as raised:
        client.delete_image(image["id"], delete_backup=False)
    with pytest.raises(ImageNotFoundError):
        client.delete_image("no-such-image", delete_backup=False)

    assert raised.value.http_status == 404
    assert raised.value.upstream is not None
    assert raised.value.upstream["code"] == "IMG.0027"
    assert ims.deletions == [(image["id"], False, ims.deletions[0][2])]


def test_a_lost_answer_after_the_delete_is_uncertain_though_the_image_is_deleted(
    ims: ImsEmulator, client: HttpImsClient
) -> None:
    image = ims.add_image("old")
    ims.inject("delete", Fault(after=True, drop=True))

    with pytest.raises(SubmissionUncertainError, match="may have been deleted"):
        client.delete_image(image["id"], delete_backup=True)

    assert ims.calls["delete"] == 1  # never resent
    assert client.find_image(image["id"]) is None  # reading it again tells
    assert [item[0] for item in ims.deletions] == [image["id"]]


def test_a_5xx_after_the_delete_is_uncertain_and_not_resent(
    ims: ImsEmulator, client: HttpImsClient
) -> None:
    image = ims.add_image("old")
    ims.inject("delete", Fault(after=True, status=502))

    with pytest.raises(SubmissionUncertainError):
        client.delete_image(image["id"], delete_backup=False)

    assert ims.calls["delete"] == 1
    assert len(ims.deletions) == 1


def test_a_throttled_delete_is_retried_and_then_done(
    ims: ImsEmulator, client: HttpImsClient
) -> None:
    image = ims.add_image("old")
    ims.inject("delete", Fault.throttled(retry_after=1), Fault.ims_error("IMG.0060", "busy"))

    client.delete_image(image["id"], delete_backup=True)

    assert ims.calls["delete"] == 3
    assert len(ims.deletions) == 1


def test_a_delete_always_throttled_ends_unavailable_and_deletes_nothing(
    ims: ImsEmulator, client: HttpImsClient
) -> None:
    image = ims.add_image("old")
    ims.inject("delete", *[Fault.throttled(retry_after=1)] * 3)

    with pytest.raises(UpstreamUnavailableError):
        client.delete_image(image["id"], delete_backup=True)

    assert ims.deletions == []
    assert client.find_image(image["id"]) is not None


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ({"protected": True}, "IMG.0028"),
        ({"owner": "another-project"}, "IMG.0092"),
        ({"imagetype": "gold", "visibility": "public"}, "IMG.0094"),
    ],
    ids=["protected", "not-ours", "public"],
)
def test_an_image_ims_will_not_delete_is_an_ims_rejection(
    ims: ImsEmulator, client: HttpImsClient, setup: dict[str, object], code: str
) -> None:
    image = ims.add_image("theirs", **setup)  # type: ignore[arg-type]

    with pytest.raises(ImsRejectedError) as raised:
        client.delete_image(image["id"], delete_backup=False)

    assert not isinstance(raised.value, ImageNotFoundError)
    assert raised.value.upstream is not None
    assert raised.value.upstream["code"] == code
    assert ims.deletions == []


def test_an_image_whose_job_still_runs_cannot_be_deleted_until_it_ends(
    ims: ImsEmulator, http: httpx.Client, client: HttpImsClient
) -> None:
    response = send_signed(
        http,
        ims,
        "POST",
        "/v1/cloudimages/wholeimages/action",
        body=json.dumps({"name": "web01-full", "instance_id": "ecs-1"}).encode(),
    )
    job_id = response.json()["job_id"]
    image_id = ims.jobs[job_id].image_id

    with pytest.raises(ImsRejectedError) as raised:
        client.delete_image(image_id, delete_backup=True)
    ims.finish_job(job_id)
    client.delete_image(image_id, delete_backup=True)

    assert raised.value.upstream is not None
    assert raised.value.upstream["code"] == "IMG.0090"
    assert [item[0] for item in ims.deletions] == [image_id]


@pytest.mark.parametrize(
    "body",
    [b"[]", b"not json", b'{"delete_backup": "yes"}', b'{"delete_backup": 1}'],
    ids=["array", "not-json", "string", "number"],
)
def test_a_bad_delete_body_is_a_400_img_0001(
    ims: ImsEmulator, http: httpx.Client, body: bytes
) -> None:
    image = ims.add_image("old")

    response = send_signed(http, ims, "DELETE", DELETE_IMAGE_PATH_PREFIX + image["id"], body=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "IMG.0001"
    assert ims.deletions == []


def test_a_delete_without_a_body_records_no_delete_backup_and_answers_no_body(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    image = ims.add_image("old")

    response = send_signed(http, ims, "DELETE", DELETE_IMAGE_PATH_PREFIX + image["id"])

    assert response.status_code == 204
    assert response.content == b""
    assert "content-length" not in response.headers
    assert [item[:2] for item in ims.deletions] == [(image["id"], None)]


def test_the_delete_is_authenticated_like_the_other_ims_routes(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    image = ims.add_image("old")
    path = DELETE_IMAGE_PATH_PREFIX + image["id"]

    unsigned = http.delete(path)
    wrong_key = send_signed(http, ims, "DELETE", path, sk="wrong-secret")
    no_project = send_signed(http, ims, "DELETE", path, project=None)

    assert unsigned.status_code == 401
    assert wrong_key.status_code == 401
    assert no_project.json()["error"]["code"] == "IMG.0067"
    assert ims.deletions == []


def test_the_admin_route_lists_the_deletions_and_reset_forgets_them(
    ims: ImsEmulator, http: httpx.Client, client: HttpImsClient
) -> None:
    image = ims.add_image("old")
    client.delete_image(image["id"], delete_backup=True)

    listed = http.get("/_emulator/deletions").json()["deletions"]
    ims.reset()

    assert [(item["image_id"], item["delete_backup"]) for item in listed] == [(image["id"], True)]
    assert http.get("/_emulator/deletions").json() == {"deletions": []}


# -- find_image and paging through the real list -------------------------------------------------


def test_find_image_reads_one_image_by_id(ims: ImsEmulator, client: HttpImsClient) -> None:
    wanted = ims.add_image("wanted", tags={"policy": "nightly"})
    ims.add_image("other")

    found = client.find_image(wanted["id"])

    assert found is not None
    assert (found.image_id, found.name, found.status) == (wanted["id"], "wanted", "active")
    assert found.tags == ("policy=nightly",)
    assert found.protected is False
    assert client.find_image("no-such-image") is None


@pytest.mark.parametrize("page_info", [True, False], ids=["next-marker", "full-pages-only"])
def test_list_images_by_tag_pages_across_three_pages(
    ims: ImsEmulator, client: HttpImsClient, clock: FakeClock, page_info: bool
) -> None:
    ims.config = EmulatorConfig(job_seconds=JOB_SECONDS, image_page_info=page_info)
    expected = []
    for number in range(5):
        clock.advance(1)
        expected.append(ims.add_image(f"img-{number}", tags={"policy": "nightly"})["id"])
    ims.add_image("untagged")
    ims.add_image("not-whole", tags={"policy": "nightly"}, whole_image=False)

    found = client.list_images_by_tag(tag_key="policy", tag_value="nightly", page_size=2)

    # Newest first, IMS's default order; three pages of 2, 2 and 1.
    assert [image.image_id for image in found] == expected[::-1]
    assert ims.calls["images"] == 3
    markers = [dict(r.query).get("marker") for r in ims.requests if r.route == "images"]
    assert markers == [None, expected[3], expected[1]]


def test_list_images_by_tag_refuses_to_cut_a_list_longer_than_allowed(
    ims: ImsEmulator, client: HttpImsClient
) -> None:
    for number in range(5):
        ims.add_image(f"img-{number}", tags={"policy": "nightly"})

    with pytest.raises(UpstreamError, match="more than 2 pages"):
        client.list_images_by_tag(tag_key="policy", tag_value="nightly", page_size=2, max_pages=2)
