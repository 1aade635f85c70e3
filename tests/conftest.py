"""Shared fixtures: every test runs with a clean environment and fresh lazy singletons."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def isolate_environment() -> Iterator[None]:
    """Snapshot and restore os.environ, so settings set by one test never leak into another."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if (
            name.startswith(("WHOLEIMAGE_", "HUAWEICLOUD_SDK_"))
            and name != "WHOLEIMAGE_TEST_POSTGRES_URL"
        ):
            del os.environ[name]
    yield
    os.environ.clear()
    os.environ.update(saved)
