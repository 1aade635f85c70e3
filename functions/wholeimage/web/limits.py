"""Request bodies bounded in size and time, before Flask, functions-framework or our edge read them.

functions-framework reads the whole body of every request after the function answered (its
``read_request`` after-request hook calls ``request.get_data()``), however little the function
read and even when it refused the call unauthenticated; gunicorn bounds neither a body's size nor
how long it takes to arrive. So ``functions/main.py`` wraps the app functions-framework builds
in ``BoundedBodies``, which reads the body first (docs/limits.md §1):

- a ``Content-Length`` over ``MAX_BODY_BYTES`` is answered 413 at once, nothing read;
- a body without one (chunked) is read up to one byte past the limit, then answered 413;
- a body not complete ``BODY_SECONDS`` after the request reached the app is answered 408;
- any other body is handed on from memory (64 KiB at most), so nothing reads the socket again.

A refused request's connection is closed, the rest of its body unread.

Werkzeug's ``max_content_length`` cannot do it: functions-framework's hook reads the stream again
after the answer, and the ``RequestEntityTooLarge`` Werkzeug raises there becomes a 500.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import socket
import threading
import time
from typing import IO, TYPE_CHECKING

from werkzeug.wsgi import get_content_length

from wholeimage.errors import (
    PayloadTooLargeError,
    RequestInvalidError,
    RequestTimeoutError,
    WholeImageError,
)
from wholeimage.web.http import MAX_BODY_BYTES, error_response

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

# A caller sends its body with its headers (a few KiB, 64 KiB at most): 2 s is ample on any link
# and bounds how long one slow client holds one of the server's few threads (docs/limits.md §2).
BODY_SECONDS = 2.0

# Where the servers we run under expose the connection (gunicorn; werkzeug's, under ``serve``).
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


class _Deadlines:
    """One thread that shuts the reading side of a socket whose body is overdue.

    gunicorn reads a body with a blocking socket and no timeout, in a loop that waits for every
    byte asked for, so a client sending one byte a second keeps a read going indefinitely; after
    ``shutdown(SHUT_RD)`` the blocked ``recv`` returns at once, and writing the answer still works.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every watch: a forked process (a gunicorn worker) has no thread yet."""
        self._changed = threading.Condition()
        self._due: dict[int, tuple[float, socket.socket]] = {}
        self._fired: set[int] = set()
        self._count = 0
        self._started = False
        self._wakes_at = 0.0  # when the thread wakes next by itself (inf: not before notified)

    def watch(self, sock: socket.socket, deadline: float) -> int:
        """Shut ``sock`` for reading at ``deadline`` (``time.monotonic()``) unless released first."""
        with self._changed:
            if not self._started:
                threading.Thread(target=self._run, name="body-deadlines", daemon=True).start()
                self._started = True
            self._count += 1
            self._due[self._count] = (deadline, sock)
            if deadline < self._wakes_at:  # wake the thread only when it would wake too late
                self._changed.notify()
            return self._count

    def release(self, token: int) -> bool:
        """Stop watching; whether the deadline had fired."""
        with self._changed:
            self._due.pop(token, None)
            fired = token in self._fired
            self._fired.discard(token)
            return fired

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for token, (deadline, sock) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[token]
                        self._fired.add(token)
                        _shut_reading(sock)
                self._wakes_at = min((due for due, _ in self._due.values()), default=math.inf)
                self._changed.wait(None if self._wakes_at == math.inf else self._wakes_at - now)


_deadlines = _Deadlines()
if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_deadlines.reset)


def _shut_reading(sock: socket.socket | None) -> None:
    """End reading on ``sock``: the server then neither waits for nor drains the rest of a body."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # closed or reset by the client: nothing left to read
        sock.shutdown(socket.SHUT_RD)


def _end_reading(environ: WSGIEnvironment, sock: socket.socket | None) -> None:
    """After a refusal, the rest of the body is not wanted: the server closes without it."""
    _shut_reading(sock)
    # gunicorn keeps a connection open after an answer, draining what is left of the body, even
    # for a fast client pushing the whole of a declared 100 MiB; it closes at once instead when
    # its body object says reading failed (gunicorn's Body.failed).
    stream = environ["wsgi.input"]
    if hasattr(stream, "failed"):
        stream.failed = True


def _has_body(environ: WSGIEnvironment, declared: int | None) -> bool:
    # Werkzeug's rule: without a length, only a server that ends the stream itself (chunked
    # bodies, wsgi.input_terminated) has one; any other stream may never end.
    return bool(declared) if declared is not None else bool(environ.get("wsgi.input_terminated"))


def _read_at_most(stream: IO[bytes], wanted: int) -> bytes:
    chunks: list[bytes] = []
    received = 0
    while received < wanted:
        piece = stream.read(wanted - received)
        if not piece:
            break
        chunks.append(piece)
        received += len(piece)
    return b"".join(chunks)


class BoundedBodies:
    """WSGI middleware: the body bounded to ``max_bytes`` and ``seconds``, or an error answer."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        max_bytes: int = MAX_BODY_BYTES,
        seconds: float = BODY_SECONDS,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.seconds = seconds

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        sock = next((environ[key] for key in _SOCKET_KEYS if key in environ), None)
        try:
            body = self._read(environ, sock)
        except WholeImageError as error:
            _end_reading(environ, sock)
            return error_response(error)(environ, start_response)
        if body is not None:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["wsgi.input_terminated"] = True  # the stream ends where the body ends
        return self.app(environ, start_response)

    def _read(self, environ: WSGIEnvironment, sock: socket.socket | None) -> bytes | None:
        """The body, ``None`` for none.

        Raises:
            PayloadTooLargeError: declared or found over ``max_bytes``.
            RequestTimeoutError: not complete within ``seconds``.
            RequestInvalidError: the connection ended before the declared length.
        """
        declared = get_content_length(environ)
        if declared is not None and declared > self.max_bytes:
            raise PayloadTooLargeError(f"the body is over {self.max_bytes} bytes")
        if not _has_body(environ, declared):
            return None
        token = _deadlines.watch(sock, time.monotonic() + self.seconds) if sock else None
        wanted = self.max_bytes + 1 if declared is None else declared  # one byte past tells
        try:
            body = _read_at_most(environ["wsgi.input"], wanted)
        except Exception:
            # A chunked read the deadline cut short ends in the server's "no more data"; any
            # other failure (a malformed chunk, a client gone) is the server's to answer.
            if token is not None and _deadlines.release(token):
                raise self._timed_out() from None
            raise
        fired = token is not None and _deadlines.release(token)
        if len(body) > self.max_bytes:
            raise PayloadTooLargeError(f"the body is over {self.max_bytes} bytes")
        if declared is None and fired:
            # A chunked body the deadline cut short ends like a complete one: never pass it on.
            raise self._timed_out()
        if declared is not None and len(body) < declared:
            if fired:
                raise self._timed_out()
            raise RequestInvalidError(
                "the connection ended before the body did",
                details=[{"path": "header:Content-Length", "message": f"{len(body)} sent"}],
            )
        return body

    def _timed_out(self) -> RequestTimeoutError:
        return RequestTimeoutError(f"the body did not arrive within {self.seconds:g} s")


def bound_bodies(app: Flask) -> None:
    """Put ``BoundedBodies`` around ``app``, outside everything else it runs."""
    # Flask's documented way to add WSGI middleware is to replace this attribute.
    app.wsgi_app = BoundedBodies(app.wsgi_app)  # type: ignore[method-assign]
