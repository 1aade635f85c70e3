"""``Retry-After`` values no server should send are read safely (found by issue 9's fuzz test):
digits ``float`` cannot read (``"²"``, which ``str.isdigit`` takes) were a ValueError, and a wait
too long for the time arithmetic (``"9" * 400`` reads as infinity) an OverflowError: each a 500
of ``create`` (IMS throttling) or ``notify`` (a webhook throttling)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from wholeimage.errors import UpstreamUnavailableError
from wholeimage.httputil import MAX_RETRY_AFTER, retry_after_seconds
from wholeimage.ims.client import HttpImsClient, RetryPolicy
from wholeimage.notify import ChannelLimiters, deliver_pending, notifications_for
from wholeimage.results import Channel, JobResult
from wholeimage.store.sqlite import SqliteJobStore

NOW = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def throttled(value: bytes) -> httpx.Response:
    # Raw bytes: a server sends what it likes, and httpx reads it back as text.
    return httpx.Response(429, headers=[(b"Retry-After", value)])


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("²".encode(), None, id="superscript-two"),
        pytest.param("٣".encode(), None, id="arabic-indic-three"),
        pytest.param(b"\xb2", None, id="latin-1-superscript-two"),
        pytest.param(b"9" * 400, MAX_RETRY_AFTER, id="infinite"),
        pytest.param(b"1" + b"0" * 30, MAX_RETRY_AFTER, id="huge"),
        pytest.param(b"Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER, id="far-date"),
        pytest.param(b"86401", MAX_RETRY_AFTER, id="a-day-and-a-second"),
        pytest.param(b"86400", 86_400.0, id="a-day"),
    ],
)
def test_a_retry_after_is_ascii_digits_and_at_most_a_day(value: bytes, seconds: float | None):
    assert retry_after_seconds(throttled(value), now=NOW) == seconds


def test_ims_throttling_with_an_endless_retry_after_is_a_503_saying_a_day():
    http = httpx.Client(
        base_url="https://ims.example",
        transport=httpx.MockTransport(lambda request: throttled(b"9" * 400)),
    )
    client = HttpImsClient(http, retry=RetryPolicy(budget=20.0), sleep=lambda _: None)

    with pytest.raises(UpstreamUnavailableError) as raised:
        client.create_whole_image({"name": "web01"})

    assert raised.value.headers() == {"Retry-After": "86400"}


def test_a_webhook_throttling_with_an_endless_retry_after_is_settled_not_a_crash(tmp_path: Path):
    store = SqliteJobStore(str(tmp_path / "state.db"))
    hook = Channel(
        name="hook", format="slack", url=SecretStr("https://hooks.slack.com/services/T/B/x")
    )
    result = JobResult(
        key="wi_r1_success",
        request_id="r1",
        job_id="j1",
        status="SUCCESS",
        image_name="web01",
        image_id="img-1",
        source_kind="ecs",
        source_id="877a2cda-ba63-4e1e-b95f-e67e48b6129a",
        requested_by=None,
        error_code=None,
        fail_reason=None,
        submitted_at=None,
        ended_at=NOW,
        console_url=None,
        region=None,
    )
    store.add_notifications(notifications_for(result, [hook], now=NOW))
    http = httpx.Client(transport=httpx.MockTransport(lambda request: throttled(b"9" * 400)))

    summary = deliver_pending(
        store=store,
        channels=[hook],
        http=http,
        limiters=ChannelLimiters(clock=lambda: 0.0),
        now=lambda: NOW,
        sleep=lambda _: None,
        rng=random.Random(0),
    )

    # A day's wait is past notify's max age (6 h): a dead letter at once, as for any such wait.
    assert summary.dead == 1
    store.close()
