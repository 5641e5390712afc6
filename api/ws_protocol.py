"""uvicorn's WebSocket protocol with one socket write per client per loop turn.

An ASGI ``websocket.send`` carries one message, and uvicorn writes each to
the socket at once: one ``send()`` system call per frame. With the fan-out
of the live feed that call is most of the server's CPU (B2/B3 profiles in
BENCHMARKS.md: ~45-50% of all samples in the write under
``WebSocketsSansIOProtocol.send``). Here the transport the protocol writes to
collects what is written during one turn of the event loop and hands it to
the real transport in one write at the end of that turn (``call_soon``), so
the frames the hub queues for a client in one publish leave in one system
call. Nothing waits on a timer: a lone frame goes out on the very next loop
turn, a few microseconds later.

Order, flow control and closing are unchanged: writes keep their order,
uvicorn's own pause/resume (``writable``) still follows the real transport's
buffer, and ``close()`` writes what is collected first (asyncio's close then
flushes its buffer before the socket closes); ``abort()`` drops it, as the
real ``abort()`` drops its buffer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class _CoalescingTransport:
    """Stands in for the socket transport: ``write`` collects, one flush per loop turn."""

    __slots__ = ("_loop", "_pending", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if not self._real.is_closing():
            self._real.write(data)

    def close(self) -> None:
        self.flush()
        self._real.close()

    def abort(self) -> None:
        self._pending.clear()
        self._real.abort()

    def __getattr__(self, name: str) -> Any:
        # is_closing, pause_reading, resume_reading, get_extra_info, ...
        return getattr(self._real, name)


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """``WebSocketsSansIOProtocol`` writing through a :class:`_CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = _CoalescingTransport(  # type: ignore[assignment]
            self.transport, self.loop
        )
