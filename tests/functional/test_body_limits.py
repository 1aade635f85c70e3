"""Bodies bounded before anything reads them, in every function (issue 9, item 4).

Through functions-framework's own apps (``create_app(target, "functions/main.py")``), which
``functions/main.py`` wraps in ``web.limits.BoundedBodies``: a declared length over 64 KiB is a
413 before any byte is read and before the caller's token is looked at; a chunked body is cut one
byte past the limit; a body that stops coming is a 408 when its time is up.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from functions_framework import create_app
from werkzeug.test import Client

from tests.fakes import FakeImsClient, make_dependencies
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.web.http import MAX_BODY_BYTES
from wholeimage.web.limits import BoundedBodies

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
TARGETS = ["create", "check", "notify"]
API_TOKEN = "limits-caller-token-0123456789"
HUNDRED_MIB = 100 * 1024 * 1024
SEED = b'{"name": "web01-full", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}'


class CountedReads(io.BytesIO):
    """A request stream that counts the bytes taken from it."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data


class Endless(CountedReads):
    """A chunked body that never ends: any read gets all it asks for."""

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("the whole of an endless body was asked for")
        self.taken += size
        return b" " * size


@pytest.fixture
def guarded(tmp_path: Path, fake_ims: FakeImsClient) -> Iterator[Dependencies]:
    """Dependencies with a caller token configured, as every deployment has."""
    dependencies = make_dependencies(tmp_path, fake_ims, api_token=API_TOKEN)
    set_dependencies(dependencies)
    yield dependencies
    set_dependencies(None)
    dependencies.store.close()


def assert_unchanged(deps: Dependencies, ims: FakeImsClient) -> None:
    assert ims.submitted == []
    assert deps.store.list_jobs(statuses=None, since=None, limit=10) == []
    assert deps.store.notification_counts() == {}


def assert_too_large(answer: Any) -> None:
    assert answer.status_code == 413
    error = answer.get_json()["error"]
    assert error["code"] == "payload_too_large"
    assert str(MAX_BODY_BYTES) in error["message"]


@pytest.mark.parametrize("target", TARGETS)
def test_a_declared_length_over_the_limit_is_413_before_the_token_and_before_any_read(
    guarded, fake_ims, target
):
    stream = CountedReads(b"{}")
    client = create_app(target, MAIN).test_client()

    answer = client.post(
        "/",
        input_stream=stream,
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": str(HUNDRED_MIB)},
    )

    # No token was sent and one is configured: the size is refused first, revealing nothing.
    assert_too_large(answer)
    assert stream.taken == 0
    assert_unchanged(guarded, fake_ims)


class Untouchable:
    """Dependencies no call may use: the first use fails the request (a 500)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the function used its dependencies ({name})")


@pytest.fixture
def untouchable() -> Iterator[None]:
    set_dependencies(cast(Dependencies, Untouchable()))
    yield
    set_dependencies(None)


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("target", TARGETS)
def test_an_oversized_body_never_reaches_the_function(untouchable, target, chunked):
    client = create_app(target, MAIN).test_client()
    framing: dict[str, Any] = (
        {
            "headers": {"Transfer-Encoding": "chunked"},
            "environ_overrides": {"wsgi.input_terminated": True},
        }
        if chunked
        else {}
    )

    answer = client.post(
        "/", data=b" " * (MAX_BODY_BYTES + 1), content_type="application/json", **framing
    )

    assert_too_large(answer)


@pytest.mark.parametrize("target", TARGETS)
def test_a_chunked_body_is_cut_one_byte_past_the_limit(guarded, fake_ims, target):
    stream = Endless()
    client = create_app(target, MAIN).test_client()

    answer = client.post(
        "/",
        input_stream=stream,
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn says of chunked bodies
    )

    assert_too_large(answer)
    assert stream.taken == MAX_BODY_BYTES + 1
    assert_unchanged(guarded, fake_ims)


def test_a_chunked_body_within_the_limit_is_served(guarded, fake_ims):
    client = create_app("create", MAIN).test_client()

    answer = client.post(
        "/",
        input_stream=CountedReads(SEED),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked", "Authorization": f"Bearer {API_TOKEN}"},
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert answer.status_code == 202
    assert len(fake_ims.submitted) == 1


def test_a_body_at_the_limit_is_read_and_one_byte_more_is_not(guarded, fake_ims):
    client = create_app("create", MAIN).test_client()
    at_limit = SEED + b" " * (MAX_BODY_BYTES - len(SEED))
    auth = {"Authorization": f"Bearer {API_TOKEN}"}

    answer = client.post("/", data=at_limit, content_type="application/json", headers=auth)
    assert answer.status_code == 202
    over = client.post("/", data=at_limit + b" ", content_type="application/json", headers=auth)
    assert_too_large(over)


def test_a_body_that_stops_coming_is_408_when_its_time_is_up(guarded, fake_ims):
    # A real connection, as a server hands it over: the client sends 10 of 1,000 bytes and
    # stalls. The deadline shuts the connection for reading, which ends the blocked read.
    app = BoundedBodies(create_app("create", MAIN), seconds=0.3)
    server_side, client_side = socket.socketpair()
    with server_side, client_side, server_side.makefile("rb") as stream:
        client_side.sendall(b'{"name": "')
        begun = time.monotonic()
        answer = Client(app).post(
            "/",
            content_type="application/json",
            environ_overrides={
                "CONTENT_LENGTH": "1000",
                "wsgi.input": stream,
                "werkzeug.socket": server_side,
            },
        )
        waited = time.monotonic() - begun

    assert answer.status_code == 408
    assert answer.get_json()["error"]["code"] == "request_timeout"
    assert 0.3 <= waited < 2.0
    assert_unchanged(guarded, fake_ims)


def test_a_body_shorter_than_its_length_is_400(guarded, fake_ims):
    client = create_app("create", MAIN).test_client()

    answer = client.post(
        "/",
        input_stream=CountedReads(SEED),
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": str(len(SEED) + 10)},
    )

    assert answer.status_code == 400
    assert [detail["path"] for detail in answer.get_json()["error"]["details"]] == [
        "header:Content-Length"
    ]
    assert_unchanged(guarded, fake_ims)
