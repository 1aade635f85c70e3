"""Standard Webhooks: a receiver's own HTTPS endpoint, sent signed events (``webhook-*`` headers).

The event is the ``notification-event`` schema: ``wholeimage.job.<verdict>`` with a
``job-result`` as data, or ``wholeimage.jobs.digest`` with every result. Machine data is never
cut to fit; ``digest_limit`` keeps an event near the spec's 20 KB. The ``webhook-id`` stays the
same across retries, so receivers de-duplicate.
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
from wholeimage.channels.text import iso, latest, ordered, utc
from wholeimage.results import Channel, JobResult

_EVENT_TYPES = {
    "SUCCESS": "wholeimage.job.succeeded",
    "FAIL": "wholeimage.job.failed",
    "TIMED_OUT": "wholeimage.job.timed_out",
    "UNCONFIRMED": "wholeimage.job.unconfirmed",
}
DIGEST_EVENT_TYPE = "wholeimage.jobs.digest"


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


def digest_id(results: Sequence[JobResult]) -> str:
    """The stable ``webhook-id`` of a digest: a hash of its results' notification keys, sorted.

    Args:
        results: The digest's results, in any order.
    """
    keys = "\n".join(sorted(result.key for result in results))
    return f"wi_digest_{hashlib.sha256(keys.encode('utf-8')).hexdigest()[:32]}"


def _event(results: Sequence[JobResult]) -> tuple[str, dict[str, Any]]:
    """The event's id and the event: one job's, or a digest of several."""
    if len(results) == 1:
        only = results[0]
        return only.key, {
            "type": _EVENT_TYPES[only.status],
            "timestamp": iso(only.ended_at),
            "data": only.to_json(),
        }
    counts = {status: sum(1 for r in results if r.status == status) for status in _EVENT_TYPES}
    return digest_id(results), {
        "type": DIGEST_EVENT_TYPE,
        "timestamp": iso(latest(results)),
        "data": {"counts": counts, "results": [r.to_json() for r in ordered(results)]},
    }


class StandardWebhookTarget:
    """A receiver's own HTTPS endpoint, signed as Standard Webhooks (``webhook-*`` headers)."""

    format = "standard"
    rate = RateLimit(per_second=None, per_minute=None)
    digest_limit = 25

    def render(
        self, results: Sequence[JobResult], channel: Channel, now: datetime
    ) -> OutgoingMessage:
        """The signed event (see ``Target.render``); ValueError without a ``whsec_`` secret."""
        key = _signing_key(channel)
        if not results:
            raise ValueError("nothing to render: results is empty")
        event_id, event = _event(results)
        body = json_bytes(event)
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
