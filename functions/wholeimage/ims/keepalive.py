"""The poller's transport: one keep-alive HTTP/1.1 connection to IMS, spoken with h11.

Measured here (64 workers, 50 ms server latency, 5,000 queries), the client's CPU per query
decides the polling fan-out, and each layer of the httpx stack costs: one shared pool 5-10x
(docs/performance.md, "Polling fan-out"); per-worker ``httpx.AsyncClient`` objects about 2 ms;
httpcore driven directly 0.98 ms; h11, the HTTP/1.1 engine beneath both, driven directly over
an asyncio stream 0.55 ms. So each poll worker speaks h11 over its own connection, signed by
the same auth as everything else (a ``HeaderSigner``), and answers ``httpx.Response`` objects.

As an httpx transport does, it maps its failures to httpx's errors: ``httpx.ConnectError`` and
``httpx.ConnectTimeout`` while connecting, ``httpx.ReadTimeout`` and ``httpx.ReadError`` once
connected, ``httpx.RemoteProtocolError`` when the server closed the connection before answering
(a kept-alive connection closed while idle is replaced and the ``GET`` sent once more first).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h11
import httpx

from wholeimage.ims.auth import HeaderSigner


class KeepAlivePollClient:
    """One keep-alive HTTP/1.1 connection to IMS, spoken with h11, signed by our auth.

    h11 (httpx's own protocol engine, beneath httpcore) does all of HTTP/1.1: framing,
    chunking, keep-alive state. What is left here is one socket and its timeouts. Headers are
    built directly, without an ``httpx.Request``: at this fan-out its URL parsing costs as much
    as the signing. The auth answers in one step (AK/SK signing, a static token); the poller is
    handed a ready token for IAM auth (see ``wholeimage.ims.poller.job_poller``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        auth: HeaderSigner,
        timeout: float,
        ssl_context: Any,
        user_agent: str,
    ) -> None:
        url = httpx.URL(base_url)
        self._tls = ssl_context if url.scheme == "https" else None
        self._hostname = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._host = url.netloc.decode("ascii")
        self._prefix = url.raw_path.decode("ascii").rstrip("/")
        self._auth = auth
        self._user_agent = user_agent
        self._timeout = timeout
        self._connect_timeout = min(10.0, timeout)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connection: h11.Connection | None = None

    async def get(self, url: str) -> httpx.Response:
        """Send a signed ``GET``; transport failures raise ``httpx`` errors, as httpx would."""
        headers = self._auth.signed_headers(method="GET", host=self._host, path=url, query=[])
        headers.setdefault("Host", self._host)  # signed by AK/SK; HTTP/1.1 needs it anyway
        headers["User-Agent"] = self._user_agent
        request = h11.Request(
            method="GET", target=self._prefix + url, headers=list(headers.items())
        )
        reused = self._connection is not None
        try:
            return await self._exchange(request)
        except _StaleConnectionError:
            # The server closed an idle kept-alive connection before answering: a GET is safe
            # to send again, once, on a fresh connection (httpcore does the same).
            if not reused:
                raise httpx.RemoteProtocolError("the server closed the connection") from None
            await self.aclose()
            try:
                return await self._exchange(request)
            except _StaleConnectionError:
                raise httpx.RemoteProtocolError("the server closed the connection") from None

    async def _exchange(self, request: h11.Request) -> httpx.Response:
        connection, reader, writer = await self._open()
        try:
            writer.write(connection.send(request) + connection.send(h11.EndOfMessage()))
            response, body = await asyncio.wait_for(self._read(connection, reader), self._timeout)
        except TimeoutError as exc:
            await self.aclose()
            raise httpx.ReadTimeout("IMS did not answer in time") from exc
        except (OSError, h11.ProtocolError) as exc:
            await self.aclose()
            raise httpx.ReadError(type(exc).__name__) from exc
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
        else:
            await self.aclose()
        return httpx.Response(response.status_code, headers=list(response.headers), content=body)

    @staticmethod
    async def _read(
        connection: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Response, bytes]:
        response: h11.Response | None = None
        body = bytearray()
        received = False
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await reader.read(65536)
                except ConnectionResetError:
                    if received:
                        raise
                    raise _StaleConnectionError from None
                if not data and not received:
                    raise _StaleConnectionError  # closed before a byte of the answer
                received = True
                connection.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body.extend(event.data)
            elif isinstance(event, h11.EndOfMessage) and response is not None:
                return response, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) and response is None:
                raise _StaleConnectionError
            elif isinstance(event, h11.ConnectionClosed | h11.EndOfMessage):
                raise h11.RemoteProtocolError("incomplete response")

    async def _open(self) -> tuple[h11.Connection, asyncio.StreamReader, asyncio.StreamWriter]:
        """The kept-alive connection, or a new one."""
        if self._connection is not None and self._reader is not None and self._writer is not None:
            return self._connection, self._reader, self._writer
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._hostname, self._port, ssl=self._tls),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("could not connect to IMS in time") from exc
        except OSError as exc:
            raise httpx.ConnectError(type(exc).__name__) from exc
        self._connection, self._reader, self._writer = h11.Connection(h11.CLIENT), reader, writer
        return self._connection, reader, writer

    async def aclose(self) -> None:
        """Close the connection (a later ``get`` opens a new one)."""
        writer, self._writer, self._reader, self._connection = self._writer, None, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # already gone: closing is all we wanted
                await writer.wait_closed()


class _StaleConnectionError(Exception):
    """The connection ended before any answer began."""
