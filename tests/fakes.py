"""Hand-written fakes for the ports (preferred over mocks: they behave, and they record)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wholeimage.bootstrap import Dependencies
from wholeimage.ims.client import ImageSummary, ImsClient
from wholeimage.ims.connection import ImsConnection
from wholeimage.models import MARKER_TAG_KEY
from wholeimage.settings import Settings
from wholeimage.store.sqlite import SqliteJobStore


@dataclass
class FakeImsClient:
    """An ``ImsClient`` that records submissions and answers from a script.

    ``script`` holds one entry per call: a job id to return, or an exception to raise. When it
    runs out, job ids are made up. Each body is recorded as the caller's part (``submitted``,
    the marker tag taken out) and the marker tag's value (``markers``), so tests can compare
    the body with what the caller sent and check the marker on its own.

    ``images`` answers ``find_whole_images`` by marker value; ``lookup_script`` (exceptions
    or image lists) comes first, one entry per call.

    Deleting (docs/ims-api.md §2.6): ``delete_image`` records ``(image_id, delete_backup)`` in
    ``deleted`` and takes the next ``delete_script`` entry: an exception to raise, or ``None``
    (and, once the script runs out, always) for a 204. A 204 removes the image from ``by_id``
    and ``tagged``, as IMS stops listing it; a raised exception leaves both as they were, so a
    test decides what an uncertain delete did. ``find_image`` answers from ``by_id``;
    ``list_images_by_tag`` lists the ``tagged`` images whose ``tags`` hold ``"key=value"``
    (``whole_image`` is recorded in ``tag_queries``, not filtered on: a summary has no such
    field).
    """

    script: list[str | BaseException] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    markers: list[str | None] = field(default_factory=list)
    on_submit: Callable[[], None] | None = None
    images: dict[str, list[ImageSummary]] = field(default_factory=dict)
    lookup_script: list[list[ImageSummary] | BaseException] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    delete_script: list[BaseException | None] = field(default_factory=list)
    deleted: list[tuple[str, bool]] = field(default_factory=list)
    by_id: dict[str, ImageSummary] = field(default_factory=dict)
    tagged: list[ImageSummary] = field(default_factory=list)
    tag_queries: list[tuple[str, str, bool]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create_whole_image(self, body: dict[str, Any]) -> str:
        caller_part, marker = split_marker(body)
        with self._lock:
            self.submitted.append(caller_part)
            self.markers.append(marker)
            step = self.script.pop(0) if self.script else f"{len(self.submitted):032x}"
        if self.on_submit is not None:
            self.on_submit()
        if isinstance(step, BaseException):
            raise step
        return step

    def find_whole_images(
        self, *, tag_key: str, tag_value: str, enterprise_project_id: str | None = None
    ) -> list[ImageSummary]:
        assert tag_key == MARKER_TAG_KEY
        with self._lock:
            self.lookups.append(tag_value)
            step = self.lookup_script.pop(0) if self.lookup_script else None
        if isinstance(step, BaseException):
            raise step
        return list(step) if step is not None else list(self.images.get(tag_value, []))

    def delete_image(self, image_id: str, *, delete_backup: bool) -> None:
        with self._lock:
            self.deleted.append((image_id, delete_backup))
            step = self.delete_script.pop(0) if self.delete_script else None
            if step is None:
                self.by_id.pop(image_id, None)
                self.tagged = [image for image in self.tagged if image.image_id != image_id]
        if step is not None:
            raise step

    def find_image(self, image_id: str) -> ImageSummary | None:
        with self._lock:
            return self.by_id.get(image_id)

    def list_images_by_tag(
        self,
        *,
        tag_key: str,
        tag_value: str,
        whole_image: bool = True,
        private_only: bool = True,
        enterprise_project_id: str | None = None,
        page_size: int = 500,
        max_pages: int = 20,
    ) -> list[ImageSummary]:
        wanted = f"{tag_key}={tag_value}"
        with self._lock:
            self.tag_queries.append((tag_key, tag_value, whole_image))
            return [image for image in self.tagged if wanted in (image.tags or ())]


def split_marker(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``body`` without wholeimage's marker tag, and the marker's value (None without one)."""
    caller_part = dict(body)
    marker: str | None = None
    prefix = f"{MARKER_TAG_KEY}."
    if "tags" in body:
        kept = [tag for tag in body["tags"] if not tag.startswith(prefix)]
        marker = next((tag[len(prefix) :] for tag in body["tags"] if tag.startswith(prefix)), None)
        caller_part["tags"] = kept
    if "image_tags" in body:
        kept_tags = [tag for tag in body["image_tags"] if tag.get("key") != MARKER_TAG_KEY]
        marker = next(
            (tag["value"] for tag in body["image_tags"] if tag.get("key") == MARKER_TAG_KEY),
            marker,
        )
        caller_part["image_tags"] = kept_tags
        if not kept_tags:
            del caller_part["image_tags"]
    return caller_part, marker


def make_settings(**overrides: Any) -> Settings:
    """Settings built from arguments only: nothing is read from the environment."""
    values: dict[str, Any] = {"project_id": "0123456789abcdef0123456789abcdef"}
    values.update(overrides)
    return Settings(**values)


def make_dependencies(
    tmp_path: Path, ims: FakeImsClient | None = None, **settings_overrides: Any
) -> Dependencies:
    """Real SQLite store in ``tmp_path``, fake IMS."""
    return Dependencies(
        settings=make_settings(**settings_overrides),
        store=SqliteJobStore(str(tmp_path / "state.db")),
        ims=ims or FakeImsClient(),
    )


def build_ims_client(settings: Settings) -> ImsClient:
    """The ``HttpImsClient`` the settings make (endpoint, credentials), as ``create`` gets it."""
    return ImsConnection.from_settings(settings).client(settings)
