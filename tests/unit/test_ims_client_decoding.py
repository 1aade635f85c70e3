"""IMS answers that cannot be read were 500s of ``create`` (found by issue 9's fuzz test).

A body that cannot be decoded (``Content-Encoding: gzip`` over a body that is not) was an
``httpx.DecodingError`` out of the client. The POST was sent and answered, so IMS may have accepted
it: the client says so, as for a timeout after sending, and ``create`` records the job
``SUBMIT_UNCERTAIN`` (never resubmitted). A job id that is no text is no job id."""

from __future__ import annotations

import httpx
import pytest

from wholeimage.errors import SubmissionUncertainError, UpstreamTimeoutError
from wholeimage.ims.client import HttpImsClient, RetryPolicy


def test_an_answer_that_cannot_be_decoded_may_have_been_accepted_and_is_not_resent():
    requests: list[httpx.Request] = []

    def broken_gzip(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    http = httpx.Client(base_url="https://ims.example", transport=httpx.MockTransport(broken_gzip))
    client = HttpImsClient(http, retry=RetryPolicy(max_attempts=4), sleep=lambda _: None)

    with pytest.raises(UpstreamTimeoutError) as raised:
        client.create_whole_image({"name": "web01"})

    assert raised.value.request_sent is True
    assert len(requests) == 1


def test_a_job_id_that_is_no_text_is_no_job_id():
    """``{"job_id": "a\\ud800"}`` was taken as a job id, and storing it was a 500 that left the job
    SUBMITTING (found by issue 9's fuzz test); it is an answer without a usable job id, so the
    submission is uncertain (IMS did say 200)."""

    def lone_surrogate(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"job_id": "a\\ud800"}')

    http = httpx.Client(
        base_url="https://ims.example", transport=httpx.MockTransport(lone_surrogate)
    )
    client = HttpImsClient(http, sleep=lambda _: None)

    with pytest.raises(SubmissionUncertainError, match="not a plain token"):
        client.create_whole_image({"name": "web01"})
