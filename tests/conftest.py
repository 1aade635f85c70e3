"""Shared fixtures: every test runs with a clean environment and fresh lazy singletons."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnProcess
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# One Hypothesis profile for the whole suite: a loaded two-core machine (CI) must never fail a run
# on a health check or a deadline; the properties themselves are unchanged.
settings.register_profile("wholeimage", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("wholeimage")

TIERS = ("unit", "adapters", "functional", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the folder it lives in (``-m "not system"`` and so on)."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)


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


DEFAULT_TEST_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
STORE_KINDS = ["sqlite", "postgres"]


def postgres_base_url() -> str:
    return os.environ.get("WHOLEIMAGE_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL)


def _postgres_reachable(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server tests use. In CI it must be there: a missing server fails, never skips."""
    url = postgres_base_url()
    problem = _postgres_reachable(url)
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL at {url} (WHOLEIMAGE_TEST_POSTGRES_URL): {problem}")
        pytest.skip(f"no PostgreSQL at {url} (set WHOLEIMAGE_TEST_POSTGRES_URL): {problem}")
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A URL whose connections live in a fresh schema of their own, dropped after the test."""
    import uuid

    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in postgres_server else "?"
    yield f"{postgres_server}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def state_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A state URL of the kind the test is parametrized with (``@pytest.mark.parametrize("store_kind", ...)``
    or the ``store_kind`` fixture below)."""
    kind = request.getfixturevalue("store_kind")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once per store: SQLite and PostgreSQL."""
    return str(request.param)


@pytest.fixture
def store(state_url: str) -> Iterator[object]:
    """An opened ``JobStore`` of the parametrized kind, closed after the test."""
    from wholeimage.bootstrap import open_store

    opened = open_store(state_url)
    yield opened
    opened.close()


SPAWN_JOIN_SECONDS = 30.0


@pytest.fixture
def spawn() -> Iterator[Callable[..., SpawnProcess]]:
    """Start spawned children (a fresh interpreter each, as a second instance would be); any
    still alive at the end of the test is killed."""
    context = multiprocessing.get_context("spawn")
    started: list[SpawnProcess] = []

    def start(target: Callable[..., None], *args: Any, **kwargs: Any) -> SpawnProcess:
        process = context.Process(target=target, args=args, kwargs=kwargs, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=SPAWN_JOIN_SECONDS)
        process.close()
