"""Local IMS emulator: create full-ECS image jobs, query them and their images, inject faults.

A small standalone HTTP server (standard library plus our ``signer``) that speaks the parts of
the Image Management Service our functions use, so tests, the demo and the benchmark run without
a cloud account. It starts in milliseconds and needs no network.

Served routes (shapes per ``docs/ims-api.md``):

=====================================================  ============================================
``POST /v1/cloudimages/wholeimages/action``            create, 200 ``{"job_id": "<32 hex>"}``
``GET  /v1/{project_id}/jobs/{job_id}``                job status (``ShowJob``)
``GET  /v1/cloudimages/job/{job_id}``                  job progress (``ShowJobProgress``)
``GET  /v2/cloudimages``                               image list (``ListImages``)
``DELETE /v2/images/{image_id}``                       delete an image, 204 (``GlanceDeleteImage``)
``POST /v3/auth/tokens``                               IAM password token, 201 + ``X-Subject-Token``
``/_emulator/...``                                     admin routes, no auth (see ``_admin``)
=====================================================  ============================================

Error codes chosen where the documentation leaves a choice:

* IMS body ``{"error": {"code", "message"}}``, HTTP 400 unless noted: IMG.0007 empty body,
  IMG.0001 not a JSON object or both ``instance_id`` and ``backup_id`` given, IMG.0013 name
  missing, IMG.0002 name over 128 characters, IMG.0003 name format, IMG.0012 neither source
  given (IMG.0019 instead when ``whole_image_type`` shows a backup was meant, or ``backup_id``
  is not a string), IMG.0005 instance listed in ``unknown_instances``, IMG.0020 backup listed in
  ``unknown_backups``, IMG.0029 backup already has a running or successful job, IMG.0067
  AK/SK call to a project-less path without ``X-Project-Id`` equal to the configured project,
  IMG.0030 path ``{project_id}`` other than the configured one, **404** IMG.0023 unknown job.
  On the image list, IMG.0001 for any bad filter value (``limit`` not a positive integer,
  ``__whole_image`` or ``protected`` not true/false, an unknown ``status``, ``sort_key`` or
  ``sort_dir``, a ``tag`` without a key, a ``marker`` naming no image) and IMG.0024 for an
  unknown ``__imagetype`` (the message the docs' error example quotes). On the delete:
  **404** IMG.0027 for an unknown or already deleted image (the delete page documents 404,
  the error table names IMG.0027 "the image ID does not exist"), IMG.0001 for a body that is
  not a JSON object or a ``delete_backup`` that is not a boolean, IMG.0094 a public image
  (``__imagetype`` other than ``private``), IMG.0092 another project's image, IMG.0028 a
  protected image, IMG.0090 an image whose job still runs (``queued`` or ``saving``).
* Gateway body ``{"error_msg", "error_code", "request_id"}``: 401 APIGW.0301 for every
  authentication failure (no credentials, unknown AK, bad signature, bad or unknown token,
  security token missing or wrong), 401 APIGW.0303 for ``X-Sdk-Date`` more than 15 minutes
  off, 404 APIGW.0101 for an unknown route, 429 APIGW.0308 as the default throttling body.
* IAM body ``{"error": {"code": <int>, "message", "title"}}``: 400 malformed, 401 wrong user,
  password, domain or project.
* A failed job reports ``error_code`` ``IMG.0014`` (exception in the underlying task) and a
  ``fail_reason`` by default; both are configurable, and ``finish_job`` can set any code.

Images (docs/ims-api.md §2.5): every accepted create records one image, whose id is the job's
``entities.image_id``; it is ``queued`` while the job is INIT, ``saving`` while it runs,
``active`` on SUCCESS and ``killed`` on FAIL. ``add_image`` puts foreign images beside them.
Choices where the documentation is silent or unclear:

* ``tags`` in the list answer are ``"key=value"`` strings, whether the create body gave
  ``tags`` (``"key.value"``) or ``image_tags``; a key without a value lists as ``"key="``. The
  docs type the field "array of strings", say old ``Key.Value`` tags are queried as
  ``Key=Value`` and that the new format separates with ``=``; no example shows a tagged image.
* ``tag=key=value`` matches an image holding that key with that value; ``tag=key`` means an
  empty value; several ``tag`` parameters must all match. Filters the emulator does not know
  (``created_at``, ``__platform``, ...) are ignored rather than refused.
* ``__whole_image`` is the string ``"true"``, as IMS's other extra properties are, although the
  image-attributes page types it Boolean.
* The answer is ``{"images": [...]}``, plus ``page_info.next_marker`` (Huawei Cloud's SDK model)
  while more images follow; ``image_page_info=False`` leaves it out, as OTC documents. ``first``
  and ``next`` belong to the Glance list ``/v2/images``, not to this one.
* ``limit`` defaults to 500 and has no maximum (none is documented). Equal sort values keep
  creation order, so a ``marker`` pages without repeats or gaps; a marker image that does not
  match the filters still marks the place.
* A ``deleted`` image is listed only when ``status=deleted`` is asked for.
* ``DELETE /v2/images/{image_id}`` answers 204 with no body and makes the image ``deleted`` at
  once: the plain list and ``?id=`` stop listing it, ``status=deleted`` and the admin list still
  show it. The docs give no delay and no job (docs/ims-api.md §2.6), so none is invented.
  ``delete_backup`` is recorded in ``ImsEmulator.deletions`` (``None`` when the body left it
  out); no backup is modelled, so nothing else changes.
* Invented: ``min_disk`` 40, as the emulator never sees a system disk.
* Malformed tags in a create body are skipped, not refused (IMG.0115): wholeimage checks them.

Faults fire before the route by default; ``Fault(after=True)`` lets the route run (the job and
its image exist) and then loses, delays or replaces the answer, as a gateway might.

Clock: job progress, token expiry, the ``X-Sdk-Date`` check and recorded times all read the
injectable ``clock``, so a test drives a job through INIT, RUNNING and SUCCESS without sleeping.
Latency and fault delays are real time.

Run: ``PYTHONPATH=functions:tools python -m ims_emulator --port 8090`` (``--help`` lists flags).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import random
import re
import secrets
import signal
import socket
import ssl
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import FrameType, TracebackType
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from wholeimage.ims import signer

CREATE_PATH: Final = "/v1/cloudimages/wholeimages/action"
IAM_TOKENS_PATH: Final = "/v3/auth/tokens"
IMAGES_PATH: Final = "/v2/cloudimages"
DELETE_IMAGE_PATH_PREFIX: Final = "/v2/images/"
ADMIN_PREFIX: Final = "/_emulator/"
ROUTES: Final = ("create", "job", "iam", "images", "delete")
JOB_TYPE_BY_INSTANCE: Final = "imsCreateWholeImageByInstanceJob"
JOB_TYPE_BY_BACKUP: Final = "imsCreateWholeImageByBackupJob"
DEFAULT_PROJECT_ID: Final = "0123456789abcdef0123456789abcdef"

Outcome = Literal["SUCCESS", "FAIL"]
ImageStatus = Literal["queued", "saving", "active", "killed", "deleted"]
IMAGE_STATUSES: Final[tuple[ImageStatus, ...]] = ("queued", "saving", "active", "killed", "deleted")

# The first tenth of a job is INIT, as on IMS where the job waits for a worker first.
_INIT_FRACTION: Final = 0.1
_MAX_NAME_LENGTH: Final = 128
_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9\-._ \u4e00-\u9fff]+$")
_PROJECT_JOB_PATH: Final = re.compile(r"^/v1/(?P<project_id>[^/]+)/jobs/(?P<job_id>[^/]+)$")
_PROGRESS_JOB_PATH: Final = re.compile(r"^/v1/cloudimages/job/(?P<job_id>[^/]+)$")
_FINISH_PATH: Final = re.compile(r"^jobs/(?P<job_id>[^/]+)/finish$")
_IMAGE_STATUS_PATH: Final = re.compile(r"^images/(?P<image_id>[^/]+)/status$")
_DELETE_IMAGE_PATH: Final = re.compile(r"^/v2/images/(?P<image_id>[^/]+)$")
# GET /v2/cloudimages (docs/ims-api.md §2.5): limit defaults to 500; no maximum is documented.
_DEFAULT_LIST_LIMIT: Final = 500
_SORT_KEYS: Final = frozenset(
    {"name", "container_format", "disk_format", "status", "id", "size", "created_at"}
)
_IMAGE_TYPES: Final = frozenset({"gold", "private", "shared", "market"})
# Invented: a full-ECS image's min_disk is its system disk's size, which the emulator never sees.
_IMAGE_MIN_DISK: Final = 40
# strftime's %b follows the locale; the old IMS format is always English.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_JSON: Final = "application/json;charset=UTF-8"


@dataclass
class EmulatorConfig:
    """What the emulator accepts and how its jobs behave; read on every request, so it may change.

    Attributes:
        ak: The access key AK/SK requests must be signed with.
        sk: The secret key matching ``ak``.
        project_id: The only project; path ``{project_id}`` and ``X-Project-Id`` must equal it.
        security_token: When set, AK/SK requests must carry and sign an equal ``X-Security-Token``
            (temporary credentials); when unset, a request carrying one is refused.
        auth_token: A static token accepted as ``X-Auth-Token`` besides IAM-issued ones.
        iam_user: IAM user name for ``POST /v3/auth/tokens``.
        iam_password: Its password.
        iam_domain: Its domain (account) name; a domain ``id`` equal to it is accepted too.
        iam_project_name: Project name a token request may scope to instead of ``project_id``.
        token_ttl_seconds: Lifetime of an IAM-issued token (IAM: 24 h).
        job_seconds: Time from creation to the outcome; fixed per job at its creation.
        latency_ms: Added to every IMS and IAM request before it is answered.
        fail_ratio: Probability (seeded) that a job ends in FAIL.
        fail_sources: Image names, instance ids or backup ids whose jobs always FAIL.
        fail_error_code: ``error_code`` of a failed job.
        fail_reason: ``fail_reason`` of a failed job.
        unknown_instances: Instance ids IMS does not know (create answers IMG.0005).
        unknown_backups: Backup ids IMS does not know (create answers IMG.0020).
        old_time_format: Report times as ``04-Jun-2015 18:11:06:586`` instead of ISO 8601.
        job_overrides: Top-level keys merged into every job response (``{"status": None}``).
        job_omit: Top-level keys removed from every job response (``("status",)``).
        seed: Seed of the outcome lottery; ``None`` for a random one.
        max_clock_skew_seconds: Allowed ``X-Sdk-Date`` difference (gateway: 15 minutes).
        hang_seconds: How long a ``Fault(hang=True)`` without a delay holds the connection.
        record_requests: Keep every request in ``ImsEmulator.requests`` (off for long benchmarks).
        image_page_info: Image lists carry ``page_info.next_marker`` while more images follow,
            as Huawei Cloud's SDK model has it; ``False`` answers ``images`` alone, the shape
            OTC documents.
    """

    ak: str = "EMULATORAK"
    sk: str = "emulator-secret-key"
    project_id: str = DEFAULT_PROJECT_ID
    security_token: str | None = None
    auth_token: str | None = None
    iam_user: str = "emulator-user"
    iam_password: str = "emulator-password"  # noqa: S105 - a fixed demo credential of a local fake
    iam_domain: str = "emulator-domain"
    iam_project_name: str = "eu-de"
    token_ttl_seconds: float = 24 * 3600.0
    job_seconds: float = 10.0
    latency_ms: float = 0.0
    fail_ratio: float = 0.0
    fail_sources: set[str] = field(default_factory=set)
    fail_error_code: str = "IMG.0014"
    fail_reason: str = "An exception occurred in the underlying task (emulated failure)."
    unknown_instances: set[str] = field(default_factory=set)
    unknown_backups: set[str] = field(default_factory=set)
    old_time_format: bool = False
    job_overrides: dict[str, Any] = field(default_factory=dict)
    job_omit: tuple[str, ...] = ()
    seed: int | None = 0
    max_clock_skew_seconds: float = 900.0
    hang_seconds: float = 600.0
    record_requests: bool = True
    image_page_info: bool = True


@dataclass(frozen=True)
class Fault:
    """One canned behaviour for the next call of a route, queued with ``ImsEmulator.inject``.

    Without ``status`` the call is answered normally (after ``delay``, with ``override`` and
    ``omit`` applied to a JSON object body), so ``Fault(delay=2.0)`` is just a slow answer.

    By default a fault fires before authentication, as a gateway's throttling does: the route
    does not run. With ``after`` the route runs first, so a create IS accepted (its job and
    image are recorded), and then the fault's answer replaces the real one, whatever that
    was: a request that took effect but whose answer was lost or garbled on the way back.
    Either way the call counts.

    Attributes:
        status: Answer with this status, ``headers`` and ``body`` instead of the real answer.
        headers: Extra response headers, e.g. ``{"Retry-After": "1"}``.
        body: JSON-able value, ``str`` or ``bytes``; ``None`` picks a body fitting ``status``.
        delay: Seconds to wait before answering (or before dropping).
        hang: Hold the connection (``delay`` seconds, else ``hang_seconds``), then drop it:
            longer than any sensible client timeout.
        drop: Close the connection without an answer.
        override: Keys merged into the real JSON body (e.g. ``{"status": None}``).
        omit: Keys removed from the real JSON body (e.g. ``("status",)``).
        after: Run the route first, then apply the fault (see above).
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0
    hang: bool = False
    drop: bool = False
    override: Mapping[str, Any] = field(default_factory=dict)
    omit: tuple[str, ...] = ()
    after: bool = False

    @classmethod
    def throttled(cls, retry_after: int = 1) -> Fault:
        """A gateway 429 (APIGW.0308) with ``Retry-After``."""
        return cls(status=429, headers={"Retry-After": str(retry_after)})

    @classmethod
    def ims_error(cls, code: str, message: str, status: int = 400) -> Fault:
        """An IMS error answer, e.g. ``Fault.ims_error("IMG.0060", "flow control")``."""
        return cls(status=status, body={"error": {"code": code, "message": message}})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from the JSON of ``POST /_emulator/faults``.

        Raises:
            ValueError: for an unknown key.
        """
        known = {item.name for item in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        values = dict(data)
        if "omit" in values:
            values["omit"] = tuple(values["omit"])
        return cls(**values)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received (admin routes are not recorded).

    Attributes:
        method: HTTP method.
        path: Path as sent, without the query.
        query: Decoded query pairs in order.
        headers: Headers with lower-cased names.
        body: Raw body bytes.
        time: ``clock()`` at arrival.
        route: ``create``, ``job``, ``iam``, ``images``, ``delete`` or ``unknown``.
    """

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    time: float
    route: str

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``GET /_emulator/requests`` (body decoded as UTF-8, lossy)."""
        return {
            "method": self.method,
            "path": self.path,
            "query": [list(pair) for pair in self.query],
            "headers": self.headers,
            "body": self.body.decode("utf-8", errors="replace"),
            "time": self.time,
            "route": self.route,
        }


@dataclass
class EmulatedJob:
    """A create job; its status is derived from the clock, its outcome is fixed at creation.

    Attributes:
        job_id: 32 hex characters.
        job_type: ``imsCreateWholeImageByInstanceJob`` or ``imsCreateWholeImageByBackupJob``.
        image_name: The requested name.
        source_id: The instance or backup id.
        created_at: ``clock()`` at creation.
        duration: Seconds until the outcome (``job_seconds`` at creation).
        outcome: ``SUCCESS`` or ``FAIL``.
        image_id: The new image's id (reported on SUCCESS only).
        error_code: Reported on FAIL.
        fail_reason: Reported on FAIL.
        finished_at: Set by ``finish_job``: the outcome is reported from then on.
    """

    job_id: str
    job_type: str
    image_name: str
    source_id: str
    created_at: float
    duration: float
    outcome: Outcome
    image_id: str
    error_code: str
    fail_reason: str
    finished_at: float | None = None

    def _percent(self, moment: float) -> float:
        init = self.duration * _INIT_FRACTION
        elapsed = moment - self.created_at
        if elapsed <= init or self.duration <= 0:
            return 0.0
        # Never 1.0 before the end: a client must not take 100 % for done.
        return min(round((elapsed - init) / (self.duration - init), 2), 0.99)

    def state(self, now: float) -> tuple[str, float, float | None]:
        """Status, ``process_percent`` and end time (``None`` while not finished) at ``now``."""
        end = self.finished_at if self.finished_at is not None else self.created_at + self.duration
        if now >= end:
            percent = 1.0 if self.outcome == "SUCCESS" else self._percent(end)
            return self.outcome, percent, end
        if now - self.created_at < self.duration * _INIT_FRACTION:
            return "INIT", 0.0, None
        return "RUNNING", self._percent(now), None

    def view(self, now: float, *, old_time_format: bool = False) -> dict[str, Any]:
        """The job JSON as IMS returns it (docs/ims-api.md §2.1)."""
        status, percent, end = self.state(now)
        entities: dict[str, Any] = {
            "image_name": self.image_name,
            "process_percent": percent,
            "current_task": _current_task(status, percent),
        }
        if status == "SUCCESS":
            entities["image_id"] = self.image_id
        failed = status == "FAIL"
        return {
            "status": status,
            "job_id": self.job_id,
            "job_type": self.job_type,
            "begin_time": format_time(self.created_at, old=old_time_format),
            "end_time": "" if end is None else format_time(end, old=old_time_format),
            "error_code": self.error_code if failed else None,
            "fail_reason": self.fail_reason if failed else None,
            "entities": entities,
        }


def _current_task(status: str, percent: float) -> str:
    # Invented labels: IMS documents current_task as a free string without listing values.
    if status == "INIT":
        return "waiting"
    if status in ("SUCCESS", "FAIL"):
        return "finished"
    return "creating backup" if percent < 0.7 else "registering image"


def format_time(moment: float, *, old: bool = False) -> str:
    """Format a job time: ``2024-11-06T06:28:14.425Z``, or ``04-Jun-2015 18:11:06:586`` if ``old``."""
    when = datetime.fromtimestamp(moment, UTC)
    millis = when.microsecond // 1000
    if old:
        month = _MONTHS[when.month - 1]
        return f"{when.day:02d}-{month}-{when.year} {when:%H:%M:%S}:{millis:03d}"
    return f"{when:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def _iso_micro(moment: float) -> str:
    # IAM token times carry microseconds: 2015-11-09T01:42:57.527363Z.
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _image_time(moment: float) -> str:
    # Image times have whole seconds: 2018-09-06T14:03:27Z (docs/ims-api.md §2.5).
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# What a whole-image job's status means for its image (docs/ims-api.md §2.5).
_IMAGE_STATUS_BY_JOB: Final[Mapping[str, ImageStatus]] = {
    "INIT": "queued",
    "RUNNING": "saving",
    "SUCCESS": "active",
    "FAIL": "killed",
}


@dataclass
class EmulatedImage:
    """An image as ``GET /v2/cloudimages`` lists it.

    The image of a whole-image job takes its status from the job: ``queued`` while the job is
    INIT, ``saving`` while it runs, ``active`` on SUCCESS, ``killed`` on FAIL. A foreign image
    (``ImsEmulator.add_image``), or one given a status by ``set_image_status``, keeps ``status``.

    Attributes:
        image_id: A UUID; for a job's image, the job's ``entities.image_id``.
        name: The image name.
        tags: ``(key, value)`` pairs in the order first given.
        created_at: ``clock()`` at creation.
        owner: The owning project id.
        seq: Creation order, which breaks ties when sorting.
        job_id: The job making it; ``None`` for a foreign image.
        status: A fixed status; ``None`` follows the job.
        status_since: ``clock()`` when ``status`` was set.
        whole_image: Whether it is a full-ECS image (``__whole_image``).
        backup_id: The source backup (``__backup_id``), for an image made from one.
        imagetype: ``__imagetype``: ``private`` for ours, ``gold``, ``shared`` or ``market``.
        visibility: ``private``, ``public`` or ``shared``.
        protected: Whether it is protected.
        description: ``__description``, when the create body had one.
        min_ram: Minimum memory in MB.
        max_ram: Maximum memory, a string as IMS lists it, when given.
        enterprise_project_id: ``0`` for the default enterprise project.
    """

    image_id: str
    name: str
    tags: tuple[tuple[str, str], ...]
    created_at: float
    owner: str
    seq: int
    job_id: str | None = None
    status: ImageStatus | None = None
    status_since: float | None = None
    whole_image: bool = True
    backup_id: str | None = None
    imagetype: str = "private"
    visibility: str = "private"
    protected: bool = False
    description: str | None = None
    min_ram: int = 0
    max_ram: str | None = None
    enterprise_project_id: str = "0"

    def state(self, job: EmulatedJob | None, now: float) -> tuple[ImageStatus, float]:
        """Status at ``now`` and the time it was entered."""
        if self.status is not None or job is None:
            since = self.status_since if self.status_since is not None else self.created_at
            return self.status or "active", since
        job_status, _, end = job.state(now)
        status = _IMAGE_STATUS_BY_JOB[job_status]
        if end is not None:
            return status, end
        if status == "saving":
            return status, job.created_at + job.duration * _INIT_FRACTION
        return status, self.created_at

    def view(self, job: EmulatedJob | None, now: float) -> dict[str, Any]:
        """The image JSON as the list answer carries it (docs/ims-api.md §2.5)."""
        status, since = self.state(job, now)
        body: dict[str, Any] = {
            "id": self.image_id,
            "name": self.name,
            "status": status,
            # Our choice: every tag as a "key=value" string, the list form of the new tag format.
            "tags": [f"{key}={value}" for key, value in self.tags],
            "visibility": self.visibility,
            "__imagetype": self.imagetype,
            # Extra image properties are strings on the wire, though the docs type this Boolean.
            "__whole_image": "true" if self.whole_image else "false",
            "__isregistered": "true",
            "__image_source_type": "uds",
            "container_format": "bare",
            "disk_format": "zvhd2",
            "virtual_env_type": "FusionCompute",
            "min_ram": self.min_ram,
            "min_disk": _IMAGE_MIN_DISK,
            "size": 0,
            "virtual_size": None,
            "protected": self.protected,
            "owner": self.owner,
            "enterprise_project_id": self.enterprise_project_id,
            "created_at": _image_time(self.created_at),
            "updated_at": _image_time(since),
            "self": f"/v2/images/{self.image_id}",
            "file": f"/v2/images/{self.image_id}/file",
            "schema": "/v2/schemas/image",
        }
        if self.backup_id is not None:
            body["__backup_id"] = self.backup_id
        if self.description is not None:
            body["__description"] = self.description
        if self.max_ram is not None:
            body["max_ram"] = self.max_ram
        if status == "active":
            body["active_at"] = _image_time(since)
        return body


def _tag_pairs(tags: Mapping[str, str] | Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``{"k": "v"}`` or ``["k=v", "k2"]`` as ``(key, value)`` pairs (a bare key: empty value).

    Raises:
        ValueError: for a tag without a key, or not a string.
    """
    if isinstance(tags, str):
        raise ValueError("tags must be a mapping or a list of key=value strings, not a string")
    items = tags.items() if isinstance(tags, Mapping) else (_split_tag(tag, "=") for tag in tags)
    pairs: dict[str, str] = {}
    for key, value in items:
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ValueError(f"a tag needs a non-empty string key and a string value: {key!r}")
        pairs[key] = value
    return tuple(pairs.items())


def _split_tag(tag: object, separator: str) -> tuple[str, str]:
    if not isinstance(tag, str):
        raise ValueError(f"a tag must be a string, not {tag!r}")
    key, _, value = tag.partition(separator)
    return key, value


def _request_tags(body: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The create body's ``tags`` (``"key.value"``) and ``image_tags`` as ``(key, value)`` pairs.

    A later key updates an earlier one, as IMS documents for a key added twice. Entries of the
    wrong shape are skipped: the emulator does not refuse tags (IMG.0115), wholeimage checks them.
    """
    pairs: dict[str, str] = {}
    tags = body.get("tags")
    for tag in tags if isinstance(tags, list) else ():
        if isinstance(tag, str) and tag.partition(".")[0]:
            key, value = _split_tag(tag, ".")
            pairs[key] = value
    image_tags = body.get("image_tags")
    for tag in image_tags if isinstance(image_tags, list) else ():
        if isinstance(tag, dict) and isinstance(tag.get("key"), str) and tag["key"]:
            value = tag.get("value", "")
            pairs[tag["key"]] = value if isinstance(value, str) else str(value)
    return tuple(pairs.items())


@dataclass
class _Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Drop:
    """Marker: close the connection without answering."""


_DROP: Final = _Drop()


class _Refusal(Exception):
    """Ends a request early with a ready answer (auth and validation failures)."""

    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class _Incoming:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    request_id: str


@dataclass(frozen=True)
class _Route:
    name: str
    job_id: str | None = None
    path_project: str | None = None
    image_id: str | None = None


@dataclass(frozen=True)
class Deletion:
    """One accepted ``DELETE /v2/images/{image_id}``.

    Attributes:
        image_id: The deleted image.
        delete_backup: The body's ``delete_backup``; ``None`` when the body left it out.
        at: ``clock()`` when the image became ``deleted``.
    """

    image_id: str
    delete_backup: bool | None
    at: float


def _ims_error(code: str, message: str, status: int = 400) -> _Refusal:
    return _Refusal(_Response(status, {"error": {"code": code, "message": message}}))


def _gateway_error(status: int, code: str, message: str, request_id: str) -> _Refusal:
    body = {"error_msg": message, "error_code": code, "request_id": request_id}
    return _Refusal(_Response(status, body))


def _iam_error(status: int, message: str) -> _Refusal:
    title = HTTPStatus(status).phrase
    return _Refusal(
        _Response(status, {"error": {"code": status, "message": message, "title": title}})
    )


def _same(given: object, expected: str) -> bool:
    """Constant-time string equality that tolerates non-strings from JSON."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def _default_fault_body(status: int, request_id: str) -> Any:
    if status == 429:
        return {
            "error_msg": "The throttling threshold has been reached",
            "error_code": "APIGW.0308",
            "request_id": request_id,
        }
    if status >= 500:
        return {"error": {"code": "IMG.0061", "message": "An unknown system error occurred."}}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"error": {"code": "IMG.0001", "message": phrase}}


_FIXED_ROUTES: Final[Mapping[tuple[str, str], str]] = {
    ("POST", CREATE_PATH): "create",
    ("POST", IAM_TOKENS_PATH): "iam",
    ("GET", IMAGES_PATH): "images",
}


def _classify(method: str, path: str) -> _Route:
    if (method, path) in _FIXED_ROUTES:
        return _Route(_FIXED_ROUTES[method, path])
    delete = _DELETE_IMAGE_PATH.match(path)
    if delete and method == "DELETE":
        return _Route("delete", image_id=unquote(delete["image_id"]))
    if method == "GET":
        progress = _PROGRESS_JOB_PATH.match(path)
        if progress:
            return _Route("job", job_id=progress["job_id"])
        status = _PROJECT_JOB_PATH.match(path)
        if status:
            return _Route("job", job_id=status["job_id"], path_project=status["project_id"])
    return _Route("unknown")


@dataclass(frozen=True)
class _CreateSpec:
    name: str
    job_type: str
    source_id: str
    tags: tuple[tuple[str, str], ...] = ()
    description: str | None = None
    min_ram: int = 0
    max_ram: str | None = None
    enterprise_project_id: str = "0"


def _with_image_fields(spec: _CreateSpec, body: Mapping[str, Any]) -> _CreateSpec:
    """``spec`` plus what the image record keeps of the body; odd values fall back to defaults."""
    description, min_ram = body.get("description"), body.get("min_ram")
    max_ram, project = body.get("max_ram"), body.get("enterprise_project_id")
    return replace(
        spec,
        tags=_request_tags(body),
        description=description if isinstance(description, str) else None,
        min_ram=min_ram if type(min_ram) is int else 0,
        max_ram=str(max_ram) if type(max_ram) is int else None,
        enterprise_project_id=project if isinstance(project, str) and project else "0",
    )


def _parse_create(raw: bytes) -> _CreateSpec:
    """The IMS-side checks of a create body, in the order IMS documents its codes."""
    if not raw.strip():
        raise _ims_error("IMG.0007", "The request body is empty.")
    try:
        body = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise _ims_error("IMG.0001", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise _ims_error("IMG.0001", "The request body must be a JSON object.")
    name = body.get("name")
    if name is None or name == "":
        raise _ims_error("IMG.0013", "The image name is missing.")
    if not isinstance(name, str):
        raise _ims_error("IMG.0003", "The image name format is invalid.")
    if len(name) > _MAX_NAME_LENGTH:
        raise _ims_error("IMG.0002", "The image name cannot exceed 128 characters.")
    if not _NAME_PATTERN.match(name) or name != name.strip(" "):
        raise _ims_error("IMG.0003", "The image name format is invalid.")
    instance_id, backup_id = body.get("instance_id"), body.get("backup_id")
    if instance_id and backup_id:
        raise _ims_error("IMG.0001", "Specify either instance_id or backup_id, not both.")
    if backup_id or (not instance_id and "whole_image_type" in body):
        if not isinstance(backup_id, str) or not backup_id:
            raise _ims_error("IMG.0019", "The backup ID is not specified.")
        return _with_image_fields(_CreateSpec(name, JOB_TYPE_BY_BACKUP, backup_id), body)
    if not isinstance(instance_id, str) or not instance_id:
        raise _ims_error("IMG.0012", "The ECS ID is not specified or is invalid.")
    return _with_image_fields(_CreateSpec(name, JOB_TYPE_BY_INSTANCE, instance_id), body)


@dataclass(frozen=True)
class _ImageQuery:
    """The filters, sort and page of ``GET /v2/cloudimages`` (docs/ims-api.md §2.5)."""

    tags: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    image_id: str | None = None
    status: str | None = None
    whole_image: bool | None = None
    imagetype: str | None = None
    owner: str | None = None
    visibility: str | None = None
    protected: bool | None = None
    limit: int = _DEFAULT_LIST_LIMIT
    marker: str | None = None
    sort_key: str = "created_at"
    descending: bool = True

    def matches(self, image: EmulatedImage, view: Mapping[str, Any]) -> bool:
        """Whether the image passes every filter; deleted images only when asked for."""
        if view["status"] == "deleted" and self.status != "deleted":
            return False
        wanted = {
            "name": self.name,
            "id": self.image_id,
            "status": self.status,
            "__imagetype": self.imagetype,
            "owner": self.owner,
            "visibility": self.visibility,
        }
        if any(value is not None and view[key] != value for key, value in wanted.items()):
            return False
        if self.whole_image is not None and image.whole_image != self.whole_image:
            return False
        if self.protected is not None and image.protected != self.protected:
            return False
        return all(tag in image.tags for tag in self.tags)

    def sort_value(self, image: EmulatedImage, view: Mapping[str, Any]) -> tuple[float, str, int]:
        """The sort position: the key's value, then creation order so equal values keep one order."""
        if self.sort_key == "created_at":
            return image.created_at, "", image.seq
        if self.sort_key == "size":
            return 0.0, "", image.seq
        return 0.0, str(view[self.sort_key]), image.seq

    def comes_after(self, position: tuple[float, str, int], marker: tuple[float, str, int]) -> bool:
        """Whether ``position`` follows the marker's in the answer's order."""
        return position < marker if self.descending else position > marker


def _bad_query(message: str, code: str = "IMG.0001") -> _Refusal:
    # Our choice: IMG.0001 ("the request message format is invalid") for any bad filter value;
    # IMG.0024 for __imagetype, whose message the docs' error example quotes.
    return _ims_error(code, message)


def _query_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise _bad_query(f"{name} must be true or false, not {value!r}.")
    return lowered == "true"


def _parse_image_query(pairs: Sequence[tuple[str, str]]) -> _ImageQuery:
    """Read the query; a filter the emulator does not know is ignored, a bad value is a 400."""
    first: dict[str, str] = {}
    for key, value in pairs:
        first.setdefault(key, value)
    # Several tag parameters must all match (our choice; the docs show one).
    tags: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "tag":
            tag_key, _, tag_value = value.partition("=")
            if not tag_key:
                raise _bad_query(f"tag must be key=value, not {value!r}.")
            tags.append((tag_key, tag_value))
    status = first.get("status")
    if status is not None and status not in IMAGE_STATUSES:
        raise _bad_query(f"status must be one of {', '.join(IMAGE_STATUSES)}, not {status!r}.")
    imagetype = first.get("__imagetype")
    if imagetype is not None and imagetype not in _IMAGE_TYPES:
        raise _bad_query("The imagetype is invalid.", "IMG.0024")
    limit = first.get("limit", str(_DEFAULT_LIST_LIMIT))
    if not limit.isdigit() or not limit.isascii() or int(limit) < 1:
        raise _bad_query(f"limit must be a positive integer, not {limit!r}.")
    sort_key = first.get("sort_key", "created_at")
    if sort_key not in _SORT_KEYS:
        raise _bad_query(f"sort_key must be one of {', '.join(sorted(_SORT_KEYS))}.")
    sort_dir = first.get("sort_dir", "desc")
    if sort_dir not in ("asc", "desc"):
        raise _bad_query(f"sort_dir must be asc or desc, not {sort_dir!r}.")
    whole_image, protected = first.get("__whole_image"), first.get("protected")
    return _ImageQuery(
        tags=tuple(tags),
        name=first.get("name"),
        image_id=first.get("id"),
        status=status,
        whole_image=None if whole_image is None else _query_bool("__whole_image", whole_image),
        imagetype=imagetype,
        owner=first.get("owner"),
        visibility=first.get("visibility"),
        protected=None if protected is None else _query_bool("protected", protected),
        limit=int(limit),
        marker=first.get("marker"),
        sort_key=sort_key,
        descending=sort_dir == "desc",
    )


def _parse_delete(raw: bytes) -> bool | None:
    """The delete body's ``delete_backup`` (docs/ims-api.md §2.6); ``None`` without one."""
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _ims_error("IMG.0001", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise _ims_error("IMG.0001", "The request body must be a JSON object.")
    delete_backup = body.get("delete_backup")
    if delete_backup is not None and not isinstance(delete_backup, bool):
        raise _ims_error("IMG.0001", "delete_backup must be true or false.")
    return delete_backup


def _parse_password_auth(raw: bytes) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """User object, project scope and methods of an IAM password-auth body (docs/ims-api.md §4.1)."""
    try:
        auth = json.loads(raw)["auth"]
        identity = auth["identity"]
        methods = identity["methods"]
        user = identity["password"]["user"]
        project = auth["scope"]["project"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _iam_error(400, "The request body is not a password authentication request.") from exc
    if not (isinstance(user, dict) and isinstance(project, dict) and isinstance(methods, list)):
        raise _iam_error(400, "The request body is not a password authentication request.")
    return user, project, methods


class ImsEmulator:
    """The emulator: state, fault queues, request log, and the HTTP server around them.

    Example:
        >>> with ImsEmulator(EmulatorConfig(job_seconds=1)) as ims:  # doctest: +SKIP
        ...     ims.inject("create", Fault.throttled(retry_after=1))
        ...     call_my_client(ims.url)

    Args:
        config: Accepted credentials and job behaviour; defaults to the demo ``EmulatorConfig()``.
        clock: Seconds since the epoch; jobs, tokens and ``X-Sdk-Date`` checks read it.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, EmulatedJob] = {}
        self._backup_jobs: dict[str, str] = {}
        self._images: dict[str, EmulatedImage] = {}
        self._image_seq = 0
        self._deletions: list[Deletion] = []
        self._faults: dict[str, list[Fault]] = {route: [] for route in ROUTES}
        self._requests: list[RecordedRequest] = []
        self._calls: dict[str, int] = {}
        self._tokens: dict[str, float] = {}
        self._random = random.Random(self.config.seed)
        # Set on stop: releases delayed, hanging and latency-sleeping handler threads at once.
        self._released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Start serving in a daemon thread; ``port=0`` picks a free port.

        With ``ssl_context`` (a server context holding a certificate for ``host``) it serves
        HTTPS, as IMS does: the TLS tests (a private CA in ``SSL_CERT_FILE``, a tunnelling
        proxy) use it.

        Returns:
            The base URL, e.g. ``http://127.0.0.1:8090`` (``https://`` with ``ssl_context``).

        Raises:
            RuntimeError: when already started.
        """
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._released = threading.Event()
        server = _Server((host, port), _Handler)
        server.emulator = self
        if ssl_context is not None:
            # The handshake runs in each handler thread, at its first read: a client that never
            # sends its hello holds only its own thread, not the accepting loop.
            server.socket = ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="ims-emulator",
        )
        self._thread.start()
        scheme = "http" if ssl_context is None else "https"
        self._url = f"{scheme}://{host}:{server.server_address[1]}"
        return self._url

    def stop(self) -> None:
        """Stop serving, release held connections and close every open one."""
        server, self._server = self._server, None
        if server is None:
            return
        self._released.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> ImsEmulator:
        """Start on a free port unless already started."""
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop."""
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the running emulator.

        Raises:
            RuntimeError: when not started.
        """
        if self._url is None or self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._url

    # -- test and admin API ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def calls(self) -> dict[str, int]:
        """Calls per route (``create``, ``job``, ``iam``, ``images``, ``delete``, ``unknown``), faults
        included."""
        with self._lock:
            return dict(self._calls)

    @property
    def jobs(self) -> dict[str, EmulatedJob]:
        """A copy of the job table by job id."""
        with self._lock:
            return dict(self._jobs)

    def job_view(self, job_id: str) -> dict[str, Any]:
        """The job JSON as a query would return it now (without configured overrides).

        Raises:
            KeyError: for an unknown job.
        """
        with self._lock:
            job = self._jobs[job_id]
        return job.view(self.clock(), old_time_format=self.config.old_time_format)

    @property
    def deletions(self) -> list[tuple[str, bool | None, float]]:
        """``(image_id, delete_backup, at)`` per accepted delete, oldest first."""
        with self._lock:
            return [(item.image_id, item.delete_backup, item.at) for item in self._deletions]

    def images(self) -> list[dict[str, Any]]:
        """Every image's JSON as a list query would see it now, deleted ones too, oldest first."""
        now = self.clock()
        with self._lock:
            pairs = [(image, self._jobs.get(image.job_id or "")) for image in self._images.values()]
        return [image.view(job, now) for image, job in pairs]

    def add_image(
        self,
        name: str,
        *,
        tags: Mapping[str, str] | Sequence[str] = (),
        status: ImageStatus = "active",
        whole_image: bool = True,
        image_id: str | None = None,
        backup_id: str | None = None,
        owner: str | None = None,
        imagetype: str = "private",
        visibility: str = "private",
        created_at: float | None = None,
        protected: bool = False,
    ) -> dict[str, Any]:
        """Put a foreign image in the account: one no job of this emulator made.

        Args:
            name: The image name.
            tags: ``{"key": "value"}`` or ``["key=value", ...]``.
            status: Its status, kept until ``set_image_status`` changes it.
            whole_image: ``__whole_image``.
            image_id: Its id; a new UUID when ``None``.
            backup_id: ``__backup_id``.
            owner: The owning project; the configured ``project_id`` when ``None``.
            imagetype: ``__imagetype``.
            visibility: ``visibility``.
            created_at: Creation time (seconds since the epoch); ``clock()`` when ``None``.
            protected: ``protected``; a protected image cannot be deleted (IMG.0028).

        Returns:
            The image JSON.

        Raises:
            ValueError: for an unknown status or image type, a bad tag or a taken id.
        """
        if status not in IMAGE_STATUSES:
            raise ValueError(f"status must be one of {IMAGE_STATUSES}, not {status!r}")
        if imagetype not in _IMAGE_TYPES:
            raise ValueError(f"imagetype must be one of {sorted(_IMAGE_TYPES)}, not {imagetype!r}")
        pairs = _tag_pairs(tags)
        now = self.clock()
        with self._lock:
            new_id = image_id if image_id is not None else str(uuid.uuid4())
            if new_id in self._images:
                raise ValueError(f"image {new_id} exists")
            image = self._new_image(
                new_id,
                name,
                pairs,
                now if created_at is None else created_at,
                status=status,
                whole_image=whole_image,
                backup_id=backup_id,
                owner=owner if owner is not None else self.config.project_id,
                imagetype=imagetype,
                visibility=visibility,
                protected=protected,
            )
        return image.view(None, now)

    def set_image_status(self, image_id: str, status: ImageStatus) -> dict[str, Any]:
        """Give an image a fixed status from now on (``deleted``, say), whatever its job does.

        Returns:
            The image JSON after the change.

        Raises:
            KeyError: for an unknown image.
            ValueError: for an unknown status.
        """
        if status not in IMAGE_STATUSES:
            raise ValueError(f"status must be one of {IMAGE_STATUSES}, not {status!r}")
        now = self.clock()
        with self._lock:
            image = self._images[image_id]
            image.status, image.status_since = status, now
            job = self._jobs.get(image.job_id or "")
        return image.view(job, now)

    def inject(self, route: str, *responses: Fault) -> None:
        """Queue faults for the next calls of ``route``, one call each, in order.

        Args:
            route: ``create``, ``job`` (both job query paths), ``iam``, ``images`` or ``delete``.
            *responses: The faults.

        Raises:
            ValueError: for an unknown route.
        """
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, not {route!r}")
        with self._lock:
            self._faults[route].extend(responses)

    def pending_faults(self) -> dict[str, int]:
        """Faults still queued per route."""
        with self._lock:
            return {route: len(queue) for route, queue in self._faults.items()}

    def finish_job(
        self,
        job_id: str,
        outcome: Outcome = "SUCCESS",
        *,
        error_code: str | None = None,
        fail_reason: str | None = None,
    ) -> dict[str, Any]:
        """End a job now with ``outcome`` (the admin call), whatever it was going to be.

        Returns:
            The job JSON after the change.

        Raises:
            KeyError: for an unknown job.
            ValueError: for an outcome other than SUCCESS or FAIL.
        """
        if outcome not in ("SUCCESS", "FAIL"):
            raise ValueError("outcome must be SUCCESS or FAIL")
        now = self.clock()
        with self._lock:
            job = self._jobs[job_id]
            job.outcome = outcome
            job.finished_at = now
            if error_code is not None:
                job.error_code = error_code
            if fail_reason is not None:
                job.fail_reason = fail_reason
        return job.view(now, old_time_format=self.config.old_time_format)

    def reset(self) -> None:
        """Forget jobs, images, deletions, faults, requests and counts; reseed. Tokens and config stay."""
        with self._lock:
            self._jobs.clear()
            self._backup_jobs.clear()
            self._images.clear()
            self._deletions.clear()
            for queue in self._faults.values():
                queue.clear()
            self._requests.clear()
            self._calls.clear()
            self._random = random.Random(self.config.seed)

    def issue_token(self) -> str:
        """Issue an IAM token directly (as ``POST /v3/auth/tokens`` would) and return it."""
        token = "MIIE" + secrets.token_urlsafe(48)
        with self._lock:
            self._tokens[token] = self.clock() + self.config.token_ttl_seconds
        return token

    # -- request handling --------------------------------------------------------------------

    def _handle(self, req: _Incoming) -> _Response | _Drop:
        if req.path.startswith(ADMIN_PREFIX):
            return self._admin(req)
        route = _classify(req.method, req.path)
        fault = self._arrive(req, route.name)
        if self.config.latency_ms > 0:
            self._released.wait(self.config.latency_ms / 1000)
        if fault is not None and not fault.after:
            early = self._fault_answer(fault, req.request_id)
            if early is not None:
                return early
        try:
            response = self._dispatch(req, route)
        except _Refusal as refusal:
            response = refusal.response
        if fault is not None and fault.after:
            # The route has taken effect; now the answer is lost, late or replaced.
            late = self._fault_answer(fault, req.request_id)
            if late is not None:
                return late
        if fault is not None and response.status < 300 and isinstance(response.body, dict):
            response.body = _patched(response.body, fault.override, fault.omit)
        return response

    def _arrive(self, req: _Incoming, route: str) -> Fault | None:
        """Record and count the request; take the route's next fault."""
        arrived = self.clock()
        with self._lock:
            self._calls[route] = self._calls.get(route, 0) + 1
            if self.config.record_requests:
                self._requests.append(
                    RecordedRequest(
                        req.method, req.path, req.query, req.headers, req.body, arrived, route
                    )
                )
            queue = self._faults.get(route)
            return queue.pop(0) if queue else None

    def _fault_answer(self, fault: Fault, request_id: str) -> _Response | _Drop | None:
        """What a fault answers instead of the real route, or ``None`` to answer normally."""
        if fault.hang:
            self._released.wait(fault.delay or self.config.hang_seconds)
            return _DROP
        if fault.delay > 0:
            self._released.wait(fault.delay)
        if fault.drop:
            return _DROP
        if fault.status is None:
            return None
        body = (
            fault.body if fault.body is not None else _default_fault_body(fault.status, request_id)
        )
        return _Response(fault.status, body, dict(fault.headers))

    def _dispatch(self, req: _Incoming, route: _Route) -> _Response:
        if route.name == "create":
            self._authenticate(req, project_in_path=False)
            return self._create(req)
        if route.name == "job" and route.job_id is not None:
            self._authenticate(req, project_in_path=route.path_project is not None)
            return self._job(route.job_id, route.path_project)
        if route.name == "iam":
            return self._iam(req)
        if route.name == "images":
            self._authenticate(req, project_in_path=False)
            return self._list_images(req)
        if route.name == "delete" and route.image_id is not None:
            self._authenticate(req, project_in_path=False)
            return self._delete_image(route.image_id, req.body)
        raise _gateway_error(
            404, "APIGW.0101", "The API does not exist or has not been published.", req.request_id
        )

    def _create(self, req: _Incoming) -> _Response:
        spec = _parse_create(req.body)
        config = self.config
        by_backup = spec.job_type == JOB_TYPE_BY_BACKUP
        if not by_backup and spec.source_id in config.unknown_instances:
            raise _ims_error("IMG.0005", "The ECS does not exist.")
        if by_backup and spec.source_id in config.unknown_backups:
            raise _ims_error("IMG.0020", "The backup does not exist.")
        now = self.clock()
        with self._lock:
            if by_backup:
                self._check_backup_free(spec.source_id, now)
            fails = (
                bool({spec.name, spec.source_id} & config.fail_sources)
                or self._random.random() < config.fail_ratio
            )
            job = EmulatedJob(
                job_id=uuid.uuid4().hex,
                job_type=spec.job_type,
                image_name=spec.name,
                source_id=spec.source_id,
                created_at=now,
                duration=max(config.job_seconds, 0.0),
                outcome="FAIL" if fails else "SUCCESS",
                image_id=str(uuid.uuid4()),
                error_code=config.fail_error_code,
                fail_reason=config.fail_reason,
            )
            self._jobs[job.job_id] = job
            if by_backup:
                self._backup_jobs[spec.source_id] = job.job_id
            # IMS registers the image when it accepts the job; it is queued until the job runs.
            self._new_image(
                job.image_id,
                spec.name,
                spec.tags,
                now,
                job_id=job.job_id,
                backup_id=spec.source_id if by_backup else None,
                owner=config.project_id,
                description=spec.description,
                min_ram=spec.min_ram,
                max_ram=spec.max_ram,
                enterprise_project_id=spec.enterprise_project_id,
            )
        return _Response(200, {"job_id": job.job_id})

    def _new_image(
        self,
        image_id: str,
        name: str,
        tags: tuple[tuple[str, str], ...],
        created_at: float,
        **fields: Any,
    ) -> EmulatedImage:
        """Record an image; the caller holds the lock."""
        self._image_seq += 1
        image = EmulatedImage(image_id, name, tags, created_at, seq=self._image_seq, **fields)
        self._images[image_id] = image
        return image

    def _list_images(self, req: _Incoming) -> _Response:
        query = _parse_image_query(req.query)
        now = self.clock()
        with self._lock:
            records = [
                (image, self._jobs.get(image.job_id or "")) for image in self._images.values()
            ]
        views = {image.image_id: (image, image.view(job, now)) for image, job in records}
        listed = sorted(
            (pair for pair in views.values() if query.matches(*pair)),
            key=lambda pair: query.sort_value(*pair),
            reverse=query.descending,
        )
        if query.marker is not None:
            if query.marker not in views:
                raise _bad_query(f"The marker image {query.marker} does not exist.")
            start = query.sort_value(*views[query.marker])
            # The page starts after the marker's place in the order, whether it matches or not.
            listed = [pair for pair in listed if query.comes_after(query.sort_value(*pair), start)]
        page = [view for _, view in listed[: query.limit]]
        body: dict[str, Any] = {"images": page}
        if len(listed) > query.limit and self.config.image_page_info:
            body["page_info"] = {"next_marker": page[-1]["id"]}
        return _Response(200, body)

    def _delete_image(self, image_id: str, raw: bytes) -> _Response:
        """``DELETE /v2/images/{image_id}``: the image becomes ``deleted`` now (see the module
        docstring for the refusals)."""
        delete_backup = _parse_delete(raw)
        now = self.clock()
        with self._lock:
            image = self._images.get(image_id)
            job = self._jobs.get(image.job_id or "") if image is not None else None
            status = image.state(job, now)[0] if image is not None else "deleted"
            if image is None or status == "deleted":
                raise _ims_error("IMG.0027", f"The image {image_id} does not exist.", 404)
            if image.imagetype != "private":
                raise _ims_error("IMG.0094", "The public image cannot be deleted.")
            if image.owner != self.config.project_id:
                raise _ims_error("IMG.0092", "The image can only be deleted by the owner.")
            if image.protected:
                raise _ims_error("IMG.0028", "The image in the request is protected.")
            if status in ("queued", "saving"):
                raise _ims_error("IMG.0090", "The image being created cannot be deleted.")
            image.status, image.status_since = "deleted", now
            self._deletions.append(Deletion(image_id, delete_backup, now))
        return _Response(204, b"")

    def _check_backup_free(self, backup_id: str, now: float) -> None:
        # One backup, one image: a running or successful job holds the backup, a failed one not.
        previous = self._jobs.get(self._backup_jobs.get(backup_id, ""))
        if previous is not None and previous.state(now)[0] != "FAIL":
            raise _ims_error("IMG.0029", "The backup has already been used to create an image.")

    def _job(self, job_id: str, path_project: str | None) -> _Response:
        if path_project is not None and path_project != self.config.project_id:
            raise _ims_error("IMG.0030", "The project ID does not match the credentials.")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise _ims_error(
                "IMG.0023", f"Failed to query the job: job {job_id} does not exist.", 404
            )
        body = job.view(self.clock(), old_time_format=self.config.old_time_format)
        return _Response(200, _patched(body, self.config.job_overrides, self.config.job_omit))

    def _iam(self, req: _Incoming) -> _Response:
        config = self.config
        user, project, methods = _parse_password_auth(req.body)
        domain = user.get("domain")
        domain = domain if isinstance(domain, dict) else {}
        authenticated = (
            "password" in methods
            and _same(user.get("name"), config.iam_user)
            and _same(user.get("password"), config.iam_password)
            and (domain.get("name") == config.iam_domain or domain.get("id") == config.iam_domain)
            and (
                project.get("id") == config.project_id
                or project.get("name") == config.iam_project_name
            )
        )
        if not authenticated:
            raise _iam_error(401, "The username or password is wrong, or the scope is unknown.")
        token = self.issue_token()
        issued = self.clock()
        body = {
            "token": {
                "methods": ["password"],
                "issued_at": _iso_micro(issued),
                "expires_at": _iso_micro(issued + config.token_ttl_seconds),
                "project": {
                    "id": config.project_id,
                    "name": config.iam_project_name,
                    "domain": {"name": config.iam_domain},
                },
                "user": {"name": config.iam_user, "domain": {"name": config.iam_domain}},
            }
        }
        return _Response(201, body, {"X-Subject-Token": token})

    # -- authentication ----------------------------------------------------------------------

    def _authenticate(self, req: _Incoming, *, project_in_path: bool) -> None:
        token = req.headers.get("x-auth-token")
        if token is not None:
            if not self._token_valid(token):
                raise _gateway_error(
                    401,
                    "APIGW.0301",
                    "Incorrect IAM authentication information: verify token failed.",
                    req.request_id,
                )
            return
        authorization = req.headers.get("authorization")
        if authorization is None:
            raise _gateway_error(
                401,
                "APIGW.0301",
                "Incorrect IAM authentication information: no X-Auth-Token or Authorization header.",
                req.request_id,
            )
        self._check_signature(req, authorization)
        # With a token the project comes from its scope; AK/SK needs X-Project-Id off-path.
        if not project_in_path and req.headers.get("x-project-id") != self.config.project_id:
            raise _ims_error(
                "IMG.0067", "The project ID is incorrect: X-Project-Id is missing or wrong."
            )

    def _token_valid(self, token: str) -> bool:
        static = self.config.auth_token
        if static is not None and _same(token, static):
            return True
        with self._lock:
            expires = self._tokens.get(token)
        return expires is not None and self.clock() < expires

    def _check_signature(self, req: _Incoming, authorization: str) -> None:
        def refuse(reason: str, code: str = "APIGW.0301") -> _Refusal:
            detail = "Incorrect IAM authentication information: " + reason
            return _gateway_error(401, code, detail, req.request_id)

        try:
            parts = signer.parse_authorization(authorization)
        except ValueError as exc:
            raise refuse(str(exc)) from exc
        if not _same(parts["Access"], self.config.ak):
            raise refuse("the access key does not exist.")
        names = [name.strip().lower() for name in parts["SignedHeaders"].split(";") if name.strip()]
        if "host" not in names or "x-sdk-date" not in names:
            raise refuse("SignedHeaders must include host and x-sdk-date.")
        if any(name not in req.headers for name in names):
            raise refuse("a signed header is missing from the request.")
        sdk_date = req.headers["x-sdk-date"]
        try:
            signed_at = datetime.strptime(sdk_date, signer.DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError as exc:
            raise refuse("X-Sdk-Date is not in the format YYYYMMDDTHHMMSSZ.") from exc
        if abs(self.clock() - signed_at.timestamp()) > self.config.max_clock_skew_seconds:
            raise refuse("signature expired: X-Sdk-Date is more than 15 minutes off.", "APIGW.0303")
        self._check_security_token(names, req.headers, refuse)
        signed = {name: req.headers[name] for name in names}
        canonical, _ = signer.canonical_request(req.method, req.path, req.query, signed, req.body)
        expected = signer.signature(self.config.sk, sdk_date, canonical)
        if not _same(parts["Signature"], expected):
            raise refuse("verify aksk signature fail.")

    def _check_security_token(
        self, names: Sequence[str], headers: Mapping[str, str], refuse: Callable[[str], _Refusal]
    ) -> None:
        expected = self.config.security_token
        if expected is None:
            if "x-security-token" in headers:
                raise refuse("a security token was sent for a permanent access key.")
            return
        if "x-security-token" not in names or not _same(headers["x-security-token"], expected):
            raise refuse("the security token is missing, unsigned or wrong.")

    # -- admin routes --------------------------------------------------------------------------

    def _admin(self, req: _Incoming) -> _Response:
        """Admin routes (no auth, not recorded, no latency).

        * ``GET  /_emulator/health``: ``{"status": "ok"}``
        * ``GET  /_emulator/requests``: ``{"requests": [RecordedRequest.to_json(), ...]}``
        * ``GET  /_emulator/stats``: ``{"calls", "requests", "jobs", "images", "deletions", "faults"}``
        * ``POST /_emulator/faults``: ``{"route": "create", "faults": [{"status": 429, ...}]}``
        * ``DELETE /_emulator/faults``: drop every queued fault
        * ``POST /_emulator/reset``: ``reset()``
        * ``GET  /_emulator/jobs``: ``{"jobs": [job JSON, ...]}``
        * ``POST /_emulator/jobs/{job_id}/finish``: ``{"outcome": "FAIL", "error_code"?, "fail_reason"?}``
        * ``GET  /_emulator/images``: ``{"images": [image JSON, ...]}``
        * ``GET  /_emulator/deletions``: ``{"deletions": [{"image_id", "delete_backup", "at"}]}``
        * ``POST /_emulator/images``: ``add_image`` arguments as JSON; the image JSON
        * ``POST /_emulator/images/{image_id}/status``: ``{"status": "deleted"}``; the image JSON
        * ``GET  /_emulator/config``, ``PATCH /_emulator/config``: read or change ``EmulatorConfig``
        """
        action = req.path[len(ADMIN_PREFIX) :].strip("/")
        try:
            payload = json.loads(req.body) if req.body.strip() else {}
            return self._admin_action(req.method, action, payload)
        except (ValueError, TypeError, KeyError) as exc:
            return _Response(400, {"error": {"code": "emulator.bad_request", "message": str(exc)}})

    def _admin_action(self, method: str, action: str, payload: Any) -> _Response:
        table: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("GET", "health"): lambda _: {"status": "ok"},
            ("GET", "requests"): lambda _: {"requests": [r.to_json() for r in self.requests]},
            ("GET", "stats"): lambda _: self._stats(),
            ("GET", "jobs"): lambda _: {"jobs": [self.job_view(job_id) for job_id in self.jobs]},
            ("GET", "images"): lambda _: {"images": self.images()},
            ("GET", "deletions"): lambda _: self._deletions_json(),
            ("GET", "config"): lambda _: self._config_json(),
            ("PATCH", "config"): self._patch_config_json,
            ("POST", "config"): self._patch_config_json,
            ("POST", "reset"): lambda _: self._reset_json(),
            ("POST", "faults"): self._queue_faults,
            ("DELETE", "faults"): lambda _: self._clear_faults(),
            ("POST", "images"): lambda body: self.add_image(**body),
        }
        if (method, action) in table:
            return _Response(200, table[method, action](payload))
        image_status = _IMAGE_STATUS_PATH.match(action)
        if method == "POST" and image_status:
            image_id, status = image_status["image_id"], payload["status"]
            return _or_404("image", lambda: self.set_image_status(image_id, status))
        finish = _FINISH_PATH.match(action)
        if method == "POST" and finish:
            job_id, outcome = finish["job_id"], payload.get("outcome", "SUCCESS")
            error_code, fail_reason = payload.get("error_code"), payload.get("fail_reason")
            return _or_404(
                "job",
                lambda: self.finish_job(
                    job_id, outcome, error_code=error_code, fail_reason=fail_reason
                ),
            )
        message = f"no admin route {method} {ADMIN_PREFIX}{action}"
        return _Response(404, {"error": {"code": "emulator.not_found", "message": message}})

    def _queue_faults(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        faults = [Fault.from_json(item) for item in payload.get("faults", [payload.get("fault")])]
        self.inject(payload["route"], *faults)
        return {"queued": self.pending_faults()}

    def _patch_config_json(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._patch_config(payload)
        return self._config_json()

    def _stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self._calls),
                "requests": len(self._requests),
                "jobs": len(self._jobs),
                "images": len(self._images),
                "deletions": len(self._deletions),
                "faults": {route: len(queue) for route, queue in self._faults.items()},
            }

    def _deletions_json(self) -> dict[str, Any]:
        keys = ("image_id", "delete_backup", "at")
        return {"deletions": [dict(zip(keys, item, strict=True)) for item in self.deletions]}

    def _reset_json(self) -> dict[str, Any]:
        self.reset()
        return {"status": "reset"}

    def _clear_faults(self) -> dict[str, Any]:
        with self._lock:
            for queue in self._faults.values():
                queue.clear()
        return {"queued": self.pending_faults()}

    def _config_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for item in fields(EmulatorConfig):
            value = getattr(self.config, item.name)
            values[item.name] = sorted(value) if isinstance(value, set) else value
        return values

    def _patch_config(self, payload: Mapping[str, Any]) -> None:
        current = self.config
        known = {item.name for item in fields(EmulatorConfig)}
        unknown = set(payload) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        changes: dict[str, Any] = {}
        for name, value in payload.items():
            if isinstance(getattr(current, name), set):
                changes[name] = set(value)
            elif name == "job_omit":
                changes[name] = tuple(value)
            else:
                changes[name] = value
        self.config = replace(current, **changes)


def _or_404(what: str, call: Callable[[], dict[str, Any]]) -> _Response:
    """``call()``'s JSON, or the admin 404 when it names an unknown job or image."""
    try:
        return _Response(200, call())
    except KeyError:
        return _Response(
            404, {"error": {"code": "emulator.not_found", "message": f"no such {what}"}}
        )


def _patched(
    body: dict[str, Any], override: Mapping[str, Any], omit: Sequence[str]
) -> dict[str, Any]:
    if not override and not omit:
        return body
    patched = {**body, **override}
    for key in omit:
        patched.pop(key, None)
    return patched


class _Server(ThreadingHTTPServer):
    # A benchmark opens many keep-alive connections at once; each gets a daemon thread.
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True
    emulator: ImsEmulator

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host with getfqdn, a DNS lookup that can take seconds.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        """Remember open connections, so ``close_connections`` can end idle keep-alive ones."""
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut every open connection down: their threads stop waiting for a next request."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ims-emulator/1.0"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY, Nagle plus delayed ACK
        # would add ~40 ms to every keep-alive answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server().track(self.connection, open_=True)

    def finish(self) -> None:
        self._server().track(self.connection, open_=False)
        with contextlib.suppress(OSError):
            super().finish()

    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a benchmark sends tens of thousands of requests."""

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve()

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve()

    def do_PUT(self) -> None:
        """Serve a PUT (unknown route unless admin)."""
        self._serve()

    def do_PATCH(self) -> None:
        """Serve a PATCH (admin config)."""
        self._serve()

    def do_DELETE(self) -> None:
        """Serve a DELETE (an image, or the admin faults)."""
        self._serve()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        request_id = uuid.uuid4().hex
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(
                _Response(400, {"error": {"code": "IMG.0001", "message": "bad framing"}}),
                request_id,
            )
            return
        split = urlsplit(self.path)
        req = _Incoming(
            method=self.command,
            path=split.path,
            query=parse_qsl(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            request_id=request_id,
        )
        try:
            answer = self._server().emulator._handle(req)
        except Exception:
            # A bug in the emulator: show it on stderr, answer 500 and keep serving.
            traceback.print_exc()
            message = "emulator error; see its stderr"
            answer = _Response(500, {"error": {"code": "IMG.0061", "message": message}})
        if isinstance(answer, _Drop):
            self.close_connection = True
            return
        self._send(answer, request_id)

    def _send(self, response: _Response, request_id: str) -> None:
        body = response.body
        if isinstance(body, bytes):
            payload = body
        elif isinstance(body, str):
            payload = body.encode("utf-8")
        else:
            payload = json.dumps(body).encode("utf-8")
        # A 204 has no body, so neither a type nor a length (RFC 9110 §8.6).
        no_content = response.status == 204 and not payload
        headers = (
            {"X-Request-Id": request_id}
            if no_content
            else {"Content-Type": _JSON, "X-Request-Id": request_id}
        )
        for name, value in response.headers.items():
            # A fault's "content-type" replaces the default whatever its case: one header, not two.
            for taken in [key for key in headers if key.lower() == name.lower()]:
                del headers[taken]
            headers[name] = value
        try:
            self.send_response(response.status)
            for name, value in headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            if not no_content:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            # The client gave up (timeout after a delay fault): nothing left to answer.
            self.close_connection = True


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m ims_emulator", description="Local IMS emulator (full-ECS images)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port, 0 for any (default 8090)")
    parser.add_argument("--ak", default=defaults.ak)
    parser.add_argument("--sk", default=defaults.sk)
    parser.add_argument("--project-id", default=defaults.project_id)
    parser.add_argument("--security-token", default=None, help="require this X-Security-Token")
    parser.add_argument("--auth-token", default=None, help="static X-Auth-Token to accept")
    parser.add_argument("--iam-user", default=defaults.iam_user)
    parser.add_argument("--iam-password", default=defaults.iam_password)
    parser.add_argument("--iam-domain", default=defaults.iam_domain)
    parser.add_argument("--job-seconds", type=float, default=defaults.job_seconds)
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--fail-ratio", type=float, default=defaults.fail_ratio)
    parser.add_argument(
        "--fail-source", action="append", default=[], help="name/instance/backup id that fails"
    )
    parser.add_argument("--unknown-instance", action="append", default=[], help="IMG.0005 for it")
    parser.add_argument("--old-time-format", action="store_true", help="04-Jun-2015 18:11:06:586")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-record", action="store_true", help="do not keep request records")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        The exit status.
    """
    args = _parse_args(argv)
    config = EmulatorConfig(
        ak=args.ak,
        sk=args.sk,
        project_id=args.project_id,
        security_token=args.security_token,
        auth_token=args.auth_token,
        iam_user=args.iam_user,
        iam_password=args.iam_password,
        iam_domain=args.iam_domain,
        job_seconds=args.job_seconds,
        latency_ms=args.latency_ms,
        fail_ratio=args.fail_ratio,
        fail_sources=set(args.fail_source),
        unknown_instances=set(args.unknown_instance),
        old_time_format=args.old_time_format,
        seed=args.seed,
        record_requests=not args.no_record,
    )
    emulator = ImsEmulator(config)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    url = emulator.start(args.host, args.port)
    print(f"IMS emulator listening on {url}", flush=True)
    # A timed wait, so the signal handler gets to run on every platform.
    while not stopping.wait(0.5):
        pass
    emulator.stop()
    return 0
