"""Hand-written fakes for the ports (preferred over mocks: they behave, and they record)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wholeimage.bootstrap import Dependencies
from wholeimage.ims.client import ImsClient
from wholeimage.ims.connection import ImsConnection
from wholeimage.settings import Settings
from wholeimage.store.sqlite import SqliteJobStore


@dataclass
class FakeImsClient:
    """An ``ImsClient`` that records submissions and answers from a script.

    ``script`` holds one entry per call: a job id to return, or an exception to raise. When it
    runs out, job ids are made up.
    """

    script: list[str | BaseException] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    on_submit: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create_whole_image(self, body: dict[str, Any]) -> str:
        with self._lock:
            self.submitted.append(body)
            step = self.script.pop(0) if self.script else f"{len(self.submitted):032x}"
        if self.on_submit is not None:
            self.on_submit()
        if isinstance(step, BaseException):
            raise step
        return step


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
