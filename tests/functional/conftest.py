"""Fixtures the functional tests share: a fake IMS behind the process's dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeImsClient, make_dependencies
from wholeimage.bootstrap import Dependencies, set_dependencies


@pytest.fixture
def fake_ims() -> FakeImsClient:
    """An IMS that records submissions and answers from a script."""
    return FakeImsClient()


@pytest.fixture
def fake_deps(tmp_path: Path, fake_ims: FakeImsClient) -> Iterator[Dependencies]:
    """The process's dependencies for the test: a SQLite store in ``tmp_path`` and ``fake_ims``."""
    dependencies = make_dependencies(tmp_path, fake_ims)
    set_dependencies(dependencies)
    yield dependencies
    set_dependencies(None)
    dependencies.store.close()
