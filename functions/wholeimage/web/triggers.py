"""What called a scheduled function (``check``, ``notify``), in every shape the platforms send.

docs/platforms.md §3 lists the shapes with their primary sources:

- nothing at all, or ``{}`` (a Kubernetes CronJob's curl, a scheduler without a body);
- Cloud Scheduler: a ``POST`` with ``X-CloudScheduler*`` headers and whatever body the job holds,
  ``application/octet-stream`` unless the job set another type;
- a Pub/Sub push envelope, ``{"message": {"data": base64, "attributes", "messageId", ...},
  "subscription": ...}``;
- a CloudEvent, binary (``ce-*`` headers) or structured (``application/cloudevents+json``), e.g.
  ``google.cloud.scheduler.job.v1.executed`` or ``google.cloud.pubsub.topic.v1.messagePublished``
  (whose data is the push envelope again);
- a FunctionGraph timer event, ``{"version": "v1.0", "time", "trigger_type": "TIMER",
  "trigger_name", "user_event"}``.

``check`` ticks on any of them and never refuses a body; ``notify`` takes a body as a job result
only when it was sent as one (plain JSON, a ``wholeimage.job.result`` CloudEvent) or, inside a
scheduled shape, when it validates as one (``web.notify``). This module validates nothing itself:
``check``'s process loads no JSON Schema validator.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from flask import Request

from wholeimage.errors import RequestInvalidError
from wholeimage.jsonbody import decode_json
from wholeimage.web.http import read_envelope

JOB_RESULT_EVENT_TYPE = "wholeimage.job.result"
PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
# Cloud Scheduler's own headers on an HTTP target's request (docs/platforms.md §3.2).
SCHEDULER_HEADERS = ("X-CloudScheduler", "X-CloudScheduler-JobName")
_MAX_LOGGED = 200  # characters of a caller's label (job name, subscription) kept for the log


@dataclass(frozen=True)
class Trigger:
    """A scheduled call's shape, and what it may carry.

    ``payload`` is what may be a job result (``notify``), None when the call carries none;
    ``sent_as_result`` says the caller sent it as one, so it must validate (400 otherwise), where
    a payload found inside a scheduled shape is a result only if it validates. ``detail`` names
    the caller for the log line (job, subscription, message, event, timer).
    """

    kind: str
    payload: Any | None = None
    sent_as_result: bool = False
    detail: dict[str, str] = field(default_factory=dict)


def _label(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value[:_MAX_LOGGED].encode("utf-8", "backslashreplace").decode("utf-8")


def _details(**values: object) -> dict[str, str]:
    return {name: label for name, value in values.items() if (label := _label(value))}


def _is_cloud_event(request: Request) -> bool:
    media_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return media_type.startswith("application/cloudevents") or "ce-specversion" in request.headers


def is_pubsub_push(document: Any) -> bool:
    """Whether ``document`` is a Pub/Sub push envelope (docs/platforms.md §3.3)."""
    return (
        isinstance(document, dict)
        and isinstance(document.get("message"), dict)
        and isinstance(document.get("subscription"), str)
    )


def is_functiongraph_timer(document: Any) -> bool:
    """Whether ``document`` is a FunctionGraph timer trigger's event (docs/platforms.md §4.2)."""
    return isinstance(document, dict) and document.get("trigger_type") == "TIMER"


def message_data(message: Any) -> Any | None:
    """A Pub/Sub message's ``data`` as the JSON document it holds; None when it holds none
    (absent, not base64, not JSON)."""
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, str) or not data:
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.urlsafe_b64decode(data)
        except (binascii.Error, ValueError):
            return None
    try:
        return decode_json(raw, where="$.message.data")
    except RequestInvalidError:
        return None


def _from_push(document: dict[str, Any], detail: dict[str, str], kind: str) -> Trigger:
    message = document["message"]
    detail = detail | _details(
        subscription=document.get("subscription"),
        message_id=message.get("messageId") or message.get("message_id"),
    )
    return Trigger(kind, payload=message_data(message), detail=detail)


def _from_document(document: Any, *, scheduled: bool, detail: dict[str, str]) -> Trigger:
    """The trigger a JSON body makes: a scheduled shape, or a body sent as a job result."""
    if is_pubsub_push(document):
        return _from_push(document, detail, "pubsub-push")
    if is_functiongraph_timer(document):
        return Trigger(
            "functiongraph-timer", detail=detail | _details(timer=document.get("trigger_name"))
        )
    if document is None or document == {}:
        return Trigger("cloud-scheduler" if scheduled else "empty", detail=detail)
    if scheduled:
        return Trigger("cloud-scheduler", payload=document, detail=detail)
    return Trigger("json", payload=document, sent_as_result=True, detail=detail)


def _from_cloud_event(request: Request, data: bytes, detail: dict[str, str]) -> Trigger:
    envelope = read_envelope(request, data)
    event_type = envelope.event_type or ""
    detail = detail | _details(event_type=event_type, event_source=envelope.requested_by)
    if event_type == JOB_RESULT_EVENT_TYPE:
        return Trigger("cloudevent", payload=envelope.payload, sent_as_result=True, detail=detail)
    if event_type == PUBSUB_EVENT_TYPE and is_pubsub_push(envelope.payload):
        return _from_push(envelope.payload, detail, "cloudevent")
    return Trigger("cloudevent", detail=detail)


def read_trigger(request: Request, data: bytes, *, any_media_type: bool = False) -> Trigger:
    """What ``data``, the body of ``request``, says about who called and what it carries.

    A CloudEvent must be well formed, and a body of a caller that is no scheduler must be JSON
    of a JSON media type, as ``create`` requires; Cloud Scheduler's bodies, and with
    ``any_media_type`` (FunctionGraph's events) every body, are read as JSON whatever their
    media type, and one that is none carries nothing.

    Raises:
        RequestInvalidError: a malformed CloudEvent, or a body that must be JSON and is not
            (``UnsupportedMediaTypeError`` for another media type).
    """
    detail = _details(
        scheduler_job=request.headers.get("X-CloudScheduler-JobName"),
        schedule_time=request.headers.get("X-CloudScheduler-ScheduleTime"),
    )
    scheduled = any(name in request.headers for name in SCHEDULER_HEADERS)
    if not data.strip():
        return Trigger("cloud-scheduler" if scheduled else "empty", detail=detail)
    if _is_cloud_event(request):
        return _from_cloud_event(request, data, detail)
    if scheduled or any_media_type:
        try:
            document = decode_json(data)
        except RequestInvalidError:
            return Trigger("cloud-scheduler" if scheduled else "other", detail=detail)
    else:
        document = read_envelope(request, data).payload
    return _from_document(document, scheduled=scheduled, detail=detail)


def trigger_for_log(request: Request, data: bytes, *, any_media_type: bool = False) -> Trigger:
    """``read_trigger`` for a function that runs whatever the body (``check``): a body that
    cannot be read is only named, never refused."""
    try:
        return read_trigger(request, data, any_media_type=any_media_type)
    except RequestInvalidError as error:
        return Trigger("unreadable", detail={"problem": error.code})
