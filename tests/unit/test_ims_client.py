"""``HttpImsClient`` and its auth adapters against a scripted IMS (and IAM) behind httpx.MockTransport.

No test sleeps: the client gets ``sleep=<list>.append`` and a seeded ``random.Random``, so the
retry delays it *would* wait are recorded instead. Every transport is a small handler that
records the requests it saw, so the number of attempts is asserted exactly.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from wholeimage.errors import (
    ImsRejectedError,
    SubmissionUncertainError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    WholeImageError,
)
from wholeimage.httputil import retry_after_seconds
from wholeimage.ims.auth import AkSkAuth, IamPasswordAuth, StaticTokenAuth
from wholeimage.ims.client import (
    CREATE_PATH,
    JSON_CONTENT_TYPE,
    HttpImsClient,
    RetryPolicy,
    upstream_code_and_message,
)
from wholeimage.ims.signer import authorization_header, parse_authorization
from wholeimage.logs import redact

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

IMS = "https://ims.test"
IAM = "https://iam.test"
PROJECT_ID = "0123456789abcdef0123456789abcdef"
JOB_ID = "4010a32b5f909853015f90aaa24b0015"
JOB_PATH = f"/v1/{PROJECT_ID}/jobs/{JOB_ID}"  # the poller's GET, signed by the same auths
BODY: dict[str, Any] = {
    "name": "web-01-full",
    "description": "nightly — full image",
    "instance_id": "8c9a3b8e-6f0e-4f5e-9a51-1a2b3c4d5e6f",
    "vault_id": "3b5c1d2e-0f9a-4b8c-8d7e-6f5a4b3c2d1e",
}
ACCESS_KEY = "AKEXAMPLE0000000000"
SECRET_KEY = "SKsecret-never-shown-0000000000000000000"
SECURITY_TOKEN = "STStoken-never-shown-000000000000"
STATIC_TOKEN = "MIIstatic-token-never-shown-0000"
PASSWORD = "hunter2-never-shown"
T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Scripted IMS
# ---------------------------------------------------------------------------------------------

Step = httpx.Response | type[httpx.TransportError]


@dataclass
class ScriptedIms:
    """A transport handler answering each request with the next step: a response, or an error
    class raised as the transport would (``httpx.ReadTimeout`` etc.); it records every request."""

    script: list[Step]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0)
        if isinstance(step, httpx.Response):
            return step
        raise step("scripted transport failure", request=request)


def accepted(job_id: str = JOB_ID) -> httpx.Response:
    return httpx.Response(200, json={"job_id": job_id})


def ims_error(
    status: int, code: str | None = None, message: str = "", headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"error": {"code": code, "message": message}} if code else {}
    return httpx.Response(status, json=body, headers=headers)


def gateway_error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error_code": code, "error_msg": message, "request_id": "r-1"}
    )


@dataclass
class Harness:
    client: HttpImsClient
    sleeps: list[float]
    http: httpx.Client  # the client's own httpx client, with its auth, for a plain GET


def make_client(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    auth: httpx.Auth | None = None,
    retry: RetryPolicy | None = None,
    seed: int = 7,
) -> Harness:
    http = httpx.Client(transport=httpx.MockTransport(handler), base_url=IMS, auth=auth)
    sleeps: list[float] = []
    client = HttpImsClient(http, retry=retry, sleep=sleeps.append, rng=random.Random(seed))
    return Harness(client, sleeps, http)


# ---------------------------------------------------------------------------------------------
# Submitting: success and malformed success
# ---------------------------------------------------------------------------------------------


def test_a_200_with_a_job_id_returns_it_after_posting_the_json_body_to_the_whole_image_action() -> (
    None
):
    # Given
    ims = ScriptedIms([accepted()])
    harness = make_client(ims)

    # When
    job_id = harness.client.create_whole_image(BODY)

    # Then
    assert job_id == JOB_ID
    (request,) = ims.requests
    assert request.method == "POST"
    assert str(request.url) == IMS + CREATE_PATH
    assert request.headers["Content-Type"] == "application/json;charset=UTF-8"
    assert json.loads(request.content.decode("utf-8")) == BODY
    assert harness.sleeps == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={}),
        httpx.Response(200, json={"job_id": ""}),
        httpx.Response(200, json={"job_id": 12345}),
        httpx.Response(200, json=["job_id"]),
        httpx.Response(200, content=b"<html>OK</html>"),
        httpx.Response(200),
        httpx.Response(200, content=b'{"job_id": "ff8080828'),
        httpx.Response(200, json={"job_id": "job 1"}),
        httpx.Response(200, json={"job_id": "../../v3/auth"}),
        httpx.Response(200, json={"job_id": "a\u0000b"}),
        httpx.Response(200, json={"job_id": "ff80\r\nX-Evil: 1"}),
        httpx.Response(200, json={"job_id": "jöb"}),
        httpx.Response(200, json={"job_id": "a?b=c"}),
    ],
    ids=[
        "no-job-id",
        "empty-job-id",
        "numeric-job-id",
        "array",
        "not-json",
        "empty-body",
        "truncated-json",
        "space",
        "dot-dot-slash",
        "nul",
        "crlf",
        "non-ascii",
        "query",
    ],
)
def test_a_200_without_a_plain_job_id_is_uncertain_and_never_resent(
    answer: httpx.Response,
) -> None:
    # IMS said 200: it may well have made the job, so the same POST must not go out again.
    ims = ScriptedIms([answer, accepted()])
    harness = make_client(ims)

    with pytest.raises(SubmissionUncertainError) as raised:
        harness.client.create_whole_image(BODY)

    assert type(raised.value) is SubmissionUncertainError
    assert len(ims.requests) == 1
    assert harness.sleeps == []


# ---------------------------------------------------------------------------------------------
# IMS refusals and error shapes
# ---------------------------------------------------------------------------------------------


def test_a_400_with_an_img_code_is_an_ims_rejection_carrying_the_status_code_and_message() -> None:
    message = "The backup has already been used to create an image."
    ims = ScriptedIms([ims_error(400, "IMG.0029", message)])
    harness = make_client(ims)

    with pytest.raises(ImsRejectedError) as raised:
        harness.client.create_whole_image(BODY)

    assert raised.value.http_status == 400
    assert raised.value.upstream == {"status": 400, "code": "IMG.0029", "message": message}
    assert raised.value.body()["error"]["code"] == "ims_rejected"
    assert raised.value.body()["error"]["upstream"]["code"] == "IMG.0029"
    assert message in str(raised.value)
    assert len(ims.requests) == 1


def test_a_404_with_an_img_code_is_an_ims_rejection_with_status_404() -> None:
    harness = make_client(ScriptedIms([ims_error(404, "IMG.0020", "The backup does not exist.")]))

    with pytest.raises(ImsRejectedError) as raised:
        harness.client.create_whole_image(BODY)

    assert raised.value.http_status == 404
    assert raised.value.upstream is not None
    assert raised.value.upstream["code"] == "IMG.0020"


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": "IMG.0024", "message": "The imagetype is invalid."}},
        {"error_code": "IMG.0024", "error_msg": "The imagetype is invalid.", "request_id": "r"},
        {"errorCode": "IMG.0024", "errorMsg": "The imagetype is invalid."},
    ],
    ids=["ims-nested", "gateway-snake", "camel"],
)
def test_each_upstream_error_body_shape_yields_its_code_and_message(body: dict[str, Any]) -> None:
    harness = make_client(ScriptedIms([httpx.Response(400, json=body)]))

    with pytest.raises(ImsRejectedError) as raised:
        harness.client.create_whole_image(BODY)

    assert raised.value.upstream == {
        "status": 400,
        "code": "IMG.0024",
        "message": "The imagetype is invalid.",
    }


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(400, content=b"Bad Request"),
        httpx.Response(400, json=["IMG.0001"]),
        httpx.Response(400, json={"unrelated": 1}),
        httpx.Response(400),
    ],
    ids=["text", "array", "other-object", "empty"],
)
def test_an_error_body_of_no_known_shape_yields_no_code_nor_message(
    response: httpx.Response,
) -> None:
    assert upstream_code_and_message(response) == (None, None)


@pytest.mark.parametrize(
    "response",
    [
        ims_error(401, "APIGW.0301", "Incorrect IAM authentication information"),
        gateway_error(401, "APIGW.0301", "Incorrect IAM authentication information"),
        ims_error(403, "IMG.0026", "Role invalid or no permission"),
        gateway_error(403, "APIGW.0302", "The IAM user is not authorized"),
        httpx.Response(401),
    ],
    ids=["401-apigw-nested", "401-apigw", "403-img-0026", "403-apigw", "401-bare"],
)
def test_401_and_403_are_upstream_auth_errors_answered_502_and_never_retried(
    response: httpx.Response,
) -> None:
    ims = ScriptedIms([response, accepted()])
    harness = make_client(ims)

    with pytest.raises(UpstreamAuthError) as raised:
        harness.client.create_whole_image(BODY)

    assert raised.value.http_status == 502
    assert raised.value.body()["error"]["code"] == "upstream_auth_failed"
    assert len(ims.requests) == 1
    assert harness.sleeps == []


@pytest.mark.parametrize(
    "response",
    [
        gateway_error(400, "APIGW.0301", "Incorrect IAM authentication information"),
        ims_error(404, "APIGW.0101", "The API does not exist"),
        httpx.Response(400, content=b"Bad Request"),
        httpx.Response(418, json={}),
        httpx.Response(302, headers={"Location": "https://elsewhere.test/"}),
    ],
    ids=["400-apigw", "404-apigw", "400-text", "418", "302"],
)
def test_an_answer_without_an_img_code_is_a_plain_upstream_error_answered_502(
    response: httpx.Response,
) -> None:
    ims = ScriptedIms([response, accepted()])
    harness = make_client(ims)

    with pytest.raises(UpstreamError) as raised:
        harness.client.create_whole_image(BODY)

    assert type(raised.value) is UpstreamError
    assert raised.value.http_status == 502
    assert len(ims.requests) == 1


# ---------------------------------------------------------------------------------------------
# Retries, backoff and Retry-After
# ---------------------------------------------------------------------------------------------


def test_a_429_with_retry_after_is_waited_out_then_the_job_id_returned() -> None:
    ims = ScriptedIms([ims_error(429, "APIGW.0308", "throttled", {"Retry-After": "3"}), accepted()])
    harness = make_client(ims)

    assert harness.client.create_whole_image(BODY) == JOB_ID
    assert harness.sleeps == [3.0]
    assert len(ims.requests) == 2
    assert ims.requests[0].content == ims.requests[1].content


def test_a_retry_after_given_as_an_http_date_is_waited_until_that_moment() -> None:
    # Given a date ten seconds ahead (HTTP-dates have whole seconds, and the clock runs on)
    moment = datetime.now(UTC) + timedelta(seconds=10)
    answer = httpx.Response(429, headers={"Retry-After": format_datetime(moment, usegmt=True)})
    harness = make_client(ScriptedIms([answer, accepted()]))

    assert harness.client.create_whole_image(BODY) == JOB_ID

    (slept,) = harness.sleeps
    assert 8.0 <= slept <= 10.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Tue, 02 Jan 2024 03:04:35 GMT", 30.0),
        ("Tue, 02 Jan 2024 03:04:35 -0000", 30.0),
        ("Tue, 02 Jan 2024 04:04:35 +0100", 30.0),
        ("Mon, 01 Jan 2024 00:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_as_an_http_date(
    value: str, seconds: float | None
) -> None:
    response = httpx.Response(429, headers={"Retry-After": value})

    assert retry_after_seconds(response, now=T0) == seconds


def test_an_absent_retry_after_reads_as_none() -> None:
    assert retry_after_seconds(httpx.Response(429), now=T0) is None


def test_throttling_on_every_attempt_ends_in_upstream_unavailable_after_max_attempts() -> None:
    retry = RetryPolicy(max_attempts=3)
    ims = ScriptedIms([ims_error(429, "APIGW.0308", "Too many requests") for _ in range(3)])
    harness = make_client(ims, retry=retry)

    with pytest.raises(UpstreamUnavailableError) as raised:
        harness.client.create_whole_image(BODY)

    assert len(ims.requests) == 3
    assert len(harness.sleeps) == 2
    assert raised.value.http_status == 503
    assert raised.value.retry_after >= 1
    # Without a Retry-After from IMS the hint is the longest backoff.
    assert raised.value.retry_after == math.ceil(retry.max_delay)
    assert raised.value.headers() == {"Retry-After": str(raised.value.retry_after)}
    assert raised.value.upstream == {
        "status": 429,
        "code": "APIGW.0308",
        "message": "Too many requests",
    }


@pytest.mark.parametrize(
    "transient",
    [
        ims_error(429, "APIGW.0308", "Too many requests"),
        httpx.Response(429),
        ims_error(400, "IMG.0060", "The number of tasks exceeds the flow control limit."),
        ims_error(503, "IMG.0060", "The number of tasks exceeds the flow control limit."),
        gateway_error(500, "APIGW.0308", "The throttling threshold has been reached"),
    ],
    ids=["429", "429-bare", "400-IMG.0060", "503-IMG.0060", "500-APIGW.0308"],
)
def test_certain_refusals_are_retried_then_the_job_id_returned(
    transient: httpx.Response,
) -> None:
    ims = ScriptedIms([transient, accepted()])
    harness = make_client(ims)

    assert harness.client.create_whole_image(BODY) == JOB_ID
    assert len(ims.requests) == 2
    assert len(harness.sleeps) == 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(25))
def test_backoff_without_retry_after_is_full_jitter_under_the_capped_exponential(seed: int) -> None:
    # Given a policy whose cap is reached by the fourth retry
    retry = RetryPolicy(max_attempts=7, base_delay=0.5, max_delay=3.0, budget=1_000.0)
    ims = ScriptedIms([httpx.Response(429) for _ in range(7)])
    harness = make_client(ims, retry=retry, seed=seed)

    # When
    with pytest.raises(UpstreamUnavailableError):
        harness.client.create_whole_image(BODY)

    # Then retry n waited somewhere in [0, min(max_delay, base * 2^(n-1))]
    assert len(harness.sleeps) == 6
    for n, delay in enumerate(harness.sleeps, start=1):
        assert 0.0 <= delay <= min(3.0, 0.5 * 2 ** (n - 1))


def test_backoff_delays_are_spread_over_their_whole_range_not_fixed() -> None:
    retry = RetryPolicy(base_delay=0.5, max_delay=8.0)
    rng = random.Random(1)

    draws = [retry.backoff(4, rng) for _ in range(500)]

    assert max(draws) <= 4.0
    assert min(draws) < 0.4
    assert max(draws) > 3.6
    assert [retry.backoff(10, rng) <= 8.0 for _ in range(100)] == [True] * 100


def test_a_retry_after_longer_than_the_remaining_budget_stops_retrying_early() -> None:
    # Given a 10 s budget: 3 s are spent, then IMS asks for 30 s more
    retry = RetryPolicy(max_attempts=4, budget=10.0)
    ims = ScriptedIms(
        [
            ims_error(429, "APIGW.0308", "throttled", {"Retry-After": "3"}),
            ims_error(429, "APIGW.0308", "throttled", {"Retry-After": "30"}),
            accepted(),
            accepted(),
        ]
    )
    harness = make_client(ims, retry=retry)

    # When
    with pytest.raises(UpstreamUnavailableError) as raised:
        harness.client.create_whole_image(BODY)

    # Then it gives up without waiting, telling the caller what IMS asked for
    assert len(ims.requests) == 2
    assert harness.sleeps == [3.0]
    assert raised.value.retry_after == 30
    assert raised.value.headers()["Retry-After"] == "30"


@pytest.mark.parametrize(
    "answer",
    [
        ims_error(500, "IMG.0061", "Unknown system error"),
        httpx.Response(500),
        httpx.Response(502, content=b"Bad Gateway"),
        httpx.Response(503),
        ims_error(503, "APIGW.0201", "Backend unavailable"),
        httpx.Response(501, json={}),
        httpx.Response(599),
    ],
    ids=["500-IMG.0061", "500", "502", "503", "503-apigw", "501", "599"],
)
def test_a_5xx_after_the_post_was_sent_is_uncertain_and_never_resent(
    answer: httpx.Response,
) -> None:
    # IMS (or its gateway) may have passed the job on before failing: sending it again could
    # make a second image, so the caller is told the outcome is unknown instead.
    ims = ScriptedIms([answer, accepted()])
    harness = make_client(ims)

    with pytest.raises(SubmissionUncertainError) as raised:
        harness.client.create_whole_image(BODY)

    assert len(ims.requests) == 1
    assert harness.sleeps == []
    assert raised.value.upstream is not None
    assert raised.value.upstream["status"] == answer.status_code


def test_a_first_retry_after_beyond_the_budget_means_a_single_request() -> None:
    ims = ScriptedIms([httpx.Response(429, headers={"Retry-After": "60"}), accepted()])
    harness = make_client(ims, retry=RetryPolicy(budget=20.0))

    with pytest.raises(UpstreamUnavailableError) as raised:
        harness.client.create_whole_image(BODY)

    assert len(ims.requests) == 1
    assert harness.sleeps == []
    assert raised.value.retry_after == 60


# ---------------------------------------------------------------------------------------------
# Timeouts and connection failures: a POST that left is never resubmitted
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteTimeout],
)
def test_a_post_that_fails_after_it_was_sent_is_a_timeout_and_never_resubmitted(
    failure: type[httpx.TransportError],
) -> None:
    ims = ScriptedIms([failure, accepted()])
    harness = make_client(ims)

    with pytest.raises(UpstreamTimeoutError) as raised:
        harness.client.create_whole_image(BODY)

    assert raised.value.request_sent is True
    assert raised.value.http_status == 504
    assert len(ims.requests) == 1
    assert harness.sleeps == []


def test_a_504_on_the_post_is_a_timeout_and_never_resubmitted() -> None:
    ims = ScriptedIms([httpx.Response(504, content=b"Gateway Timeout"), accepted()])
    harness = make_client(ims)

    with pytest.raises(UpstreamTimeoutError) as raised:
        harness.client.create_whole_image(BODY)

    assert raised.value.request_sent is True
    assert len(ims.requests) == 1


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_a_post_that_never_left_is_retried_and_then_succeeds(
    failure: type[httpx.TransportError],
) -> None:
    ims = ScriptedIms([failure, failure, accepted()])
    harness = make_client(ims)

    assert harness.client.create_whole_image(BODY) == JOB_ID
    assert len(ims.requests) == 3
    assert len(harness.sleeps) == 2


def test_a_post_that_never_connects_ends_in_upstream_unavailable() -> None:
    ims = ScriptedIms([httpx.ConnectError] * 4)
    harness = make_client(ims, retry=RetryPolicy(max_attempts=4))

    with pytest.raises(UpstreamUnavailableError) as raised:
        harness.client.create_whole_image(BODY)

    assert len(ims.requests) == 4
    assert raised.value.upstream == {"error": "ConnectError"}


# ---------------------------------------------------------------------------------------------
# AK/SK signing
# ---------------------------------------------------------------------------------------------


@dataclass
class Clock:
    """An injectable ``now`` the test moves by hand."""

    moment: datetime = T0

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, delta: timedelta) -> None:
        self.moment += delta


def aksk(security_token: str | None = None, clock: Clock | None = None) -> AkSkAuth:
    return AkSkAuth(ACCESS_KEY, SECRET_KEY, PROJECT_ID, security_token, now=clock or Clock())


def signed_headers_of(request: httpx.Request) -> dict[str, str]:
    """Exactly the headers the request's Authorization says were signed, as sent."""
    names = parse_authorization(request.headers["Authorization"])["SignedHeaders"].split(";")
    return {name: request.headers[name] for name in names}


def recomputed_authorization(request: httpx.Request) -> str:
    """What a verifier computes from the request as received and the secret key."""
    return authorization_header(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        method=request.method,
        path=request.url.path,
        query=request.url.params.multi_items(),
        headers=signed_headers_of(request),
        body=request.content,
    )


@dataclass(frozen=True)
class SdkCredentials:
    """What the SDK's ``Signer`` reads from ``BasicCredentials``."""

    ak: str
    sk: str


def sdk_authorization(request: httpx.Request) -> str:
    """The official SDK signer's Authorization for the same method, host, path, headers, body."""
    sdk_request = SdkRequest(
        method=request.method,
        schema="https",
        host=request.url.host,
        resource_path=request.url.path,
        query_params=list(request.url.params.multi_items()),
        header_params=signed_headers_of(request),
        body=request.content or None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Signer(SdkCredentials(ak=ACCESS_KEY, sk=SECRET_KEY)).sign(sdk_request)
    value: str = sdk_request.header_params["Authorization"]
    return value


def test_an_aksk_signed_post_carries_the_signed_headers_and_a_verifiable_signature() -> None:
    ims = ScriptedIms([accepted()])
    harness = make_client(ims, auth=aksk())

    harness.client.create_whole_image(BODY)

    (request,) = ims.requests
    assert request.headers["Host"] == "ims.test"
    assert request.headers["X-Sdk-Date"] == "20240102T030405Z"
    assert request.headers["X-Project-Id"] == PROJECT_ID
    assert request.headers["Content-Type"] == JSON_CONTENT_TYPE
    assert "X-Security-Token" not in request.headers
    authorization = parse_authorization(request.headers["Authorization"])
    assert authorization["Access"] == ACCESS_KEY
    assert authorization["SignedHeaders"] == "content-type;host;x-project-id;x-sdk-date"
    assert request.headers["Authorization"] == recomputed_authorization(request)


def test_temporary_aksk_sends_and_signs_the_security_token() -> None:
    ims = ScriptedIms([accepted()])
    harness = make_client(ims, auth=aksk(security_token=SECURITY_TOKEN))

    harness.client.create_whole_image(BODY)

    (request,) = ims.requests
    assert request.headers["X-Security-Token"] == SECURITY_TOKEN
    assert (
        parse_authorization(request.headers["Authorization"])["SignedHeaders"]
        == "content-type;host;x-project-id;x-sdk-date;x-security-token"
    )
    assert request.headers["Authorization"] == recomputed_authorization(request)


def test_an_aksk_signed_get_signs_no_content_type() -> None:
    ims = ScriptedIms([httpx.Response(200, json={"status": "INIT"})])
    harness = make_client(ims, auth=aksk())

    harness.http.get(JOB_PATH)

    (request,) = ims.requests
    assert "Content-Type" not in request.headers
    assert (
        parse_authorization(request.headers["Authorization"])["SignedHeaders"]
        == "host;x-project-id;x-sdk-date"
    )
    assert request.headers["Authorization"] == recomputed_authorization(request)


def test_a_tampered_body_no_longer_verifies() -> None:
    ims = ScriptedIms([accepted()])
    make_client(ims, auth=aksk()).client.create_whole_image(BODY)
    (request,) = ims.requests

    tampered = httpx.Request(
        request.method, request.url, headers=request.headers, content=b'{"name":"other"}'
    )

    assert recomputed_authorization(tampered) != request.headers["Authorization"]


@pytest.mark.parametrize("security_token", [None, SECURITY_TOKEN], ids=["aksk", "temporary-aksk"])
@pytest.mark.parametrize("call", ["create", "job-query"])
def test_the_aksk_authorization_equals_the_official_sdk_signers(
    security_token: str | None, call: str
) -> None:
    ims = ScriptedIms([accepted() if call == "create" else httpx.Response(200, json={})])
    harness = make_client(ims, auth=aksk(security_token))

    if call == "create":
        harness.client.create_whole_image(BODY)
    else:
        harness.http.get(JOB_PATH)

    (request,) = ims.requests
    assert request.headers["Authorization"] == sdk_authorization(request)


def test_a_query_string_is_signed_as_the_official_sdk_signs_it() -> None:
    ims = ScriptedIms([httpx.Response(200, json={})])
    http = httpx.Client(transport=httpx.MockTransport(ims), base_url=IMS, auth=aksk())

    http.get("/v2/cloudimages", params=[("name", "web 01"), ("__imagetype", "private")])

    (request,) = ims.requests
    assert request.headers["Authorization"] == recomputed_authorization(request)
    assert request.headers["Authorization"] == sdk_authorization(request)


def test_each_retry_is_signed_afresh_with_the_current_date() -> None:
    clock = Clock()
    ims = ScriptedIms([httpx.Response(429, headers={"Retry-After": "2"}), accepted()])
    http = httpx.Client(transport=httpx.MockTransport(ims), base_url=IMS, auth=aksk(clock=clock))

    def sleep(seconds: float) -> None:
        clock.advance(timedelta(seconds=seconds))

    client = HttpImsClient(http, sleep=sleep, rng=random.Random(0))

    client.create_whole_image(BODY)

    first, second = ims.requests
    assert first.headers["X-Sdk-Date"] == "20240102T030405Z"
    assert second.headers["X-Sdk-Date"] == "20240102T030407Z"
    assert second.headers["Authorization"] == recomputed_authorization(second)


# ---------------------------------------------------------------------------------------------
# A static token
# ---------------------------------------------------------------------------------------------


def test_a_static_token_is_sent_as_x_auth_token_without_any_signature() -> None:
    ims = ScriptedIms([accepted()])
    harness = make_client(ims, auth=StaticTokenAuth(STATIC_TOKEN))

    harness.client.create_whole_image(BODY)

    (request,) = ims.requests
    assert request.headers["X-Auth-Token"] == STATIC_TOKEN
    assert "Authorization" not in request.headers
    assert "X-Sdk-Date" not in request.headers


# ---------------------------------------------------------------------------------------------
# IAM password tokens
# ---------------------------------------------------------------------------------------------


@dataclass
class FakeCloud:
    """IAM issuing ``token-1``, ``token-2``… and IMS accepting only tokens IAM issued and nobody
    revoked. IAM's answer is *streamed*, as a real transport delivers it (not pre-read)."""

    clock: Clock
    token_lifetime: timedelta | None = timedelta(hours=24)
    iam_status: int = 201
    iam_delay: float = 0.0
    iam_failures: list[type[httpx.TransportError]] = field(default_factory=list)
    iam_requests: list[httpx.Request] = field(default_factory=list)
    ims_requests: list[httpx.Request] = field(default_factory=list)
    # Recorded on arrival: the auth flow resends the same Request object with a new token.
    ims_tokens: list[str | None] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    on_rejection: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "iam.test":
            return self._iam(request)
        return self._ims(request)

    def _iam(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.iam_requests.append(request)
            failure = self.iam_failures.pop(0) if self.iam_failures else None
        if failure is not None:
            raise failure("IAM did not answer", request=request)
        if self.iam_delay:
            time.sleep(self.iam_delay)  # widens the window in which threads could race
        if self.iam_status != 201:
            body = {
                "error": {"code": self.iam_status, "message": "The username or password is wrong."}
            }
            return httpx.Response(self.iam_status, json=body)
        with self._lock:
            token = f"token-{len(self.issued) + 1}"
            self.issued.append(token)
        payload: dict[str, Any] = {"token": {"project": {"id": PROJECT_ID}}}
        if self.token_lifetime is not None:
            expires_at = self.clock() + self.token_lifetime
            payload["token"]["expires_at"] = expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return httpx.Response(
            201,
            headers={"X-Subject-Token": token, "Content-Type": "application/json"},
            stream=httpx.ByteStream(json.dumps(payload).encode("utf-8")),
        )

    def _ims(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("X-Auth-Token")
        with self._lock:
            self.ims_requests.append(request)
            self.ims_tokens.append(token)
        if token not in self.issued or token in self.revoked:
            if self.on_rejection is not None:
                self.on_rejection()
            return gateway_error(401, "APIGW.0301", "Incorrect IAM authentication information")
        if request.method == "GET":
            return httpx.Response(200, json={"status": "RUNNING"})
        return accepted()

    def tokens_sent_to_ims(self) -> list[str | None]:
        return list(self.ims_tokens)


@dataclass
class IamSetup:
    cloud: FakeCloud
    auth: IamPasswordAuth
    harness: Harness


@pytest.fixture
def iam() -> IamSetup:
    return iam_setup()


def iam_setup(retry: RetryPolicy | None = None, **cloud_options: Any) -> IamSetup:
    clock = Clock()
    cloud = FakeCloud(clock=clock, **cloud_options)
    auth = IamPasswordAuth(
        iam_endpoint=IAM,
        user="image-bot",
        password=PASSWORD,
        domain="acme-domain",
        project_id=PROJECT_ID,
        now=clock,
    )
    return IamSetup(cloud, auth, make_client(cloud, auth=auth, retry=retry))


def test_the_first_call_fetches_a_project_scoped_token_with_the_password_and_sends_it(
    iam: IamSetup,
) -> None:
    # When
    job_id = iam.harness.client.create_whole_image(BODY)

    # Then IAM was asked once, as docs/ims-api.md §4.1 says
    assert job_id == JOB_ID
    (token_request,) = iam.cloud.iam_requests
    assert token_request.method == "POST"
    assert str(token_request.url) == f"{IAM}/v3/auth/tokens?nocatalog=true"
    assert token_request.headers["Content-Type"] == "application/json;charset=utf8"
    assert json.loads(token_request.content) == {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": "image-bot",
                        "password": PASSWORD,
                        "domain": {"name": "acme-domain"},
                    }
                },
            },
            "scope": {"project": {"id": PROJECT_ID}},
        }
    }
    # And IMS got the token IAM issued, and nothing signed
    (ims_request,) = iam.cloud.ims_requests
    assert ims_request.headers["X-Auth-Token"] == "token-1"
    assert "Authorization" not in ims_request.headers


def test_later_calls_reuse_the_cached_token(iam: IamSetup) -> None:
    iam.harness.client.create_whole_image(BODY)
    iam.harness.http.get(JOB_PATH)
    iam.harness.client.create_whole_image(BODY)

    assert len(iam.cloud.iam_requests) == 1
    assert iam.cloud.tokens_sent_to_ims() == ["token-1"] * 3


def test_a_token_is_replaced_once_it_is_within_30_minutes_of_expiry(iam: IamSetup) -> None:
    # Given a 24 h token
    iam.harness.client.create_whole_image(BODY)

    # When 23 h 29 min have passed, it is still used
    iam.cloud.clock.advance(timedelta(hours=23, minutes=29))
    iam.harness.client.create_whole_image(BODY)
    assert len(iam.cloud.iam_requests) == 1

    # When 23 h 31 min have passed, a new one is fetched first
    iam.cloud.clock.advance(timedelta(minutes=2))
    iam.harness.client.create_whole_image(BODY)

    assert len(iam.cloud.iam_requests) == 2
    assert iam.cloud.tokens_sent_to_ims() == ["token-1", "token-1", "token-2"]


def test_a_token_without_a_readable_expiry_is_kept_only_briefly() -> None:
    setup = iam_setup(token_lifetime=None)
    setup.harness.client.create_whole_image(BODY)

    setup.cloud.clock.advance(timedelta(minutes=29))
    setup.harness.client.create_whole_image(BODY)
    assert len(setup.cloud.iam_requests) == 1

    setup.cloud.clock.advance(timedelta(minutes=2))
    setup.harness.client.create_whole_image(BODY)
    assert len(setup.cloud.iam_requests) == 2


def test_a_401_from_ims_fetches_one_new_token_and_resends_once(iam: IamSetup) -> None:
    # Given a cached token that IAM has since revoked (a password change, say)
    iam.harness.client.create_whole_image(BODY)
    iam.cloud.revoked.add("token-1")

    # When
    job_id = iam.harness.client.create_whole_image(BODY)

    # Then
    assert job_id == JOB_ID
    assert len(iam.cloud.iam_requests) == 2
    assert iam.cloud.tokens_sent_to_ims() == ["token-1", "token-1", "token-2"]
    assert iam.harness.sleeps == []


def test_a_401_with_a_fresh_token_too_is_an_upstream_auth_error_after_one_refresh(
    iam: IamSetup,
) -> None:
    # Given IMS refuses every token (the user lost its IMS permissions)
    iam.cloud.revoked.update({"token-1", "token-2", "token-3"})

    # When
    with pytest.raises(UpstreamAuthError) as raised:
        iam.harness.client.create_whole_image(BODY)

    # Then exactly one refresh and one resend, and no retry on top
    assert raised.value.http_status == 502
    assert len(iam.cloud.iam_requests) == 2
    assert iam.cloud.tokens_sent_to_ims() == ["token-1", "token-2"]


def test_iam_refusing_the_password_is_an_upstream_auth_error_and_ims_is_never_called() -> None:
    setup = iam_setup(iam_status=401)

    with pytest.raises(UpstreamAuthError) as raised:
        setup.harness.client.create_whole_image(BODY)

    assert raised.value.http_status == 502
    assert raised.value.upstream == {
        "status": 401,
        "code": "401",
        "message": "The username or password is wrong.",
    }
    assert len(setup.cloud.iam_requests) == 1
    assert setup.cloud.ims_requests == []


def test_an_iam_timeout_before_the_post_is_retried_since_ims_never_saw_the_request() -> None:
    # Given IAM times out once while a token is fetched for a submission
    setup = iam_setup(iam_failures=[httpx.ReadTimeout])

    # When
    job_id = setup.harness.client.create_whole_image(BODY)

    # Then it is no "may have been accepted" timeout: IMS gets the request exactly once
    assert job_id == JOB_ID
    assert len(setup.cloud.iam_requests) == 2
    assert len(setup.cloud.ims_requests) == 1


def test_an_iam_failure_releases_the_token_lock_for_the_next_call() -> None:
    setup = iam_setup(retry=RetryPolicy(max_attempts=1), iam_failures=[httpx.ConnectError])

    with pytest.raises(UpstreamUnavailableError):
        setup.harness.client.create_whole_image(BODY)

    assert not setup.auth._lock.locked()
    assert setup.harness.client.create_whole_image(BODY) == JOB_ID


def run_in_threads(count: int, work: Callable[[], str]) -> tuple[list[str], list[BaseException]]:
    """Start ``count`` threads together on ``work``; collect results and failures."""
    start = threading.Barrier(count)
    results: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        start.wait(timeout=5)
        try:
            value = work()
        except BaseException as exc:  # reported by the test, not by the thread machinery
            with lock:
                failures.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    return results, failures


def test_concurrent_first_calls_fetch_a_single_token() -> None:
    # Given an empty cache and an IAM slow enough for all threads to arrive while it answers
    setup = iam_setup(iam_delay=0.05)

    # When
    results, failures = run_in_threads(8, lambda: setup.harness.client.create_whole_image(BODY))

    # Then
    assert failures == []
    assert results == [JOB_ID] * 8
    assert len(setup.cloud.iam_requests) == 1
    assert setup.cloud.tokens_sent_to_ims() == ["token-1"] * 8


def test_concurrent_401s_share_one_refresh_and_both_resend_with_the_new_token() -> None:
    # Given a cached token that IMS now refuses, and two calls whose requests are both refused
    # before either refreshes (the barrier holds the first refusal until the second arrives)
    setup = iam_setup()
    setup.harness.client.create_whole_image(BODY)
    setup.cloud.revoked.add("token-1")
    both_refused = threading.Barrier(2)
    refusals: list[int] = []

    def hold_the_first_two_refusals() -> None:
        refusals.append(1)
        if len(refusals) <= 2:
            both_refused.wait(timeout=5)

    setup.cloud.on_rejection = hold_the_first_two_refusals

    # When
    results, failures = run_in_threads(2, lambda: setup.harness.client.create_whole_image(BODY))

    # Then one refresh served both, and neither resent the refused token
    assert failures == []
    assert results == [JOB_ID, JOB_ID]
    assert len(setup.cloud.iam_requests) == 2
    assert sorted(str(t) for t in setup.cloud.tokens_sent_to_ims()[1:]) == [
        "token-1",
        "token-1",
        "token-2",
        "token-2",
    ]


# ---------------------------------------------------------------------------------------------
# Secrets never leak into errors
# ---------------------------------------------------------------------------------------------

SECRETS = (SECRET_KEY, SECURITY_TOKEN, STATIC_TOKEN, PASSWORD, "token-1", "token-2")


def errors_raised_along_every_failure_path() -> Iterator[WholeImageError]:
    """Drive each auth through each way a call can fail, yielding the errors raised."""
    answers: list[Step] = [
        ims_error(400, "IMG.0029", "The backup has already been used."),
        gateway_error(400, "APIGW.0303", "Signature expired"),
        gateway_error(401, "APIGW.0301", "Incorrect IAM authentication information"),
        ims_error(403, "IMG.0026", "No permission"),
        httpx.ReadTimeout,
        httpx.Response(504),
        httpx.Response(200, json={}),
    ]
    auths: list[Callable[[], httpx.Auth]] = [
        lambda: aksk(security_token=SECURITY_TOKEN),
        lambda: StaticTokenAuth(STATIC_TOKEN),
    ]
    for make_auth in auths:
        for answer in answers:
            yield from _raised(make_client(ScriptedIms([answer]), auth=make_auth()).client)
        exhausted = ScriptedIms([httpx.Response(503) for _ in range(4)])
        yield from _raised(make_client(exhausted, auth=make_auth()).client)

    yield from _raised(iam_setup(iam_status=401).harness.client)
    yield from _raised(iam_setup(iam_status=403).harness.client)
    refused = iam_setup()
    refused.cloud.revoked.update({"token-1", "token-2"})
    yield from _raised(refused.harness.client)


def _raised(client: HttpImsClient) -> Iterator[WholeImageError]:
    try:
        client.create_whole_image(BODY)
    except WholeImageError as exc:
        yield exc
    else:
        pytest.fail("the call was expected to fail")


def test_no_secret_appears_in_any_raised_error() -> None:
    errors = list(errors_raised_along_every_failure_path())

    assert len(errors) == 19
    for error in errors:
        exposed = str(error) + json.dumps(error.body()) + json.dumps(error.headers())
        for secret in SECRETS:
            assert secret not in exposed, (type(error).__name__, secret)


# ---------------------------------------------------------------------------------------------
# The image list by marker tag (reconciliation's question, docs/ims-api.md §2.5)
# ---------------------------------------------------------------------------------------------

MARKER = "5f0c2a7d9e3b4c1a8f6e2d4b0a9c7e15"
IMAGE_ID = "c1a4b2f3-5d6e-4f70-8a9b-0c1d2e3f4a5b"


def image_list(*images: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"images": list(images)})


def listed(image_id: str = IMAGE_ID, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {"id": image_id, "name": "web-01-full", "status": status, **extra}


def test_find_whole_images_asks_by_tag_and_whole_image_and_reads_each_image() -> None:
    ims = ScriptedIms(
        [image_list(listed(created_at="2026-11-27T09:00:00Z"), listed("img-2", "saving"))]
    )
    harness = make_client(ims)

    found = harness.client.find_whole_images(tag_key="wholeimage_request", tag_value=MARKER)

    (request,) = ims.requests
    assert request.method == "GET"
    assert request.url.path == "/v2/cloudimages"
    assert dict(request.url.params) == {
        "tag": f"wholeimage_request={MARKER}",
        "__whole_image": "true",
    }
    assert [(image.image_id, image.status) for image in found] == [
        (IMAGE_ID, "active"),
        ("img-2", "saving"),
    ]
    assert found[0].created_at == "2026-11-27T09:00:00Z"
    assert found[0].tags is None  # not listed: unknown, not empty


def test_the_image_list_reads_the_tags_ims_lists_and_passes_the_enterprise_project() -> None:
    ims = ScriptedIms([image_list(listed(tags=[f"wholeimage_request={MARKER}", "owner=ops", 7]))])
    harness = make_client(ims)

    [found] = harness.client.find_whole_images(
        tag_key="wholeimage_request", tag_value=MARKER, enterprise_project_id="0"
    )

    assert found.tags == (f"wholeimage_request={MARKER}", "owner=ops")
    assert ims.requests[0].url.params["enterprise_project_id"] == "0"


def test_find_whole_images_is_signed_as_the_official_sdk_signs_it() -> None:
    ims = ScriptedIms([image_list()])
    http = httpx.Client(transport=httpx.MockTransport(ims), base_url=IMS, auth=aksk())

    assert (
        HttpImsClient(http).find_whole_images(tag_key="wholeimage_request", tag_value=MARKER) == []
    )

    (request,) = ims.requests
    assert request.headers["Authorization"] == sdk_authorization(request)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>OK</html>"),
        httpx.Response(200, json=[]),
        httpx.Response(200, json={"images": "none"}),
        httpx.Response(200, json={"images": ["img"]}),
        image_list(listed("../v3/auth/tokens")),
        image_list(listed("img 1")),
        image_list(listed(IMAGE_ID, "available")),
        image_list({"name": "no-id", "status": "active"}),
    ],
    ids=[
        "html",
        "array",
        "images-not-a-list",
        "image-not-an-object",
        "path-id",
        "space-id",
        "unknown-status",
        "no-id",
    ],
)
def test_an_image_list_we_cannot_trust_is_an_upstream_error_not_an_answer(
    answer: httpx.Response,
) -> None:
    # "No image" must only ever come from an answer that was read: anything else is a failure.
    harness = make_client(ScriptedIms([answer]))

    with pytest.raises(UpstreamError):
        harness.client.find_whole_images(tag_key="wholeimage_request", tag_value=MARKER)


@pytest.mark.parametrize(
    "transient",
    [
        httpx.Response(503),
        httpx.Response(500),
        ims_error(429, "APIGW.0308", "throttled"),
        httpx.ReadTimeout,
    ],
    ids=["503", "500", "429", "read-timeout"],
)
def test_the_image_list_is_asked_once_and_a_transient_failure_says_when_to_ask_again(
    transient: Step,
) -> None:
    # The reconcile schedule asks again; retrying here would spend the tick's budget.
    ims = ScriptedIms([transient, image_list(listed())])
    harness = make_client(ims)

    with pytest.raises(UpstreamUnavailableError) as raised:
        harness.client.find_whole_images(tag_key="wholeimage_request", tag_value=MARKER)

    assert len(ims.requests) == 1
    assert harness.sleeps == []
    assert raised.value.retry_after >= 1


def test_our_credentials_refused_on_the_image_list_is_an_auth_error() -> None:
    harness = make_client(ScriptedIms([gateway_error(401, "APIGW.0301", "bad signature")]))

    with pytest.raises(UpstreamAuthError):
        harness.client.find_whole_images(tag_key="wholeimage_request", tag_value=MARKER)


def test_an_iam_token_once_fetched_is_redacted_from_what_is_logged_or_answered() -> None:
    # A gateway quoting our request back quotes the token bare: it is a secret like the SK.
    token = f"MIIT-{uuid.uuid4().hex}"
    quoted = f"refused: the token {token} has expired"
    assert token in redact(quoted)  # unknown before IAM issued it

    def cloud(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/auth/tokens":
            return httpx.Response(201, headers={"X-Subject-Token": token}, json={"token": {}})
        return accepted()

    auth = IamPasswordAuth(
        iam_endpoint=IAM, user="image-bot", password=PASSWORD, domain="d", project_id=PROJECT_ID
    )
    make_client(cloud, auth=auth).client.create_whole_image(BODY)

    assert token not in redact(quoted)
