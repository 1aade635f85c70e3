"""What notification is about: one job's verdict (``JobResult``) and where it goes (``Channel``).

Every chat payload is built from ``JobResult`` alone (``wholeimage.channels``); channels come from
configuration only, never from request content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import SecretStr

from wholeimage.models import Job


def read_date_time(text: str) -> datetime:
    """An RFC 3339 date-time as an aware datetime (UTC when it has no offset).

    RFC 3339 §5.6 lets ``T`` and ``Z`` be lower case, and the schemas' pattern does too;
    ``datetime.fromisoformat`` reads ``Z`` and a lower-case ``t``, not a lower-case ``z``, so a
    final ``Z`` or ``z`` is read as ``+00:00``.

    Raises:
        ValueError: ``text`` is no time ``datetime.fromisoformat`` reads.
    """
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


Verdict = Literal["SUCCESS", "FAIL", "TIMED_OUT", "UNCONFIRMED"]
VERDICTS: tuple[Verdict, ...] = ("SUCCESS", "FAIL", "TIMED_OUT", "UNCONFIRMED")

# Console pages of the private image list, where an image id can be looked up.
_CONSOLES = {
    "huaweicloud": "https://console-intl.huaweicloud.com/ims/?region={region}#/ims/manager/imageList/privateImage",
    "otc": "https://console.otc.t-systems.com/ims/?region={region}#/ims/manager/imageList/privateImage",
}


def console_url(cloud: str | None, region: str | None) -> str | None:
    """The console page listing private images, when cloud and region are known."""
    if not cloud or not region or cloud not in _CONSOLES:
        return None
    return _CONSOLES[cloud].format(region=region)


def notification_key(request_id: str, verdict: str) -> str:
    """The stable key of one verdict: the outbox row key and the Standard Webhooks ``webhook-id``."""
    return f"wi_{request_id}_{verdict.lower()}"


@dataclass(frozen=True)
class JobResult:
    """One job's verdict, as every channel reports it."""

    key: str
    request_id: str
    job_id: str | None
    status: Verdict
    image_name: str
    image_id: str | None
    source_kind: str
    source_id: str
    requested_by: str | None
    error_code: str | None
    fail_reason: str | None
    submitted_at: datetime | None
    ended_at: datetime
    console_url: str | None = None
    region: str | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds from submission to verdict."""
        if self.submitted_at is None:
            return None
        return max((self.ended_at - self.submitted_at).total_seconds(), 0.0)

    @classmethod
    def from_job(
        cls, job: Job, *, console: str | None = None, region: str | None = None
    ) -> JobResult:
        """The verdict of an ended job."""
        if job.status.value not in VERDICTS:
            raise ValueError(f"job {job.request_id} has not ended ({job.status.value})")
        verdict: Verdict = job.status.value
        return cls(
            key=notification_key(job.request_id, verdict),
            request_id=job.request_id,
            job_id=job.ims_job_id,
            status=verdict,
            image_name=job.request.name,
            image_id=job.image_id,
            source_kind=job.source_kind,
            source_id=job.source_id,
            requested_by=job.requested_by,
            error_code=job.error_code,
            fail_reason=job.fail_reason,
            submitted_at=job.submitted_at,
            ended_at=job.ended_at or job.updated_at,
            console_url=console,
            region=region,
        )

    def to_json(self) -> dict[str, Any]:
        """The result as the ``job-result`` schema describes it."""
        return {
            "key": self.key,
            "request_id": self.request_id,
            "job_id": self.job_id,
            "status": self.status,
            "image_name": self.image_name,
            "image_id": self.image_id,
            "source": {"kind": self.source_kind, "id": self.source_id},
            "requested_by": self.requested_by,
            "error_code": self.error_code,
            "fail_reason": self.fail_reason,
            "submitted_at": self.submitted_at.isoformat() if self.submitted_at else None,
            "ended_at": self.ended_at.isoformat(),
            "duration_s": self.duration_s,
            "console_url": self.console_url,
            "region": self.region,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        """Read back ``to_json`` (or a body already validated against ``job-result``)."""

        def moment(value: Any) -> datetime | None:
            return read_date_time(str(value)) if value else None

        source = data.get("source") or {}
        status: Verdict = data["status"]
        return cls(
            key=data.get("key") or notification_key(data["request_id"], status),
            request_id=data["request_id"],
            job_id=data.get("job_id"),
            status=status,
            image_name=data["image_name"],
            image_id=data.get("image_id"),
            source_kind=source.get("kind", "ecs"),
            source_id=source.get("id", ""),
            requested_by=data.get("requested_by"),
            error_code=data.get("error_code"),
            fail_reason=data.get("fail_reason"),
            submitted_at=moment(data.get("submitted_at")),
            ended_at=moment(data.get("ended_at")) or datetime.now(UTC),
            console_url=data.get("console_url"),
            region=data.get("region"),
        )


@dataclass(frozen=True)
class Channel:
    """One configured destination. ``url`` and ``secret`` carry credentials: never print them.

    ``on`` is the filter: the verdicts this channel hears about. ``keyword`` is prefixed to the
    message text for robots that only accept messages containing a configured keyword
    (Feishu, DingTalk, WeCom).
    """

    name: str
    format: str
    url: SecretStr
    secret: SecretStr | None = None
    on: frozenset[str] = field(default_factory=lambda: frozenset(VERDICTS))
    keyword: str | None = None

    def wants(self, verdict: str) -> bool:
        """Does this channel hear about ``verdict``?"""
        return verdict in self.on
