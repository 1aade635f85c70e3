"""The emulator's image list (GET /v2/cloudimages), image statuses, and faults after the route ran.

Reconciliation looks an image up by the marker tag wholeimage put in the create request, when
the create answer was lost; these tests pin the contract it codes against (docs/ims-api.md §2.5).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkims.v2 import ImageInfo, ListImagesRequest, ListImagesResponse

from ims_emulator import CREATE_PATH, IMAGES_PATH, Fault, ImsEmulator
from tests.adapters.conftest import JOB_SECONDS, FakeClock
from tests.adapters.test_emulator import (
    PROJECT,
    SK,
    create,
    create_job,
    query_job,
    sdk_client,
    send_signed,
)
from wholeimage.ims import signer

IMAGE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
MARKER_KEY = "wholeimage_request"


def marker() -> str:
    return uuid.uuid4().hex


def marked(value: str) -> dict[str, Any]:
    """Create-body fields carrying the marker tag in the object form."""
    return {"image_tags": [{"key": MARKER_KEY, "value": value}]}


def list_images(http: httpx.Client, ims: ImsEmulator, **params: str) -> httpx.Response:
    # Python names cannot start with "__"; "whole_image" and "imagetype" stand for those.
    renamed = {"whole_image": "__whole_image", "imagetype": "__imagetype"}
    query = [(renamed.get(name, name), value) for name, value in params.items()]
    return send_signed(http, ims, "GET", IMAGES_PATH, query=query)


def listed(http: httpx.Client, ims: ImsEmulator, **params: str) -> list[dict[str, Any]]:
    response = list_images(http, ims, **params)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert isinstance(images, list)
    return images


def by_marker(http: httpx.Client, ims: ImsEmulator, value: str) -> list[dict[str, Any]]:
    """The lookup reconciliation makes: tag=wholeimage_request=<hex>&__whole_image=true."""
    return listed(http, ims, tag=f"{MARKER_KEY}={value}", whole_image="true")


# -- one accepted job, one image ---------------------------------------------------------------


def test_an_accepted_job_lists_one_queued_whole_image_with_its_marker_tag(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    value = marker()
    job_id = create_job(http, ims, name="web01-full", **marked(value), min_ram=1024)

    images = by_marker(http, ims, value)

    assert len(images) == 1
    image = images[0]
    assert image["id"] == ims.jobs[job_id].image_id
    assert uuid.UUID(image["id"])
    assert image["name"] == "web01-full"
    assert image["status"] == "queued"
    assert image["tags"] == [f"{MARKER_KEY}={value}"]
    assert image["__whole_image"] == "true"
    assert image["__imagetype"] == "private"
    assert image["visibility"] == "private"
    assert image["owner"] == PROJECT
    assert image["protected"] is False
    assert image["min_ram"] == 1024
    assert isinstance(image["min_disk"], int)
    assert image["self"] == f"/v2/images/{image['id']}"
    assert image["file"] == f"/v2/images/{image['id']}/file"
    assert image["schema"] == "/v2/schemas/image"
    assert IMAGE_TIME.match(image["created_at"])
    assert image["updated_at"] == image["created_at"]
    assert "__backup_id" not in image
    assert "active_at" not in image
    assert ims.calls["images"] == 1


def test_old_string_tags_are_listed_and_queried_as_key_equals_value(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    value = marker()
    create_job(http, ims, tags=[f"{MARKER_KEY}.{value}", "aaa.111", "bare"])

    (image,) = by_marker(http, ims, value)

    assert image["tags"] == [f"{MARKER_KEY}={value}", "aaa=111", "bare="]
    assert listed(http, ims, tag="aaa=111") == [image]
    assert listed(http, ims, tag="bare") == [image]
    # The docs: an old "a.b" tag is queried as "a=b", not as "a.b".
    assert listed(http, ims, tag="aaa.111") == []


def test_an_image_from_a_backup_names_it(ims: ImsEmulator, http: httpx.Client) -> None:
    value = marker()
    create_job(
        http, ims, instance_id=None, backup_id="bk-7", whole_image_type="CBR", **marked(value)
    )

    (image,) = by_marker(http, ims, value)

    assert image["__backup_id"] == "bk-7"


def test_the_reconciliation_query_may_carry_the_tag_with_a_raw_equals_sign(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    value = marker()
    create_job(http, ims, **marked(value))
    query = [("tag", f"{MARKER_KEY}={value}"), ("__whole_image", "true")]
    headers = {
        "Host": urlsplit(ims.url).netloc,
        "X-Sdk-Date": signer.format_sdk_date(datetime.fromtimestamp(ims.clock(), UTC)),
        "X-Project-Id": PROJECT,
    }
    headers["Authorization"] = signer.authorization_header(
        access_key=ims.config.ak,
        secret_key=SK,
        method="GET",
        path=IMAGES_PATH,
        query=query,
        headers=headers,
        body=b"",
    )

    raw = http.get(f"{IMAGES_PATH}?tag={MARKER_KEY}={value}&__whole_image=true", headers=headers)

    assert raw.status_code == 200, raw.text
    assert len(raw.json()["images"]) == 1


# -- statuses over the clock -------------------------------------------------------------------


def test_the_image_is_queued_then_saving_then_active_as_its_job_runs(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    value = marker()
    job_id = create_job(http, ims, **marked(value))
    (queued,) = by_marker(http, ims, value)

    clock.advance(JOB_SECONDS * 0.5)
    (saving,) = by_marker(http, ims, value)
    assert query_job(http, ims, job_id).json()["status"] == "RUNNING"

    clock.advance(JOB_SECONDS)
    (active,) = by_marker(http, ims, value)
    job = query_job(http, ims, job_id).json()

    assert [queued["status"], saving["status"], active["status"]] == ["queued", "saving", "active"]
    assert job["status"] == "SUCCESS"
    assert job["entities"]["image_id"] == queued["id"] == active["id"]
    assert queued["updated_at"] < saving["updated_at"] < active["updated_at"]
    assert active["active_at"] == active["updated_at"]
    assert active["created_at"] == queued["created_at"]


def test_a_failed_job_leaves_a_killed_image(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    ims.config.fail_sources = {"ecs-doomed"}
    doomed, ended = marker(), marker()
    create_job(http, ims, instance_id="ecs-doomed", **marked(doomed))
    ended_job = create_job(http, ims, **marked(ended))

    ims.finish_job(ended_job, "FAIL")
    assert by_marker(http, ims, ended)[0]["status"] == "killed"
    assert by_marker(http, ims, doomed)[0]["status"] == "queued"
    clock.advance(JOB_SECONDS)

    (image,) = by_marker(http, ims, doomed)
    assert image["status"] == "killed"
    assert "active_at" not in image


def test_finish_job_success_makes_the_image_active_at_once(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    value = marker()
    job_id = create_job(http, ims, **marked(value))

    ims.finish_job(job_id, "SUCCESS")

    assert by_marker(http, ims, value)[0]["status"] == "active"
    assert ims.job_view(job_id)["entities"]["image_id"] == by_marker(http, ims, value)[0]["id"]


# -- filters -----------------------------------------------------------------------------------


def test_the_list_filters_by_name_id_status_and_whole_image(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    first = create_job(http, ims, name="alpha")
    clock.advance(JOB_SECONDS * 2)  # alpha is active
    create_job(http, ims, name="beta")
    plain = ims.add_image("plain-system-disk", whole_image=False)
    alpha_id = ims.jobs[first].image_id

    def names(**params: str) -> list[str]:
        return [image["name"] for image in listed(http, ims, **params)]

    assert names(name="alpha") == ["alpha"]
    assert names(name="alp") == []  # exact match only
    assert names(id=alpha_id) == ["alpha"]
    assert names(status="active") == ["plain-system-disk", "alpha"]
    assert names(status="queued") == ["beta"]
    assert names(whole_image="true") == ["beta", "alpha"]
    assert names(whole_image="false") == ["plain-system-disk"]
    assert names(imagetype="private", whole_image="true", status="active") == ["alpha"]
    assert names(imagetype="gold") == []
    assert names(owner=PROJECT) == ["plain-system-disk", "beta", "alpha"]
    assert listed(http, ims, id=plain["id"]) == [plain]
    assert names(unknown_filter="x") == ["plain-system-disk", "beta", "alpha"]


def test_several_tag_parameters_must_all_match(ims: ImsEmulator, http: httpx.Client) -> None:
    create_job(http, ims, name="both", image_tags=[{"key": "a", "value": "1"}, {"key": "b"}])
    create_job(http, ims, name="one", image_tags=[{"key": "a", "value": "1"}])

    response = send_signed(
        http, ims, "GET", IMAGES_PATH, query=[("tag", "a=1"), ("tag", "b="), ("sort_key", "name")]
    )

    assert [image["name"] for image in response.json()["images"]] == ["both"]
    assert [image["name"] for image in listed(http, ims, tag="a=1", sort_dir="asc")] == [
        "both",
        "one",
    ]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "IMG.0001"),
        ({"limit": "-1"}, "IMG.0001"),
        ({"limit": "ten"}, "IMG.0001"),
        ({"whole_image": "yes"}, "IMG.0001"),
        ({"status": "ACTIVE"}, "IMG.0001"),
        ({"sort_key": "updated_at"}, "IMG.0001"),
        ({"sort_dir": "down"}, "IMG.0001"),
        ({"marker": str(uuid.UUID(int=0))}, "IMG.0001"),
        ({"tag": "=value"}, "IMG.0001"),
        ({"protected": "maybe"}, "IMG.0001"),
        ({"imagetype": "public"}, "IMG.0024"),
    ],
    ids=lambda item: json.dumps(item) if isinstance(item, dict) else item,
)
def test_a_bad_filter_value_is_a_400_in_the_ims_shape(
    ims: ImsEmulator, http: httpx.Client, params: dict[str, str], code: str
) -> None:
    response = list_images(http, ims, **params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_the_list_is_authenticated_like_the_other_ims_routes(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    anonymous = http.get(IMAGES_PATH)
    no_project = send_signed(http, ims, "GET", IMAGES_PATH, project=None)
    with_token = http.get(IMAGES_PATH, headers={"X-Auth-Token": ims.issue_token()})

    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == "APIGW.0301"
    assert no_project.status_code == 400
    assert no_project.json()["error"]["code"] == "IMG.0067"
    assert with_token.status_code == 200
    assert with_token.json() == {"images": []}
    assert http.post(IMAGES_PATH, json={}).json()["error_code"] == "APIGW.0101"


# -- sorting and paging ------------------------------------------------------------------------


def test_limit_and_marker_page_through_the_newest_first(
    ims: ImsEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    for n in range(5):
        create_job(http, ims, name=f"img-{n}")
        clock.advance(1)

    first = list_images(http, ims, limit="2").json()
    second = list_images(http, ims, limit="2", marker=first["page_info"]["next_marker"]).json()
    third = list_images(http, ims, limit="2", marker=second["page_info"]["next_marker"]).json()

    assert [image["name"] for image in first["images"]] == ["img-4", "img-3"]
    assert first["page_info"] == {"next_marker": first["images"][-1]["id"]}
    assert [image["name"] for image in second["images"]] == ["img-2", "img-1"]
    assert [image["name"] for image in third["images"]] == ["img-0"]
    assert "page_info" not in third
    ascending = listed(http, ims, sort_dir="asc", limit="3")
    assert [image["name"] for image in ascending] == ["img-0", "img-1", "img-2"]
    by_name = listed(http, ims, sort_key="name", sort_dir="desc", marker=first["images"][0]["id"])
    assert [image["name"] for image in by_name] == ["img-3", "img-2", "img-1", "img-0"]


def test_images_created_at_the_same_second_page_without_repeats_or_gaps(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    ids = {ims.add_image(f"same-{n}")["id"] for n in range(4)}
    seen: list[str] = []
    page: dict[str, Any] = list_images(http, ims, limit="1").json()
    while True:
        seen += [image["id"] for image in page["images"]]
        if "page_info" not in page:
            break
        page = list_images(http, ims, limit="1", marker=page["page_info"]["next_marker"]).json()

    assert sorted(seen) == sorted(ids)
    assert len(seen) == 4


def test_the_default_page_holds_500_images(ims: ImsEmulator, http: httpx.Client) -> None:
    for n in range(501):
        ims.add_image(f"bulk-{n}")

    page = list_images(http, ims).json()

    assert len(page["images"]) == 500
    assert page["page_info"]["next_marker"] == page["images"][-1]["id"]
    assert len(listed(http, ims, limit="1000")) == 501


def test_page_info_can_be_left_out_as_otc_documents(ims: ImsEmulator, http: httpx.Client) -> None:
    ims.config.image_page_info = False
    for n in range(3):
        ims.add_image(f"img-{n}")

    assert list(list_images(http, ims, limit="2").json()) == ["images"]


# -- foreign and deleted images, admin routes --------------------------------------------------


def test_foreign_images_share_the_account_but_not_the_marker(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    ours, theirs = marker(), marker()
    create_job(http, ims, **marked(ours))
    foreign = ims.add_image("someone-else", tags={MARKER_KEY: theirs}, status="saving")
    via_admin = http.post(
        "/_emulator/images",
        json={"name": "legacy", "tags": [f"{MARKER_KEY}={theirs}"], "whole_image": True},
    ).json()

    assert [image["name"] for image in by_marker(http, ims, ours)] == ["web01-full"]
    assert by_marker(http, ims, theirs) == [via_admin, foreign]
    assert foreign["status"] == "saving"
    assert foreign["owner"] == PROJECT
    assert [image["name"] for image in ims.images()] == ["web01-full", "someone-else", "legacy"]
    assert http.get("/_emulator/images").json() == {"images": ims.images()}
    assert http.get("/_emulator/stats").json()["images"] == 3


@pytest.mark.parametrize(
    "payload",
    [{}, {"name": "x", "status": "gone"}, {"name": "x", "tags": "k=v"}, {"name": "x", "oops": 1}],
    ids=["no name", "bad status", "tags as a string", "unknown key"],
)
def test_a_bad_foreign_image_is_refused_by_the_admin_route(
    http: httpx.Client, payload: dict[str, Any]
) -> None:
    response = http.post("/_emulator/images", json=payload)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "emulator.bad_request"


def test_a_deleted_image_is_listed_only_when_asked_for(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    value = marker()
    job_id = create_job(http, ims, **marked(value))
    image_id = ims.jobs[job_id].image_id

    deleted = http.post(f"/_emulator/images/{image_id}/status", json={"status": "deleted"})

    assert deleted.json()["status"] == "deleted"
    assert by_marker(http, ims, value) == []
    assert [image["id"] for image in listed(http, ims, status="deleted")] == [image_id]
    assert ims.images()[0]["status"] == "deleted"
    assert http.post("/_emulator/images/nope/status", json={"status": "active"}).status_code == 404
    assert ims.set_image_status(image_id, "active")["status"] == "active"


def test_reset_forgets_the_images(ims: ImsEmulator, http: httpx.Client) -> None:
    create_job(http, ims)
    ims.add_image("foreign")

    ims.reset()

    assert ims.images() == []
    assert listed(http, ims) == []


# -- faults after the route ran: accepted, then the answer is lost -----------------------------

LOST_ANSWERS = [
    Fault(after=True, status=500),
    Fault(after=True, status=502, body="<html><body>Bad Gateway</body></html>"),
    Fault(after=True, status=503),
    Fault(after=True, status=200, headers={"content-type": "text/html"}, body="<html></html>"),
    Fault(after=True, status=200, body='{"job_id": "4010a32b5f90'),
    Fault(after=True, status=200, body={}),
    Fault(after=True, status=200, body={"job_id": "4010a32b 5f909853015f90aaa24b0015"}),
    Fault(after=True, status=200, body={"job_id": "../../v3/auth/tokens"}),
    Fault(after=True, override={"job_id": None}),
]


@pytest.mark.parametrize(
    "fault",
    LOST_ANSWERS,
    ids=[
        "500",
        "502 html",
        "503",
        "200 html",
        "200 truncated json",
        "200 empty object",
        "job_id with a space",
        "job_id with ../",
        "job_id null",
    ],
)
def test_an_after_fault_replaces_the_answer_of_an_accepted_create(
    ims: ImsEmulator, http: httpx.Client, fault: Fault
) -> None:
    value = marker()
    ims.inject("create", fault)

    response = create(http, ims, **marked(value))

    expected_status = fault.status if fault.status is not None else 200
    assert response.status_code == expected_status
    if isinstance(fault.body, str):
        assert response.text == fault.body
    assert len(ims.jobs) == 1
    (job,) = ims.jobs.values()
    (image,) = by_marker(http, ims, value)
    assert image["id"] == job.image_id
    assert image["status"] == "queued"
    assert len(response.headers.get_list("content-type")) == 1


def test_a_fault_before_the_route_still_creates_nothing(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    value = marker()
    ims.inject("create", Fault(status=503), Fault(drop=True))

    assert create(http, ims, **marked(value)).status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        create(http, ims, **marked(value))

    assert ims.jobs == {}
    assert by_marker(http, ims, value) == []


def test_a_dropped_answer_after_the_create_leaves_the_job_and_its_image(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    value = marker()
    http.post("/_emulator/faults", json={"route": "create", "fault": {"after": True, "drop": True}})

    with pytest.raises(httpx.RemoteProtocolError):
        create(http, ims, **marked(value))

    assert len(ims.jobs) == 1
    assert by_marker(http, ims, value)[0]["id"] == next(iter(ims.jobs.values())).image_id


def test_an_after_fault_replaces_a_refusal_too(ims: ImsEmulator, http: httpx.Client) -> None:
    ims.inject("create", Fault(after=True, status=502))

    response = send_signed(http, ims, "POST", CREATE_PATH, body=b"{}", sk="wrong-secret")

    assert response.status_code == 502
    assert ims.jobs == {}


def test_faults_can_be_injected_on_the_image_list(ims: ImsEmulator, http: httpx.Client) -> None:
    value = marker()
    create_job(http, ims, **marked(value))
    ims.inject("images", Fault.throttled(), Fault(after=True, status=500))

    assert list_images(http, ims).status_code == 429
    assert list_images(http, ims).status_code == 500
    assert len(by_marker(http, ims, value)) == 1
    assert ims.calls["images"] == 3
    assert ims.pending_faults()["images"] == 0


@pytest.mark.slow
def test_a_hang_after_the_create_outlasts_the_client_but_the_job_exists(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    value = marker()
    ims.inject("create", Fault(after=True, hang=True))

    with pytest.raises(httpx.ReadTimeout):
        send_signed(
            http,
            ims,
            "POST",
            CREATE_PATH,
            body=json.dumps({"name": "n", "instance_id": "ecs-1", **marked(value)}).encode(),
            timeout=0.3,
        )

    assert len(by_marker(http, ims, value)) == 1


@pytest.mark.slow
def test_a_delay_after_the_create_records_the_job_before_the_answer_arrives(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    ims.inject("create", Fault(after=True, delay=0.5))
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=ims.url, timeout=5.0) as other:
        sender = threading.Thread(target=lambda: answers.append(create(other, ims)))
        started = time.monotonic()
        sender.start()
        while not ims.jobs and time.monotonic() - started < 2:
            time.sleep(0.01)
        recorded_after = time.monotonic() - started
        sender.join(timeout=5)

    assert ims.jobs
    assert recorded_after < 0.5
    assert answers[0].status_code == 200
    assert answers[0].json()["job_id"] in ims.jobs
    assert time.monotonic() - started >= 0.5


# -- the official SDK as referee ---------------------------------------------------------------


def test_the_official_sdk_parses_the_list_answer(ims: ImsEmulator, http: httpx.Client) -> None:
    value = marker()
    job_id = create_job(
        http, ims, instance_id=None, backup_id="bk-1", whole_image_type="CBR", **marked(value)
    )
    ims.add_image("older")
    client = sdk_client(ims.url, BasicCredentials(ims.config.ak, SK, PROJECT))

    found = client.list_images(
        ListImagesRequest(tag=f"{MARKER_KEY}={value}", imagetype="private", limit=10)
    )
    paged = client.list_images(ListImagesRequest(limit=1))

    assert isinstance(found, ListImagesResponse)
    (image,) = found.images
    assert isinstance(image, ImageInfo)
    assert image.id == ims.jobs[job_id].image_id
    assert image.status == "queued"
    assert image.tags == [f"{MARKER_KEY}={value}"]
    assert image.backup_id == "bk-1"
    assert image.imagetype == "private"
    assert image.min_disk > 0
    assert image.protected is False
    assert image._self == f"/v2/images/{image.id}"
    assert found.page_info is None
    assert paged.page_info.next_marker == paged.images[0].id
    assert ims.requests[-1].query[0] == ("limit", "1")


def test_every_listed_field_is_one_the_sdk_model_knows(
    ims: ImsEmulator, http: httpx.Client
) -> None:
    create_job(http, ims, instance_id=None, backup_id="bk-2", description="nightly", max_ram=4096)
    create_job(http, ims, name="second")
    ims.finish_job(next(iter(ims.jobs)), "SUCCESS")
    body = list_images(http, ims, limit="1").json()

    known = set(ImageInfo.attribute_map.values())
    used = {key for image in listed(http, ims) for key in image}
    # The SDK model has no __whole_image, though the docs list it as an image property.
    assert used - known == {"__whole_image"}
    assert set(body) <= set(ListImagesResponse.attribute_map.values())
    for image in listed(http, ims):
        for key, kind in ImageInfo.openapi_types.items():
            json_key = ImageInfo.attribute_map[key]
            if json_key in image and image[json_key] is not None:
                python_type = {"str": str, "int": int, "bool": bool, "list[str]": list}[kind]
                assert type(image[json_key]) is python_type, json_key
