"""An unreachable PostgreSQL fails a call within the connect timeout, with one error.

Before, libpq had no connect timeout and the pool waited its 30 s, retrying and logging a
warning per attempt: every CLI command hung 30 s and printed 20 lines before exit 3. No
PostgreSQL server is needed here: a port nobody listens on refuses at once, and a listener that
never speaks stands for a database behind a black hole.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from wholeimage.store import postgres
from wholeimage.store.postgres import CONNECT_TIMEOUT, PostgresJobStore, connect_options


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers; its number."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_connections_get_a_connect_timeout_unless_the_url_or_libpq_names_one(monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)

    assert connect_options("postgresql://u@db:5432/x") == {"connect_timeout": CONNECT_TIMEOUT}
    assert connect_options("postgresql://u@db:5432/x?connect_timeout=20") == {}
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "9")
    assert connect_options("postgresql://u@db:5432/x") == {}


def test_a_refused_connection_fails_the_first_call_at_once_with_one_error(caplog):
    store = PostgresJobStore(f"postgresql://wholeimage:secret@127.0.0.1:{free_port()}/state")
    started = time.monotonic()

    with caplog.at_level(logging.WARNING), pytest.raises(psycopg.OperationalError) as raised:
        store.count_outstanding()

    assert time.monotonic() - started < 3
    assert "Connection refused" in str(raised.value)
    assert not [record for record in caplog.records if record.name.startswith("psycopg")]
    store.close()


@pytest.mark.slow
def test_a_database_that_never_answers_fails_within_the_connect_timeout(
    silent_server, monkeypatch, caplog
):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.setattr(postgres, "CONNECT_TIMEOUT", 2)  # libpq's least
    store = PostgresJobStore(f"postgresql://wholeimage@127.0.0.1:{silent_server}/state")
    started = time.monotonic()

    with caplog.at_level(logging.WARNING), pytest.raises(psycopg.OperationalError) as raised:
        store.count_outstanding()

    assert 1.5 < time.monotonic() - started < 5
    assert "timeout" in str(raised.value)
    assert not [record for record in caplog.records if record.name.startswith("psycopg")]
    store.close()
