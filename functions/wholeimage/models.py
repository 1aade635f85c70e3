"""Typed models, built only after a body passed its JSON Schema (the schema is the contract)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from wholeimage.statuses import BACKUP_BLOCKING, ENDED, OUTSTANDING, JobStatus

__all__ = [
    "BACKUP_BLOCKING",
    "ENDED",
    "MARKER_TAG_KEY",
    "OUTSTANDING",
    "POLICY_TAG_KEY",
    "SOURCE_TAG_KEY",
    "CreateImageRequest",
    "Job",
    "JobStatus",
    "TagKeyValue",
]


# The tag wholeimage adds to every submission, valued with its request id, so IMS itself can
# say later whether a submission whose answer was lost made an image (docs/reconcile.md). Its
# key fits both clouds' tag rules (letters, digits, "_"; docs/ims-api.md §1.3) and the schema
# keeps callers from using it, and keeps one of IMS's 10 tags free for it.
MARKER_TAG_KEY = "wholeimage_request"
# The tags every image of a lifecycle policy carries besides the marker: the policy's name and
# the source's instance id. Retention deletes only images IMS lists with both (docs/policies.md).
POLICY_TAG_KEY = "wholeimage_policy"
SOURCE_TAG_KEY = "wholeimage_source"


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class TagKeyValue(BaseModel):
    """One ``image_tags`` item."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    value: str


class CreateImageRequest(BaseModel):
    """The IMS create body, one model for the ECS, CSBS and CBR variants (as the SDK has it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str | None = None
    tags: list[str] | None = None
    image_tags: list[TagKeyValue] | None = None
    instance_id: str | None = None
    vault_id: str | None = None
    backup_id: str | None = None
    whole_image_type: Literal["CBR", "CSBS"] | None = None
    enterprise_project_id: str | None = None
    max_ram: int | None = None
    min_ram: int | None = None

    @field_validator("instance_id", "vault_id", "backup_id", "enterprise_project_id")
    @classmethod
    def _lower_case_id(cls, value: str | None) -> str | None:
        # A UUID in upper case is the same UUID (RFC 9562 §4): one id in two cases must stay
        # one source, or the one-backup-one-image rule (BACKUP_BLOCKING) could be sidestepped.
        # Other ids are left as they are: nothing says IMS reads them regardless of case.
        if value is not None and _UUID.fullmatch(value):
            return value.lower()
        return value

    @property
    def source_kind(self) -> Literal["ecs", "csbs", "cbr"]:
        """Where the image comes from."""
        if self.instance_id is not None:
            return "ecs"
        return "cbr" if self.whole_image_type == "CBR" else "csbs"

    @property
    def source_id(self) -> str:
        """The ECS id or the backup id."""
        return self.instance_id or self.backup_id or ""

    def ims_body(self, *, marker: str | None = None) -> dict[str, Any]:
        """The JSON body sent to IMS: unset fields dropped, as the official SDK does.

        ``marker`` (the request id) is added as the tag ``MARKER_TAG_KEY``, in the form the
        caller's tags already use (``tags`` and ``image_tags`` exclude each other).
        """
        body = self.model_dump(mode="json", exclude_none=True)
        if marker is not None:
            if "tags" in body:
                body["tags"] = [*body["tags"], f"{MARKER_TAG_KEY}.{marker}"]
            else:
                marker_tag = {"key": MARKER_TAG_KEY, "value": marker}
                body["image_tags"] = [*body.get("image_tags", []), marker_tag]
        return body

    def fingerprint(self) -> str:
        """A stable hash of the body, to tell a repeat from a different request under one key."""
        canonical = json.dumps(self.ims_body(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Job(BaseModel):
    """A tracked job as the state store holds it."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    idempotency_key: str | None
    request_fingerprint: str
    request: CreateImageRequest
    requested_by: str | None
    source_kind: str
    source_id: str
    status: JobStatus
    ims_job_id: str | None = None
    image_id: str | None = None
    process_percent: float | None = None
    error_code: str | None = None
    fail_reason: str | None = None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None = None
    ended_at: datetime | None = None
    poll_attempts: int = 0
    next_poll_at: datetime | None = None
    deadline_at: datetime | None = None
    trace: str | None = None

    def public_view(self, status_url: str | None) -> dict[str, Any]:
        """What callers see: the job without internals (no fingerprint, leases or counters)."""
        view: dict[str, Any] = {
            "request_id": self.request_id,
            "job_id": self.ims_job_id,
            "status": self.status.value,
            "source": {"kind": self.source_kind, "id": self.source_id},
            "image_name": self.request.name,
            "image_id": self.image_id,
            "process_percent": self.process_percent,
            "error_code": self.error_code,
            "fail_reason": self.fail_reason,
            "idempotency_key": self.idempotency_key,
            "requested_by": self.requested_by,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "submitted_at": self.submitted_at.isoformat() if self.submitted_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
        }
        if status_url is not None:
            view["status_url"] = status_url
        return view
