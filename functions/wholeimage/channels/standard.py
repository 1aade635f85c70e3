"""Standard Webhooks: a receiver's own HTTPS endpoint, sent signed events (``webhook-*`` headers).

The event is the ``notification-event`` schema: ``wholeimage.job.<verdict>`` with a
``job-result`` as data. Receivers are machines, so there are no digests: each result is one
event (``digest_limit`` 1) whose ``webhook-id`` is the result's notification key, the same on
every resend to this channel (after a timeout, a killed run, a re-drive) whatever else was due
with it, so a receiver de-duplicates by it. Machine data is never cut to fit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx

from wholeimage.channels.base import Delivery, OutgoingMessage, RateLimit
from wholeimage.channels.classify import by_status, describe
from wholeimage.channels.formats import WHSEC_PREFIX
from wholeimage.channels.render import json_bytes, json_headers
from wholeimage.channels.text import iso, utc
from wholeimage.results import Channel, JobResult

_EVENT_TYPES = {
    "SUCCESS": "wholeimage.job.succeeded",
    "FAIL": "wholeimage.job.failed",
    "TIMED_OUT": "wholeimage.job.timed_out",
    "UNCONFIRMED": "wholeimage.job.unconfirmed",
}


def _signing_key(channel: Channel) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; messages never quote the secret."""
    secret = channel.secret.get_secret_value() if channel.secret is not None else ""
    if not secret:
        raise ValueError(f"channel {channel.name}: the standard format needs a secret (whsec_…)")
    if not secret.startswith(WHSEC_PREFIX):
        raise ValueError(
            f"channel {channel.name}: the secret must be a Standard Webhooks secret, whsec_<base64>"
        )
    encoded = secret.removeprefix(WHSEC_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"channel {channel.name}: the secret after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"channel {channel.name}: the secret must hold 24 to 64 random bytes")
    return key


def _event_type(result: JobResult) -> str:
    """A job's verdict, or a policy run's report (docs/policies.md §6)."""
    if result.source_kind == "policy":
        return f"wholeimage.policy_run.{'succeeded' if result.status == 'SUCCESS' else 'failed'}"
    return _EVENT_TYPES[result.status]


def _event(result: JobResult) -> dict[str, Any]:
    """One job's event."""
    return {
        "type": _event_type(result),
        "timestamp": iso(result.ended_at),
        "data": result.to_json(),
    }


class StandardWebhookTarget:
    """A receiver's own HTTPS endpoint, signed as Standard Webhooks (``webhook-*`` headers)."""

    format = "standard"
    rate = RateLimit(per_second=None, per_minute=None)
    # One event per result: a digest's id would change with its composition on a resend.
    digest_limit = 1

    def render(
        self, results: Sequence[JobResult], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """The signed event of one result (see ``Target.render``).

        Raises:
            ValueError: Not exactly one result, or no valid ``whsec_`` secret.
        """
        key = _signing_key(channel)
        if not results:
            raise ValueError("nothing to render: results is empty")
        if len(results) > 1:
            raise ValueError(f"the standard format sends one event per result, not {len(results)}")
        [result] = results
        event_id = result.key
        body = json_bytes(_event(result))
        # Seconds of this attempt; the id stays the same across retries so receivers de-duplicate.
        timestamp = str(int(utc(now).timestamp()))
        signed = f"{event_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        headers = {
            **json_headers(),
            "webhook-id": event_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": f"v1,{signature}",
        }
        return OutgoingMessage(url=channel.url.get_secret_value(), headers=headers, body=body)

    def classify(self, response: httpx.Response) -> Delivery:
        """Any 2xx delivered; 410 stop; 429/502/503/504 (and 5xx, 408, 425) retry; else permanent."""
        if response.status_code == 410:
            return Delivery(
                "permanent",
                detail=describe(
                    response, "410 Gone: the receiver asks us to stop; disable this endpoint"
                ),
            )
        return by_status(response)
