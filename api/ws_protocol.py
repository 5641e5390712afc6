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

The frames themselves are built once, not once per client: the hub sends
the same text (``Event.frame``) to every client, and a server's text frame
is the same bytes on every connection (no mask; no compression unless
permessage-deflate was negotiated, in which case the frame goes through
uvicorn's path). :func:`text_frame` keeps the encoded frames of the texts
sent lately, within a byte budget.

Order, flow control and closing are unchanged: writes keep their order,
uvicorn's own pause/resume (``writable``) still follows the real transport's
buffer, and ``close()`` writes what is collected first (asyncio's close then
flushes its buffer before the socket closes); ``abort()`` drops it, as the
real ``abort()`` drops its buffer.

What the server writes on its own counts too (:func:`bounded_protocol`):
protocol pongs answer a client's pings outside any flow control, so a client
that floods pings and never reads would grow the write buffer without end.
Past the bound it is closed with 1013, like a client whose queue of events
overflows (relay/hub.py). A close frame is written even while the socket is
backed up (it goes out behind the backlog), and a closed connection whose
peer never reads what is left is dropped after :data:`LINGER` seconds.

All this subclasses uvicorn's sans-I/O protocol and relies on some of its
private attributes. pyproject.toml bounds uvicorn from above (the installed
version is the tested one), and at import :func:`check` verifies what the
subclass relies on (:data:`RELIED_ON_ATTRIBUTES`, :data:`RELIED_ON_METHODS`,
and that only ``connection_made`` binds ``self.transport``); if anything is
off, ``/ws`` runs on uvicorn's stock protocol, with one warning.
"""

from __future__ import annotations

import asyncio
import dis
import types
import warnings
import weakref
from collections.abc import Iterable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

# Encoded frames of recent texts, by text. Cleared whole when over budget:
# a fan-out sends each text to every client within one loop turn, so only
# the frames of the last few batches are ever looked up again.
_FRAME_CACHE_BYTES = 4 * 1024 * 1024

# Seconds a closed connection may take to hand its last bytes to its peer.
LINGER = 10.0
TRY_AGAIN_LATER = 1013
_frames: dict[str, bytes] = {}
_frames_size = 0


def text_frame(text: str) -> bytes:
    """An unmasked, unfragmented, uncompressed text frame carrying ``text``."""
    global _frames_size
    frame = _frames.get(text)
    if frame is not None:
        return frame
    data = text.encode()
    n = len(data)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = b"\x81\x7e" + n.to_bytes(2, "big")
    else:
        head = b"\x81\x7f" + n.to_bytes(8, "big")
    frame = head + data
    if _frames_size + len(frame) > _FRAME_CACHE_BYTES:
        _frames.clear()
        _frames_size = 0
    if len(frame) <= _FRAME_CACHE_BYTES // 4:
        _frames[text] = frame
        _frames_size += len(frame)
    return frame


class _Flusher:
    """One callback per loop turn flushes every transport written to in it.

    (One ``call_soon`` per transport would cost a callback per client per
    batch; the order of first writes is kept, so clients are served in the
    order the hub reached them.)
    """

    __slots__ = ("_dirty", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[_CoalescingTransport] = []

    def add(self, transport: _CoalescingTransport) -> None:
        if not self._dirty:
            self._loop.call_soon(self.run)
        self._dirty.append(transport)

    def run(self) -> None:
        dirty, self._dirty = self._dirty, []
        for transport in dirty:
            transport.flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class _CoalescingTransport:
    """Stands in for the socket transport: ``write`` collects, one flush per loop turn."""

    __slots__ = ("_flusher", "_loop", "_pending", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._loop = loop
        self._flusher = _flusher(loop)
        self._pending: list[bytes] = []

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        return sum(map(len, self._pending)) + self._real.get_write_buffer_size()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._flusher.add(self)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        # Without it, a uvicorn that wrote with writelines() would reach the
        # real transport through __getattr__: ahead of the frames collected
        # here (a ping overtaking queued events).
        for data in list_of_data:
            self.write(data)

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
        closing = self._real.is_closing()
        self._real.close()
        if not closing:
            # asyncio's close waits for the peer to read the buffer; one that
            # never reads would hold the socket forever.
            self._loop.call_later(LINGER, self._real.abort)

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

    async def send(self, message: ASGISendEvent) -> None:
        # The common case, a text message on an open connection with nothing
        # negotiated, skips building the frame again; everything else
        # (handshake, close, bytes, compression, a paused or closing
        # connection) is uvicorn's own path.
        if message["type"] == "websocket.send":
            text = message.get("text")
            conn = self.conn
            if (
                text is not None
                and message.get("bytes") is None
                and self.handshake_complete
                and not self.close_sent
                and not self.disconnected
                and self.initial_response is None
                and self.writable.is_set()
                and conn.state is State.OPEN
                and not conn.extensions
                and not conn.expect_continuation_frame
            ):
                self.transport.write(text_frame(text))
                return
        elif message["type"] == "websocket.close" and self.handshake_complete:
            # The last frame: behind the backlog, without waiting for room.
            self.writable.set()
        await super().send(message)


# --- what we rely on in uvicorn ---------------------------------------------------

# The instance attributes of uvicorn's WebSocketsSansIOProtocol that the
# subclasses below read or write, and the methods they override. uvicorn
# keeps them private: a release that renames one would break the fast path
# silently (a frame written past a closed or paused connection), and one that
# rebinds ``self.transport`` after ``connection_made`` would bypass the
# coalescing transport (a ping overtaking queued frames). So they are checked
# at import; if any is off, /ws runs on uvicorn's stock protocol, with one
# warning (and no coalescing, no encode-once, no bound on pongs).
RELIED_ON_ATTRIBUTES = (
    "transport",
    "loop",
    "conn",
    "handshake_complete",
    "close_sent",
    "disconnected",
    "initial_response",
    "writable",
    "queue",
    "read_paused",
    "close_timer",
    "close_timeout",
)
RELIED_ON_METHODS = ("connection_made", "data_received", "send")
# Where uvicorn may bind ``self.transport``: its constructor (a placeholder)
# and connection_made, which our subclass wraps.
TRANSPORT_BOUND_IN = frozenset({"__init__", "connection_made"})
STOCK_PROTOCOL = "websockets-sansio"


def _stored_attributes(cls: type) -> dict[str, set[str]]:
    """``self.<name> = ...`` in each function of ``cls``'s own namespace: name -> functions."""
    stored: dict[str, set[str]] = {}

    def visit(code: types.CodeType, where: str) -> None:
        for ins in dis.get_instructions(code):
            if ins.opname == "STORE_ATTR":
                stored.setdefault(str(ins.argval), set()).add(where)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                visit(const, where)

    for name, member in vars(cls).items():
        func = getattr(member, "__func__", member)
        code = getattr(func, "__code__", None)
        if isinstance(code, types.CodeType):
            visit(code, name)
    return stored


def uvicorn_problem(base: type = WebSocketsSansIOProtocol) -> str | None:
    """What in uvicorn is not as the subclasses expect, or None when all is."""
    for method in RELIED_ON_METHODS:
        # Its own, not one inherited from asyncio.Protocol.
        if not callable(vars(base).get(method)):
            return f"{base.__name__}.{method}() is gone"
    stored = _stored_attributes(base)
    for attr in RELIED_ON_ATTRIBUTES:
        if attr not in stored and not hasattr(base, attr):
            return f"{base.__name__} no longer sets self.{attr}"
    elsewhere = stored.get("transport", set()) - TRANSPORT_BOUND_IN
    if elsewhere:
        return f"{base.__name__} rebinds self.transport in {', '.join(sorted(elsewhere))}()"
    return None


# What check() found at import: None, or why /ws runs on the stock protocol.
PROBLEM: str | None = None


def check() -> str | None:
    """Verify uvicorn (:func:`uvicorn_problem`); run at import. On a problem,
    one warning, and :func:`bounded_protocol` returns the stock protocol."""
    global PROBLEM
    PROBLEM = uvicorn_problem()
    if PROBLEM is not None:
        warnings.warn(
            f"uvicorn {version('uvicorn')}: {PROBLEM}; /ws uses uvicorn's stock "
            f"{STOCK_PROTOCOL} protocol (no write coalescing, no bound on pongs)",
            RuntimeWarning,
            stacklevel=2,
        )
    return PROBLEM


def bounded_protocol(max_buffered: int) -> type[CoalescingWebSocketProtocol] | str:
    """The protocol for ``uvicorn.Config(ws=...)`` with a write-buffer bound (the
    stock protocol's name when :data:`PROBLEM` says uvicorn is not as expected)."""
    if PROBLEM is not None:
        return STOCK_PROTOCOL

    class BoundedWebSocketProtocol(CoalescingWebSocketProtocol):
        _overflowed = False

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            transport = self.transport
            if (
                self.handshake_complete
                and not self._overflowed
                and isinstance(transport, _CoalescingTransport)
                and transport.buffered() > max_buffered
            ):
                self._overflow()

        def _overflow(self) -> None:
            """Send 1013 behind the backlog, ignore what the client sends from now
            on, and close once it has read (or after uvicorn's close timeout).

            Closing at once would reset the connection (unread input), and the
            client would never see why.
            """
            self._overflowed = True
            reason = f"too far behind (more than {max_buffered} bytes unread); resume later"
            if not self.close_sent:
                self.queue.put_nowait(
                    {"type": "websocket.disconnect", "code": TRY_AGAIN_LATER, "reason": reason}
                )
            # A close frame (unless one was sent already); input is discarded after it.
            self.conn.fail(TRY_AGAIN_LATER, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            if self.close_timer is None:
                self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    return BoundedWebSocketProtocol


check()
