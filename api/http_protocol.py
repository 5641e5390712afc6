"""uvicorn's HTTP protocol with the limits a public listener needs.

Stock uvicorn (httptools) keeps a connection that never completes a request
head open forever, accepts a request head of any size and takes connections
until the process runs out of file descriptors. :class:`GuardedHttpProtocol`
adds, per connection:

* a **head deadline** (``OUTBOX_HEADER_TIMEOUT``): from the moment a
  connection opens, or a new request on it starts, its request line and
  headers must be complete within that time, else it is closed (with a 408
  when part of a head had arrived). Idle keep-alive connections are closed by
  uvicorn's own keep-alive timeout (5 s) as before;
* a **head size limit** (``OUTBOX_MAX_HEADER_BYTES``): request line plus
  headers past that size get ``431 Request Header Fields Too Large`` and the
  connection is closed, before the rest is read;
* a **connection ceiling** (``OUTBOX_MAX_CONNECTIONS``, also uvicorn's
  ``limit_concurrency``): a connection past it gets a 503 at once and is
  closed, so idle sockets cannot use up the descriptors the database pool
  and ``/health`` need.

The subclass uses a few of uvicorn's callbacks (listed in :data:`_NEEDS`);
if a uvicorn release lacks one, :func:`http_options` falls back to the h11
protocol with only its size limit and logs one warning.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("outbox.http")

_NEEDS = (
    "connection_made",
    "connection_lost",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "send_400_response",
)

_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"connection: close\r\n"
)
_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
)


def _response(head: bytes, detail: str) -> bytes:
    body = ('{"detail": "' + detail + '"}').encode()
    return head + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


class _HeadTooLarge(Exception):
    pass


def _protocol_class(max_header_bytes: int, header_timeout: float, max_connections: int) -> Any:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpProtocol(HttpToolsProtocol):
        """HttpToolsProtocol with a head deadline, a head size limit and a ceiling."""

        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _head_too_large = False
        _head_started = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning(
                    "refusing a connection: %d open (OUTBOX_MAX_CONNECTIONS=%d)",
                    len(self.connections) - 1,
                    max_connections,
                )
                self.transport.write(_response(_503, "too many connections; try again later"))
                self.transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._head_started:
                self.transport.write(_response(_408, "the request head did not arrive in time"))
            self.transport.close()

        # Parser callbacks: one request head at a time.
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._head_started = True
            self._arm()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_header_bytes:
                self._head_too_large = True
                raise _HeadTooLarge  # httptools stops parsing; see send_400_response

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            self._head_started = False
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if self._head_too_large:
                self._disarm()
                self.transport.write(
                    _response(_431, f"request head larger than {max_header_bytes} bytes")
                )
                self.transport.close()
                return
            super().send_400_response(msg)

    return GuardedHttpProtocol


def compatible() -> bool:
    """Does the installed uvicorn have what :class:`GuardedHttpProtocol` overrides?"""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return False
    return all(callable(getattr(HttpToolsProtocol, name, None)) for name in _NEEDS)


_warned = False


def http_options(
    *, max_header_bytes: int, header_timeout: float, max_connections: int
) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that enforce the connection limits."""
    global _warned
    options: dict[str, Any] = {
        "limit_concurrency": max_connections,
        "h11_max_incomplete_event_size": max_header_bytes,
    }
    if compatible():
        options["http"] = _protocol_class(max_header_bytes, header_timeout, max_connections)
    else:
        if not _warned:
            _warned = True
            log.warning(
                "this uvicorn lacks what the guarded HTTP protocol needs; using h11: request"
                " heads are still size-limited, but idle connections are not timed out"
            )
        options["http"] = "h11"
    return options
