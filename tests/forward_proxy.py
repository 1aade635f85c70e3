"""A local forward proxy for tests: ``CONNECT`` tunnels and plain-HTTP forwarding, recorded.

What a corporate egress proxy does, and no more: a ``CONNECT host:port`` (RFC 9110 §9.3.6) is
answered 200 and the bytes are piped both ways (it never sees inside a TLS tunnel); any other
request names an absolute URL (RFC 9112 §3.2.2) and is sent on to that origin, its answer sent
back, the client's connection kept alive. With ``credentials`` it wants ``Proxy-Authorization:
Basic`` and answers 407 otherwise (RFC 9110 §11.7.1). Each request it receives is recorded in
``forwarded``: that is how a test sees that a call went through it.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import h11

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "transfer-encoding",
        "content-length",
        "te",
        "trailer",
        "upgrade",
    }
)


@dataclass(frozen=True)
class Forwarded:
    """One request the proxy received: ``CONNECT`` and ``host:port``, or a method and a URL."""

    method: str
    target: str
    headers: dict[str, str]
    allowed: bool

    @property
    def host(self) -> str:
        """The ``host:port`` it went to."""
        if self.method == "CONNECT":
            return self.target
        return urlsplit(self.target).netloc


class ForwardProxy:
    """A threaded forward proxy on loopback (``with ForwardProxy() as proxy: proxy.url``)."""

    def __init__(
        self, credentials: tuple[str, str] | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.credentials = credentials
        self.tls = tls  # a server context: the proxy is then an https:// one
        self.forwarded: list[Forwarded] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._server: socketserver.ThreadingTCPServer | None = None

    @property
    def url(self) -> str:
        """``http://[user:password@]127.0.0.1:port`` (the password percent-encoded)."""
        assert self._server is not None
        port = self._server.server_address[1]
        scheme = "http" if self.tls is None else "https"
        if self.credentials is None:
            return f"{scheme}://127.0.0.1:{port}"
        user, password = (quote(part, safe="") for part in self.credentials)
        return f"{scheme}://{user}:{password}@127.0.0.1:{port}"

    def start(self) -> ForwardProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def hosts(self) -> list[str]:
        """Where each recorded request went (``host:port``), in order."""
        with self._lock:
            return [entry.host for entry in self.forwarded]

    # -- serving -------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _allowed(self, headers: dict[str, str]) -> bool:
        if self.credentials is None:
            return True
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        return headers.get("proxy-authorization") == f"Basic {expected}"

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                received = _read_message(connection, client, h11.Request)
                if received is None:
                    return
                request, body = received
                headers = {name.decode().lower(): value.decode() for name, value in request.headers}
                allowed = self._allowed(headers)
                entry = Forwarded(
                    request.method.decode(), request.target.decode(), headers, allowed
                )
                with self._lock:
                    self.forwarded.append(entry)
                if not allowed:
                    _answer(
                        connection, client, 407, [("Proxy-Authenticate", 'Basic realm="test"')], b""
                    )
                elif entry.method == "CONNECT":
                    self._tunnel(connection, client, entry.target)
                    return
                else:
                    status, answer_headers, answer = self._forward(entry, request, body)
                    _answer(connection, client, status, answer_headers, answer)
                if (
                    connection.our_state is h11.MUST_CLOSE
                    or connection.their_state is h11.MUST_CLOSE
                ):
                    return
                connection.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return
        finally:
            client.close()

    def _tunnel(self, connection: h11.Connection, client: socket.socket, authority: str) -> None:
        host, _, port = authority.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        upstream.settimeout(None)
        self._track(upstream)
        client.sendall(
            connection.send(
                h11.Response(status_code=200, headers=[], reason=b"Connection established")
            )
        )
        leftover, _ = connection.trailing_data
        if leftover:
            upstream.sendall(leftover)
        copier = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
        copier.start()
        _copy(client, upstream)
        copier.join(timeout=10)
        upstream.close()

    def _forward(
        self, entry: Forwarded, request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(entry.target)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = [
            (name.decode(), value.decode())
            for name, value in request.headers
            if name.decode().lower() not in HOP_BY_HOP
        ]
        headers += [("Content-Length", str(len(body))), ("Connection", "close")]
        upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=30)
        self._track(upstream)
        try:
            origin = h11.Connection(h11.CLIENT)
            upstream.sendall(
                origin.send(h11.Request(method=request.method, target=path, headers=headers))
                + origin.send(h11.Data(data=body))
                + origin.send(h11.EndOfMessage())
            )
            received = _read_message(origin, upstream, h11.Response)
        finally:
            upstream.close()
        if received is None:
            return 502, [], b"the origin closed the connection"
        response, answer = received
        answer_headers = [
            (name.decode(), value.decode())
            for name, value in response.headers
            if name.decode().lower() not in HOP_BY_HOP
        ]
        return response.status_code, answer_headers, answer


def _read_message(
    connection: h11.Connection, sock: socket.socket, kind: type[Any]
) -> tuple[Any, bytes] | None:
    """The next request or response and its body; None when the peer closed first."""
    head: Any = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(sock.recv(65536))
        elif isinstance(event, kind):
            head = event
            if isinstance(event, h11.Request) and event.method == b"CONNECT":
                # A CONNECT has no body; h11 waits for its end before the answer may go.
                continue
        elif isinstance(event, h11.Data):
            body.extend(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return head, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _answer(
    connection: h11.Connection,
    client: socket.socket,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    headers = [*headers, ("Content-Length", str(len(body)))]
    client.sendall(
        connection.send(h11.Response(status_code=status, headers=headers))
        + connection.send(h11.Data(data=body))
        + connection.send(h11.EndOfMessage())
    )


def _copy(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
