"""``HttpImsClient.delete_image``, ``find_image`` and ``list_images_by_tag`` against a scripted IMS.

The delete is a write under the create call's discipline (docs/ims-api.md §2.6, §3.4): only
certain refusals are retried; a lost or unreadable answer is uncertain and never resent. The
official SDK is the referee for the request itself. No test sleeps: delays are recorded.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import httpx
import pytest

from tests.unit.test_ims_client import (
    ACCESS_KEY,
    IMAGE_ID,
    IMS,
    SECURITY_TOKEN,
    ScriptedIms,
    Step,
    aksk,
    gateway_error,
    image_list,
    ims_error,
    listed,
    make_client,
    sdk_authorization,
)
from wholeimage.errors import (
    ImageNotFoundError,
    ImsRejectedError,
    SubmissionUncertainError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from wholeimage.ims.client import JSON_CONTENT_TYPE, HttpImsClient, RetryPolicy

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from huaweicloudsdkims.v2 import (
        GlanceDeleteImageRequest,
        GlanceDeleteImageRequestBody,
        ImsClient,
    )

DELETE_PATH = f"/v2/images/{IMAGE_ID}"


def deleted() -> httpx.Response:
    return httpx.Response(204)


# ---------------------------------------------------------------------------------------------
# The request, with the official SDK as referee
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delete_backup", [True, False])
def test_a_delete_sends_what_the_official_sdk_sends_and_a_204_is_done(delete_backup: bool) -> None:
    ims = ScriptedIms([deleted()])
    harness = make_client(ims)

    harness.client.delete_image(IMAGE_ID, delete_backup=delete_backup)

    (request,) = ims.requests
    body = GlanceDeleteImageRequestBody(delete_backup=delete_backup)
    sdk = ImsClient._glance_delete_image_http_info(
        GlanceDeleteImageRequest(image_id=IMAGE_ID, body=body)
    )
    sdk_path = sdk["resource_path"].replace("{image_id}", sdk["path_params"]["image_id"])
    assert request.method == sdk["method"] == "DELETE"
    assert str(request.url) == IMS + sdk_path
    assert request.url.path == DELETE_PATH
    # The SDK spells the charset in lower case; the type is the create call's.
    assert request.headers["Content-Type"].lower() == sdk["header_params"]["Content-Type"].lower()
    assert request.headers["Content-Type"] == JSON_CONTENT_TYPE
    assert json.loads(request.content) == sdk["body"].to_dict() == {"delete_backup": delete_backup}
    assert sdk["query_params"] == []
    assert harness.sleeps == []


@pytest.mark.parametrize("security_token", [None, SECURITY_TOKEN], ids=["aksk", "temporary-aksk"])
def test_a_signed_delete_carries_the_official_sdk_signers_authorization(
    security_token: str | None,
) -> None:
    ims = ScriptedIms([deleted()])
    make_client(ims, auth=aksk(security_token)).client.delete_image(IMAGE_ID, delete_backup=True)

    (request,) = ims.requests
    assert request.headers["Authorization"] == sdk_authorization(request)


def test_a_200_is_done_too() -> None:
    ims = ScriptedIms([httpx.Response(200, json={})])

    make_client(ims).client.delete_image(IMAGE_ID, delete_backup=False)

    assert len(ims.requests) == 1


@pytest.mark.parametrize(
    "image_id", ["", "../v3/auth/tokens", "img 1", ".hidden", "a?b=c", "a%2Fb", "jöb", "a/b"]
)
def test_an_id_that_is_not_plain_is_refused_before_anything_is_sent(image_id: str) -> None:
    ims = ScriptedIms([deleted()])
    harness = make_client(ims)

    with pytest.raises(ValueError, match="plain token"):
        harness.client.delete_image(image_id, delete_backup=True)
    with pytest.raises(ValueError, match="plain token"):
        harness.client.find_image(image_id)

    assert ims.requests == []


# ---------------------------------------------------------------------------------------------
# Certain refusals: retried, bounded
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(429, headers={"Retry-After": "2"}),
        ims_error(400, "IMG.0060", "flow control"),
        gateway_error(429, "APIGW.0308", "throttled"),
        httpx.ConnectError,
        httpx.ConnectTimeout,
    ],
    ids=["429", "IMG.0060", "APIGW.0308", "connect-error", "connect-timeout"],
)
def test_a_delete_certainly_refused_is_retried_then_done(refusal: Step) -> None:
    ims = ScriptedIms([refusal, deleted()])
    harness = make_client(ims)

    harness.client.delete_image(IMAGE_ID, delete_backup=True)

    assert len(ims.requests) == 2
    assert len(harness.sleeps) == 1
    assert ims.requests[0].content == ims.requests[1].content


def test_a_delete_throttled_on_every_attempt_ends_in_upstream_unavailable() -> None:
    ims = ScriptedIms([httpx.Response(429, headers={"Retry-After": "1"})] * 3)
    harness = make_client(ims, retry=RetryPolicy(max_attempts=3))

    with pytest.raises(UpstreamUnavailableError) as raised:
        harness.client.delete_image(IMAGE_ID, delete_backup=True)

    assert len(ims.requests) == 3
    assert harness.sleeps == [1.0, 1.0]
    assert raised.value.retry_after == 1


# ---------------------------------------------------------------------------------------------
# Certain refusals: never retried
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        ims_error(404, "IMG.0027", "The image ID in the request does not exist."),
        httpx.Response(404),
        httpx.Response(404, content=b"404 Not Found"),
        ims_error(400, "IMG.0027", "The image ID in the request does not exist."),
    ],
    ids=["404-IMG.0027", "404-empty", "404-text", "400-IMG.0027"],
)
def test_an_image_ims_does_not_know_is_not_found_so_gone_already(answer: httpx.Response) -> None:
    ims = ScriptedIms([answer, deleted()])
    harness = make_client(ims)

    with pytest.raises(ImageNotFoundError) as raised:
        harness.client.delete_image(IMAGE_ID, delete_backup=True)

    assert isinstance(raised.value, ImsRejectedError)
    assert raised.value.http_status == answer.status_code
    assert raised.value.body()["error"]["code"] == "image_not_found"
    assert len(ims.requests) == 1


def test_a_404_from_the_gateway_is_a_wrong_endpoint_not_a_missing_image() -> None:
    harness = make_client(ScriptedIms([gateway_error(404, "APIGW.0101", "no such API")]))

    with pytest.raises(UpstreamError) as raised:
        harness.client.delete_image(IMAGE_ID, delete_backup=True)

    assert not isinstance(raised.value, ImageNotFoundError)
    assert raised.value.http_status == 502


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (ims_error(400, "IMG.0090", "The image being created cannot be deleted."), "IMG.0090"),
        (ims_error(400, "IMG.0028", "The image in the request is protected."), "IMG.0028"),
        (ims_error(403, "IMG.0028", "The image in the request is protected."), "IMG.0028"),
        (ims_error(403, "IMG.0092", "The image can only be deleted by the owner."), "IMG.0092"),
        (ims_error(409, "IMG.0094", "The public image cannot be deleted."), "IMG.0094"),
    ],
    ids=["400-being-created", "400-protected", "403-protected", "403-owner", "409-public"],
)
def test_ims_refusing_to_delete_this_image_is_an_ims_rejection_never_retried(
    answer: httpx.Response, code: str
) -> None:
    ims = ScriptedIms([answer, deleted()])
    harness = make_client(ims)

    with pytest.raises(ImsRejectedError) as raised:
        harness.client.delete_image(IMAGE_ID, delete_backup=False)

    assert not isinstance(raised.value, ImageNotFoundError)
    assert raised.value.http_status == answer.status_code
    assert raised.value.upstream is not None
    assert raised.value.upstream["code"] == code
    assert len(ims.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        gateway_error(401, "APIGW.0301", "Incorrect IAM authentication information"),
        ims_error(403, "IMG.0026", "The role is invalid."),
        httpx.Response(403),
    ],
    ids=["401", "403-IMG.0026", "403-empty"],
)
def test_our_credentials_refused_on_a_delete_is_an_auth_error(answer: httpx.Response) -> None:
    ims = ScriptedIms([answer, deleted()])

    with pytest.raises(UpstreamAuthError):
        make_client(ims).client.delete_image(IMAGE_ID, delete_backup=True)

    assert len(ims.requests) == 1


def test_a_4xx_without_an_img_code_is_a_plain_upstream_error() -> None:
    ims = ScriptedIms([gateway_error(400, "APIGW.0303", "Signature expired")])

    with pytest.raises(UpstreamError) as raised:
        make_client(ims).client.delete_image(IMAGE_ID, delete_backup=True)

    assert type(raised.value) is UpstreamError


# ---------------------------------------------------------------------------------------------
# Uncertain: the image may have been deleted; never resent
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        ims_error(500, "IMG.0061", "Unknown system error"),
        httpx.Response(502, content=b"Bad Gateway"),
        httpx.Response(503),
        httpx.Response(504),
        httpx.ReadTimeout,
        httpx.RemoteProtocolError,
        httpx.Response(201),
    ],
    ids=["500", "502", "503", "504", "read-timeout", "lost-connection", "201"],
)
def test_a_delete_whose_answer_is_lost_may_have_happened_and_is_never_resent(
    answer: Step,
) -> None:
    ims = ScriptedIms([answer, deleted()])
    harness = make_client(ims)

    with pytest.raises(SubmissionUncertainError) as raised:
        harness.client.delete_image(IMAGE_ID, delete_backup=True)

    assert "the image may have been deleted" in raised.value.message
    assert len(ims.requests) == 1
    assert harness.sleeps == []
    if isinstance(raised.value, UpstreamTimeoutError):
        assert raised.value.request_sent is True


def test_a_delete_answer_that_cannot_be_decoded_may_have_happened_and_is_not_resent() -> None:
    requests: list[httpx.Request] = []

    def broken_gzip(request: httpx.Request) -> httpx.Response:
        # Built here, not at collection: httpx decodes a given body at once.
        requests.append(request)
        return httpx.Response(204, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    with pytest.raises(UpstreamTimeoutError) as raised:
        make_client(broken_gzip).client.delete_image(IMAGE_ID, delete_backup=True)

    assert "the image may have been deleted" in raised.value.message
    assert raised.value.request_sent is True
    assert len(requests) == 1


def test_what_ims_quotes_back_on_a_delete_is_redacted_like_the_create_calls() -> None:
    # A gateway quoting our request back: the credential shapes are redacted, no registry needed.
    quoted = (
        f"refused: Authorization: SDK-HMAC-SHA256 Access={ACCESS_KEY}, Signature=0a1b2c3d4e5f,"
        f" X-Security-Token: {SECURITY_TOKEN}"
    )
    ims = ScriptedIms([ims_error(400, "IMG.0092", quoted)])
    harness = make_client(ims, auth=aksk(SECURITY_TOKEN))

    with pytest.raises(ImsRejectedError) as raised:
        harness.client.delete_image(IMAGE_ID, delete_backup=True)

    exposed = json.dumps(raised.value.body())
    for credential in (ACCESS_KEY, "0a1b2c3d4e5f", SECURITY_TOKEN):
        assert credential not in exposed
    assert raised.value.body()["error"]["upstream"]["code"] == "IMG.0092"


# ---------------------------------------------------------------------------------------------
# find_image: GET /v2/cloudimages?id=
# ---------------------------------------------------------------------------------------------


def test_find_image_asks_by_id_and_returns_the_listed_image() -> None:
    ims = ScriptedIms([image_list(listed(status="deleted", protected=False))])
    harness = make_client(ims)

    found = harness.client.find_image(IMAGE_ID)

    (request,) = ims.requests
    assert request.method == "GET"
    assert request.url.path == "/v2/cloudimages"
    assert dict(request.url.params) == {"id": IMAGE_ID}
    assert found is not None
    assert (found.image_id, found.status, found.protected) == (IMAGE_ID, "deleted", False)


def test_find_image_returns_none_when_nothing_is_listed() -> None:
    assert make_client(ScriptedIms([image_list()])).client.find_image(IMAGE_ID) is None


@pytest.mark.parametrize(
    "answer",
    [image_list(listed("img-other")), image_list(listed(), listed())],
    ids=["another-id", "two-images"],
)
def test_find_image_answered_with_other_images_is_an_upstream_error(
    answer: httpx.Response,
) -> None:
    with pytest.raises(UpstreamError):
        make_client(ScriptedIms([answer])).client.find_image(IMAGE_ID)


def test_find_image_is_asked_once() -> None:
    ims = ScriptedIms([httpx.Response(503), image_list(listed())])
    harness = make_client(ims)

    with pytest.raises(UpstreamUnavailableError):
        harness.client.find_image(IMAGE_ID)

    assert len(ims.requests) == 1
    assert harness.sleeps == []


# ---------------------------------------------------------------------------------------------
# list_images_by_tag: paging (docs/ims-api.md §2.5)
# ---------------------------------------------------------------------------------------------


def page(*ids: str, next_marker: Any = None) -> httpx.Response:
    body: dict[str, Any] = {"images": [listed(image_id) for image_id in ids]}
    if next_marker is not None:
        body["page_info"] = {"next_marker": next_marker}
    return httpx.Response(200, json=body)


def test_full_pages_are_followed_by_their_last_id_until_a_short_page() -> None:
    ims = ScriptedIms([page("a", "b"), page("c", "d"), page("e")])
    harness = make_client(ims)

    found = harness.client.list_images_by_tag(tag_key="policy", tag_value="nightly", page_size=2)

    assert [image.image_id for image in found] == ["a", "b", "c", "d", "e"]
    assert [dict(request.url.params) for request in ims.requests] == [
        {"tag": "policy=nightly", "limit": "2", "__whole_image": "true", "__imagetype": "private"},
        {
            "tag": "policy=nightly",
            "limit": "2",
            "__whole_image": "true",
            "__imagetype": "private",
            "marker": "b",
        },
        {
            "tag": "policy=nightly",
            "limit": "2",
            "__whole_image": "true",
            "__imagetype": "private",
            "marker": "d",
        },
    ]
    assert harness.sleeps == []


def test_the_list_asks_for_the_projects_own_images_of_the_enterprise_project_given() -> None:
    # A shared image of another tenant carrying the tags must never be a candidate, and an IAM
    # user scoped to enterprise projects must name one (docs/ims-api.md §2.5).
    ims = ScriptedIms([page("a"), page("b")])
    client = make_client(ims).client

    client.list_images_by_tag(tag_key="policy", tag_value="nightly", enterprise_project_id="0")
    client.list_images_by_tag(tag_key="policy", tag_value="nightly", private_only=False)

    first, second = (dict(request.url.params) for request in ims.requests)
    assert first["__imagetype"] == "private"
    assert first["enterprise_project_id"] == "0"
    assert "__imagetype" not in second
    assert "enterprise_project_id" not in second


def test_page_info_next_marker_is_followed_when_ims_gives_one() -> None:
    ims = ScriptedIms([page("a", next_marker="a"), page("b", "c"), page()])

    found = make_client(ims).client.list_images_by_tag(
        tag_key="policy", tag_value="nightly", whole_image=False, page_size=2
    )

    assert [image.image_id for image in found] == ["a", "b", "c"]
    assert [request.url.params.get("marker") for request in ims.requests] == [None, "a", "c"]
    assert all("__whole_image" not in request.url.params for request in ims.requests)


def test_more_pages_than_allowed_is_an_error_not_a_shortened_list() -> None:
    ims = ScriptedIms([page("a", "b"), page("c", "d"), page("e")])

    with pytest.raises(UpstreamError, match="more than 2 pages"):
        make_client(ims).client.list_images_by_tag(
            tag_key="policy", tag_value="nightly", page_size=2, max_pages=2
        )

    assert len(ims.requests) == 2


@pytest.mark.parametrize(
    "script",
    [
        [page("a", next_marker="a"), page("b", next_marker="a")],
        [page("a", next_marker="../v3")],
        [page("a", next_marker=7)],
    ],
    ids=["repeated-marker", "path-marker", "numeric-marker"],
)
def test_a_next_marker_we_cannot_trust_is_an_upstream_error(script: list[Step]) -> None:
    with pytest.raises(UpstreamError):
        make_client(ScriptedIms(script)).client.list_images_by_tag(
            tag_key="policy", tag_value="nightly"
        )


def test_a_failing_later_page_fails_the_whole_listing_after_one_attempt() -> None:
    ims = ScriptedIms([page("a", "b"), httpx.Response(503), page("c")])
    harness = make_client(ims)

    with pytest.raises(UpstreamUnavailableError):
        harness.client.list_images_by_tag(tag_key="policy", tag_value="nightly", page_size=2)

    assert len(ims.requests) == 2
    assert harness.sleeps == []


@pytest.mark.parametrize(("page_size", "max_pages"), [(0, 1), (1, 0)])
def test_a_page_size_or_page_count_below_one_is_refused(page_size: int, max_pages: int) -> None:
    ims = ScriptedIms([page()])
    client: HttpImsClient = make_client(ims).client

    with pytest.raises(ValueError, match="at least 1"):
        client.list_images_by_tag(
            tag_key="policy", tag_value="nightly", page_size=page_size, max_pages=max_pages
        )

    assert ims.requests == []
