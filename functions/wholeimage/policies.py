"""Image lifecycle policies as data: the validated document, its slots and its create requests.

A policy (``schemas/policy.schema.json``, docs/policies.md) names sources, a cron schedule in a
time zone, how each image is named and tagged, and a retention. This module is pure: it turns a
document into a ``Policy`` (every failing field by JSON path, as ``create`` reports them), says
when slots fall, and builds the create request of one (source, slot). Running slots, rotating
images out and reporting live in ``wholeimage.lifecycle``.

Every image a policy makes carries, besides the marker every submission gets
(``wholeimage_request``), ``wholeimage_policy=<name>`` and ``wholeimage_source=<instance id>``:
retention deletes only images IMS itself lists with both, so a lost or foreign store can never
make it delete an image the policy did not make.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from wholeimage.errors import RequestInvalidError
from wholeimage.idempotency import POLICY_KEY_PREFIX
from wholeimage.models import (
    POLICY_TAG_KEY,
    SOURCE_TAG_KEY,
    CreateImageRequest,
    TagKeyValue,
)

POLICY_SCHEMA = "policy.schema.json"

# The placeholders of ``image.name_template``; any other ``{...}`` is refused.
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("policy", "source", "slot", "date", "time")
# The moment used to check that a template yields a valid name (the lengths of {slot}, {date},
# {time} never vary, so any moment shows what every slot yields).
_SAMPLE_SLOT = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
# How far ahead a cron expression must have a slot, or it is refused ("0 0 30 2 *").
_HORIZON = timedelta(days=366 * 5)
# A policy run's id names the policy and its slot: letters, digits and '-' (a webhook id too).
RUN_ID_PREFIX = "policy-"


def _lower_uuid(value: str | None) -> str | None:
    return value.lower() if value is not None else None


class PolicySource(BaseModel):
    """One ECS a policy images, and the vault its backup goes into."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    instance_id: str
    vault_id: str | None = None
    label: str | None = None

    @field_validator("instance_id", "vault_id")
    @classmethod
    def _lower_case_id(cls, value: str | None) -> str | None:
        # One UUID in two cases is one ECS (as CreateImageRequest reads it): one idempotency key.
        return _lower_uuid(value)

    @property
    def shown(self) -> str:
        """What ``{source}`` stands for."""
        return self.label or self.instance_id


class PolicyImage(BaseModel):
    """What every image of the policy is asked for with."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name_template: str = "{source}-{slot}"
    description: str | None = None
    tags: tuple[TagKeyValue, ...] = ()
    enterprise_project_id: str | None = None


class Schedule(BaseModel):
    """A five-field cron expression in an IANA time zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: str
    timezone: str = "UTC"


class Retention(BaseModel):
    """Which successful images of a source stay after a new one succeeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    keep_last: int | None = None
    max_age_days: int | None = None


class Policy(BaseModel):
    """A validated policy document (``policy_from_document`` builds one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str | None = None
    enabled: bool = True
    schedule: Schedule
    sources: tuple[PolicySource, ...]
    image: PolicyImage = PolicyImage()
    retention: Retention
    delete_backup: bool = True
    channels: tuple[str, ...] | None = None
    pause_after_failures: int = 3

    # --- the schedule ------------------------------------------------------------------------

    @cached_property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.schedule.timezone)

    def next_slot_after(self, moment: datetime) -> datetime:
        """The first slot strictly after ``moment``, in UTC."""
        from croniter import croniter  # noqa: PLC0415 - only check and the CLI evaluate schedules

        iterator = croniter(self.schedule.cron, moment.astimezone(self.zone))
        while True:
            found = _utc(iterator.get_next(datetime))
            # A wall time a fall-back repeats is one slot, at its first occurrence (as cron
            # runs it): a daily 02:30 makes one image that night, not two of one name.
            if self._first_occurrence(found) == found:
                return found

    def latest_slot_at_or_before(self, moment: datetime) -> datetime:
        """The last slot at or before ``moment``, in UTC."""
        from croniter import croniter  # noqa: PLC0415

        # croniter's get_prev is strict: start a second past the (whole-second) moment.
        start = moment.astimezone(self.zone).replace(microsecond=0) + timedelta(seconds=1)
        found = self._first_occurrence(_utc(croniter(self.schedule.cron, start).get_prev(datetime)))
        # Across a fall-back croniter's get_prev can land a day early: step on to the last slot.
        while (following := self.next_slot_after(found)) <= moment:
            found = following
        return found

    def _first_occurrence(self, moment: datetime) -> datetime:
        """``moment``, or when its local wall time is the second of a fall-back's two, the first."""
        local = moment.astimezone(self.zone)
        if local.fold:
            first = local.replace(fold=0)
            if first.utcoffset() != local.utcoffset():
                return _utc(first)
        return moment

    def slots_between(self, after: datetime, until: datetime, *, limit: int) -> list[datetime]:
        """Slots in ``(after, until]``, at most ``limit`` of them (the earliest)."""
        slots: list[datetime] = []
        moment = after
        while len(slots) < limit:
            moment = self.next_slot_after(moment)
            if moment > until:
                break
            slots.append(moment)
        return slots

    # --- what one slot makes -----------------------------------------------------------------

    def image_name(self, source: PolicySource, slot: datetime) -> str:
        """The image name ``name_template`` gives ``source`` at ``slot``."""
        local = slot.astimezone(self.zone)
        values = {
            "policy": self.name,
            "source": source.shown,
            "slot": f"{local:%Y%m%d-%H%M}",
            "date": f"{local:%Y%m%d}",
            "time": f"{local:%H%M}",
        }
        return _PLACEHOLDER.sub(lambda match: values[match[1]], self.image.name_template)

    def caller_body(self, source: PolicySource, slot: datetime) -> dict[str, Any]:
        """The create body as a caller would send it (without wholeimage's own tags)."""
        body: dict[str, Any] = {
            "name": self.image_name(source, slot),
            "instance_id": source.instance_id,
        }
        if source.vault_id is not None:
            body["vault_id"] = source.vault_id
        if self.image.description is not None:
            body["description"] = self.image.description
        if self.image.tags:
            body["image_tags"] = [tag.model_dump() for tag in self.image.tags]
        if self.image.enterprise_project_id is not None:
            body["enterprise_project_id"] = self.image.enterprise_project_id
        return body

    def create_request(self, source: PolicySource, slot: datetime) -> CreateImageRequest:
        """The create request of (``source``, ``slot``): the caller's body, validated when the
        policy was, plus the policy's two tags."""
        body = self.caller_body(source, slot)
        body["image_tags"] = [
            *body.get("image_tags", []),
            {"key": POLICY_TAG_KEY, "value": self.name},
            {"key": SOURCE_TAG_KEY, "value": source.instance_id},
        ]
        return CreateImageRequest.model_validate(body)

    def idempotency_key(self, source: PolicySource, slot: datetime) -> str:
        """The same for every tick that runs (policy, source, slot): one image per slot."""
        return f"{POLICY_KEY_PREFIX}{self.name}:{source.instance_id}:{int(slot.timestamp())}"

    @property
    def requester(self) -> str:
        """The ``requested_by`` of the policy's jobs."""
        return f"{POLICY_KEY_PREFIX}{self.name}"

    def run_id(self, slot: datetime) -> str:
        """The id of the policy's run at ``slot``."""
        return f"{RUN_ID_PREFIX}{self.name}-{int(slot.timestamp())}"

    def source(self, instance_id: str) -> PolicySource | None:
        """The source with this instance id, if the policy has it."""
        return next((s for s in self.sources if s.instance_id == instance_id), None)

    def document(self) -> dict[str, Any]:
        """The policy as a document ``policy_from_document`` reads back (defaults written out)."""
        return self.model_dump(mode="json", exclude_none=True)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def policy_from_document(payload: Any, *, cloud: str) -> Policy:
    """The policy ``payload`` describes, once the schema, the schedule and every source's create
    request (under the rules of ``cloud``) accept it.

    Raises:
        RequestInvalidError: every failing field, by JSON path.
    """
    # jsonschema only where a document is applied: check reads stored policies without it.
    from wholeimage.validation import validate  # noqa: PLC0415

    details: list[dict[str, str]] = []
    try:
        validate(POLICY_SCHEMA, payload, cloud=cloud)
    except RequestInvalidError as exc:
        details.extend({"path": str(d["path"]), "message": str(d["message"])} for d in exc.details)
    # What code checks is checked wherever the schema let its input through, so one answer
    # names every problem.
    if not isinstance(payload, dict):
        raise RequestInvalidError("the policy is invalid: 1 problem", details=details)
    if not _failed_at(details, "$.schedule") and "schedule" in payload:
        details.extend(_schedule_problems(payload["schedule"]))
    if not _failed_at(details, "$.image.name_template"):
        details.extend(_template_problems(payload))
    if not _failed_at(details, "$.sources") and "sources" in payload:
        details.extend(_duplicate_sources(payload["sources"]))
    if not details:
        details.extend(_create_problems(payload, cloud=cloud))
    if details:
        count = len(details)
        raise RequestInvalidError(
            f"the policy is invalid: {count} problem{'s' if count != 1 else ''}",
            details=sorted(details, key=lambda detail: detail["path"]),
        )
    try:
        return Policy.model_validate(payload)
    except ValidationError:  # the schema already accepted it: a bug, said as one
        raise RequestInvalidError(
            "the policy is invalid", details=[{"path": "$", "message": "cannot be read"}]
        ) from None


def _failed_at(details: list[dict[str, str]], path: str) -> bool:
    """Whether a problem was found at ``path`` or inside it."""
    return any(d["path"] == path or d["path"].startswith((path + ".", path + "[")) for d in details)


def _duplicate_sources(sources: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Sources whose instance id an earlier one has in another case (the schema compares text)."""
    seen: dict[str, int] = {}
    problems = []
    for index, source in enumerate(sources):
        key = source["instance_id"].lower()
        if key in seen:
            problems.append(
                {
                    "path": f"$.sources[{index}].instance_id",
                    "message": f"is the ECS of source {seen[key]} again (ids are read regardless of case)",
                }
            )
        seen.setdefault(key, index)
    return problems


def _schedule_problems(schedule: dict[str, Any]) -> list[dict[str, str]]:
    from croniter import croniter  # noqa: PLC0415

    problems: list[dict[str, str]] = []
    zone = schedule.get("timezone", "UTC")
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(
            {
                "path": "$.schedule.timezone",
                "message": "is not an IANA time zone name, such as Europe/Berlin or UTC",
            }
        )
        tz = ZoneInfo("UTC")
    expression = schedule["cron"]
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        problems.append(
            {
                "path": "$.schedule.cron",
                "message": "must be a five-field cron expression: minute hour day-of-month month day-of-week",
            }
        )
        return problems
    start = _SAMPLE_SLOT.astimezone(tz)
    try:
        found = croniter(expression, start, max_years_between_matches=5).get_next(datetime)
    except Exception:  # croniter's CroniterBadDateError and relatives: no slot ever falls
        found = None
    if found is None or _utc(found) - _SAMPLE_SLOT > _HORIZON:
        problems.append({"path": "$.schedule.cron", "message": "never falls on a date"})
    return problems


def _template_problems(payload: dict[str, Any]) -> list[dict[str, str]]:
    image = payload.get("image")
    template = image.get("name_template", "") if isinstance(image, dict) else ""
    unknown = sorted({m for m in _PLACEHOLDER.findall(template) if m not in PLACEHOLDERS})
    if not unknown:
        return []
    known = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
    return [
        {
            "path": "$.image.name_template",
            "message": f"has unknown placeholders {', '.join(f'{{{u}}}' for u in unknown)}; known: {known}",
        }
    ]


# Where a create body's field comes from in the policy document.
_BODY_FIELDS = {
    "name": "image.name_template",
    "description": "image.description",
    "image_tags": "image.tags",
    "enterprise_project_id": "image.enterprise_project_id",
}


def _create_problems(payload: dict[str, Any], *, cloud: str) -> list[dict[str, str]]:
    """Each source's create request checked by the create schema, errors at the policy's paths."""
    from wholeimage.validation import CREATE_REQUEST_SCHEMA, validate  # noqa: PLC0415

    policy = Policy.model_validate(payload)
    problems: list[dict[str, str]] = []
    for index, source in enumerate(policy.sources):
        body = policy.caller_body(source, _SAMPLE_SLOT)
        try:
            validate(CREATE_REQUEST_SCHEMA, body, cloud=cloud)
        except RequestInvalidError as exc:
            for detail in exc.details or []:
                path = str(detail["path"])
                member = (
                    path[2:].split(".", maxsplit=1)[0].split("[", maxsplit=1)[0]
                    if path.startswith("$.")
                    else ""
                )
                if member in _BODY_FIELDS:
                    where = "$." + _BODY_FIELDS[member] + path[2 + len(member) :]
                    message = str(detail["message"])
                    if member == "name":
                        message = f"gives source {index} the name {body['name']!r}, which {message}"
                else:
                    where = f"$.sources[{index}]" + (path[1:] if path != "$" else "")
                    message = str(detail["message"])
                problem = {"path": where, "message": message}
                if problem not in problems:
                    problems.append(problem)
    return problems
