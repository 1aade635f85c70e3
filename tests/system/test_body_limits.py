"""Bodies bounded in size and time on a real functions-framework process (docs/limits.md §3).

``functions-framework --source functions/main.py --target create``, as deployed, is sent what a
careless or hostile client sends: 100 MiB declared or chunked, a declared 100 MiB of which only
1 KiB comes, and eight clients trickling a byte a second. The worker's memory (``VmRSS``) and the
time to each answer are measured and printed: rerun with ``-s`` to see them.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.system.test_served import SEED_ECS, Served, function_env, serve
from wholeimage.web.http import MAX_BODY_BYTES
from wholeimage.web.limits import BODY_SECONDS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc"),
]

API_TOKEN = "limits-test-token-0123456789"
MiB = 1024 * 1024
HUNDRED_MIB = 100 * MiB
THREADS = 8  # functions-framework's default on this 2-core machine (4 per core); fixed here
MAX_RSS_GROWTH = 16 * MiB


@pytest.fixture
def create_function(tmp_path: Path) -> Iterator[Served]:
    with ImsEmulator(EmulatorConfig(job_seconds=60)) as ims:
        env = function_env(ims, tmp_path, WHOLEIMAGE_API_TOKEN=API_TOKEN, THREADS=str(THREADS))
        served = serve("create", env, tmp_path / "create.log")
        try:
            yield served
        finally:
            served.process.terminate()
            served.process.wait(timeout=10)


def port_of(served: Served) -> int:
    return int(served.url.rstrip("/").rsplit(":", 1)[1])


def worker_pid(served: Served) -> int:
    """gunicorn's one worker: the child of the functions-framework process (the arbiter)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == served.process.pid:
            return int(stat.parent.name)
    raise AssertionError("no gunicorn worker under the functions-framework process")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The highest resident size of ``pid`` while the block runs, sampled every 5 ms: a buffered
    body is freed (and its pages returned) once answered, so the size after says nothing."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._sampler.start()
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.2)  # until the worker is done with the connection
        self._done.set()
        self._sampler.join()


def accepted_post(served: Served) -> httpx.Response:
    return httpx.post(
        served.url,
        content=SEED_ECS,
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        timeout=30,
    )


@dataclass
class Answer:
    status: int
    body: dict[str, object]
    seconds: float  # from the end of the request's headers to reading the answer
    sent: int  # body bytes the client could send before the server closed


def head(content_length: int | None) -> bytes:
    framing = (
        "Transfer-Encoding: chunked"
        if content_length is None
        else f"Content-Length: {content_length}"
    )
    return (
        f"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode("ascii")


def read_answer(sock: socket.socket, started: float, sent: int) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise AssertionError(f"the connection closed without an answer: {data!r}")
        data += piece
    seconds = time.monotonic() - started
    headers, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in headers.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    status = int(headers.split(b" ", 2)[1])
    return Answer(status, json.loads(rest[:length]), seconds, sent)


def send_body(port: int, content_length: int | None, pieces: Iterator[bytes]) -> Answer:
    """Send the headers, then all of ``pieces`` (as a careless client does) or until the server
    stops taking them; then read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head(content_length))
        started, sent = time.monotonic(), 0
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:  # the server shut the connection: read what it answered
                break
            sent += len(piece)
        return read_answer(sock, started, sent)


def hundred_mib(chunked: bool) -> Iterator[bytes]:
    block = b" " * MiB
    for _ in range(100):
        yield b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
    if chunked:
        yield b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_100_mib_body_is_a_413_that_costs_the_worker_no_memory(create_function, chunked):
    served = create_function
    assert accepted_post(served).status_code == 202  # warm: the function's modules are loaded
    pid = worker_pid(served)
    before = rss(pid)

    with PeakRss(pid) as peak:
        answer = send_body(port_of(served), None if chunked else HUNDRED_MIB, hundred_mib(chunked))
    growth = peak.peak - before

    print(
        f"\n{'chunked' if chunked else 'declared'} 100 MiB, no token: {answer.status} after "
        f"{answer.seconds * 1000:.0f} ms, {answer.sent / MiB:.1f} MiB sent before the server "
        f"closed, worker RSS {before / MiB:.1f} MiB, peak {peak.peak / MiB:.1f} ({growth / MiB:+.1f})"
    )
    assert answer.status == 413
    assert answer.body["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert growth < MAX_RSS_GROWTH
    assert answer.sent < HUNDRED_MIB / 2  # the server stopped taking it (socket buffers aside)
    assert accepted_post(served).status_code == 202  # and the function serves on


def test_a_declared_100_mib_of_which_1_kib_comes_is_refused_at_once(create_function):
    served = create_function
    answer = send_body(port_of(served), HUNDRED_MIB, iter([b" " * 1024]))

    print(f"\ndeclared 100 MiB, 1 KiB sent: {answer.status} after {answer.seconds * 1000:.0f} ms")
    assert answer.status == 413
    assert answer.seconds < 1.0


def test_the_limit_itself_is_accepted_and_one_byte_more_refused(create_function):
    served = create_function
    auth = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
    at_limit = SEED_ECS + b" " * (MAX_BODY_BYTES - len(SEED_ECS))

    assert httpx.post(served.url, content=at_limit, headers=auth).status_code == 202
    over = httpx.post(served.url, content=at_limit + b" ", headers=auth)
    assert over.status_code == 413


def trickle(port: int, started: threading.Event, answers: list[Answer]) -> None:
    """Declare 1,000 bytes, then send one a second until answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head(1000))
        begun, sent = time.monotonic(), 0
        started.set()
        while not select.select([sock], [], [], 1.0)[0]:
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sent += 1
        answers.append(read_answer(sock, begun, sent))


def test_slow_clients_holding_every_thread_are_cut_off_and_a_normal_call_is_answered(
    create_function,
):
    served = create_function
    assert accepted_post(served).status_code == 202  # warm
    answers: list[Answer] = []
    clients = []
    for _ in range(THREADS):
        started = threading.Event()
        client = threading.Thread(target=trickle, args=(port_of(served), started, answers))
        client.start()
        started.wait(5)
        clients.append(client)
    time.sleep(0.3)  # every thread is now reading a trickling body

    begun = time.monotonic()
    normal = accepted_post(served)
    waited = time.monotonic() - begun
    for client in clients:
        client.join(timeout=30)

    cut_after = sorted(answer.seconds for answer in answers)
    print(
        f"\n{THREADS} clients sending 1 byte/s on {THREADS} threads: cut off with "
        f"{sorted({a.status for a in answers})} after {cut_after[0]:.2f}-{cut_after[-1]:.2f} s "
        f"(BODY_SECONDS {BODY_SECONDS:g}); a normal POST meanwhile: {normal.status_code} "
        f"in {waited:.2f} s"
    )
    assert normal.status_code == 202
    assert waited < BODY_SECONDS + 1.5
    assert len(answers) == THREADS
    assert {answer.status for answer in answers} == {408}
    assert all(BODY_SECONDS - 0.1 <= seconds < BODY_SECONDS + 1.5 for seconds in cut_after)
