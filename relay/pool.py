"""Keep-alive HTTP/1.1 connections per origin, handed out in O(1).

httpcore's general pool re-scans every connection and every queued
request on each state change; with 16 or more concurrent requests to one
endpoint that scan costs more CPU than the requests themselves (measured on
2 cores: a bare httpx loop at concurrency 16 spent most of its time in
``_assign_requests_to_connections``). The sender needs much less: its own
semaphores already bound how many requests run at once, so this pool only
keeps idle connections on a per-origin stack (last used first, so the
warmest connection is reused and surplus ones expire) and opens a new
connection when none is idle.

It plugs in where httpx's transport expects an httpcore pool
(``handle_async_request`` / ``aclose``), so httpx still does request and
response mapping, exception mapping and timeouts.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpcore
from httpcore._async.http11 import AsyncHTTP11Connection

_KEEPALIVE_EXPIRY = 5.0


class OriginPool:
    def __init__(
        self,
        *,
        network_backend: httpcore.AsyncNetworkBackend,
        ssl_context: ssl.SSLContext,
        max_idle_per_origin: int,
        keepalive_expiry: float = _KEEPALIVE_EXPIRY,
    ) -> None:
        self._backend = network_backend
        self._ssl_context = ssl_context
        self._max_idle = max_idle_per_origin
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[bytes, bytes, int], list[AsyncHTTP11Connection]] = {}

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        origin = request.url.origin
        conn = await self._checkout(origin)
        while True:
            if conn is None:
                conn = await self._connect(origin, request)
            try:
                response = await conn.handle_async_request(request)
            except httpcore.ConnectionNotAvailable:
                # An idle connection that stopped being usable; use a new one.
                await conn.aclose()
                conn = None
                continue
            except BaseException:
                await conn.aclose()
                raise
            break
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_ReturnOnClose(self, origin, conn, response.stream),
            extensions=response.extensions,
        )

    async def __aenter__(self) -> OriginPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()

    async def _checkout(self, origin: httpcore.Origin) -> AsyncHTTP11Connection | None:
        conns = self._idle.get(_key(origin))
        while conns:
            conn = conns.pop()
            # has_expired: past the keep-alive expiry, or the server closed it.
            if conn.is_idle() and not conn.has_expired():
                return conn
            await conn.aclose()
        return None

    async def _connect(
        self, origin: httpcore.Origin, request: httpcore.Request
    ) -> AsyncHTTP11Connection:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        host = origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(host, origin.port, timeout=timeouts.get("connect"))
        if origin.scheme == b"https":
            try:
                stream = await stream.start_tls(
                    ssl_context=self._ssl_context,
                    server_hostname=request.extensions.get("sni_hostname") or host,
                    timeout=timeouts.get("connect"),
                )
            except BaseException:
                await stream.aclose()
                raise
        return AsyncHTTP11Connection(
            origin=origin, stream=_Coalescing(stream), keepalive_expiry=self._keepalive_expiry
        )

    async def _checkin(self, origin: httpcore.Origin, conn: AsyncHTTP11Connection) -> None:
        conns = self._idle.setdefault(_key(origin), [])
        if conn.is_idle() and len(conns) < self._max_idle:
            conns.append(conn)
        else:
            await conn.aclose()


class _Coalescing(httpcore.AsyncNetworkStream):
    """Send a request's head and body in one write.

    h11 hands over the head, the body and the end of the message separately;
    written as they come, a small webhook POST costs two send calls and two
    receiver wake-ups. Writes are buffered until the response is read (or
    the buffer is large), then sent at once.
    """

    _FLUSH_AT = 64 * 1024

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._timeout: float | None = None

    async def _flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await self._stream.write(data, timeout=self._timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self._buffer += buffer
        self._timeout = timeout
        if len(self._buffer) >= self._FLUSH_AT:
            await self._flush()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        await self._flush()
        return await self._stream.read(max_bytes, timeout=timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        await self._flush()
        tls = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        return _Coalescing(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _key(origin: httpcore.Origin) -> tuple[bytes, bytes, int]:
    # httpcore's Origin defines __eq__ but not __hash__.
    return (origin.scheme, origin.host, origin.port)


class _ReturnOnClose:
    """The response body; closing it puts a reusable connection back on the stack."""

    def __init__(
        self, pool: OriginPool, origin: httpcore.Origin, conn: AsyncHTTP11Connection, stream: Any
    ) -> None:
        self._pool, self._origin, self._conn, self._stream = pool, origin, conn, stream
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A body closed before its end leaves the connection closed, not idle.
        await self._stream.aclose()
        await self._pool._checkin(self._origin, self._conn)
