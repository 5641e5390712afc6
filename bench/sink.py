"""Cheap WebSocket sink clients: many sockets, almost no CPU per message.

Run as ``python -m bench.sink URL --clients N --marker TEXT``. Each client
does the HTTP upgrade by hand, then only counts: bytes, and messages as
occurrences of ``{"type":`` (every server frame, event or control, starts
with it and bench payloads never contain it), found with ``bytes.count`` in
C. A client is done when the marker (put into the last event's payload by
the harness) arrives, or ``--expect`` events have. No frame parsing, no
JSON, no masking on the way in: the sinks cost the machine far less than
the server under test, which is the point of having them (B2's background
clients, B3's fan-out counts, B5's drain). The sinks never answer pings:
the bench servers run with keepalive pings off.

stdout: ``ready`` once every client has its first message (``/ws`` sends
``connection`` after registering the client with the hub), then ``done``
with one record per client, when every client has its marker, has been
closed, or the ``--timeout`` has passed. stdin: ``{"cmd": "stop"}`` ends early with ``done``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
from typing import Any
from urllib.parse import urlsplit

from bench.childio import commands, emit, run, wait_for_command

_TYPE = b'{"type":'


class SinkClient(asyncio.Protocol):
    def __init__(
        self, marker: bytes, expect: int, done: asyncio.Event, remaining: list[int]
    ) -> None:
        self.marker = marker
        self.expect = expect  # messages (after the connection message) that also mean done
        self.done = done
        self.remaining = remaining
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        # The server's first message: /ws sends it after registering the
        # client with the hub, so from then on no live event can pass it by.
        self.greeted: asyncio.Future[None] = loop.create_future()
        self.head = b""
        self.tail = b""
        self.nbytes = 0
        self.messages = 0
        self.upgraded_ns = 0
        self.first_ns = 0
        self.marker_ns = 0
        self.closed_early = False
        self.transport: asyncio.Transport | None = None
        self._keep = max(len(marker), len(_TYPE)) - 1
        self._finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head.split(b"\r\n", 1)[0]
            rest = self.head[end + 4 :]
            if b" 101 " not in status + b" ":
                self.upgraded.set_exception(RuntimeError(status.decode(errors="replace")))
                return
            self.upgraded_ns = time.monotonic_ns()
            self.upgraded.set_result(None)
            if not rest:
                return
            data = rest
        if not self.first_ns:
            self.first_ns = time.monotonic_ns()
        self.nbytes += len(data)
        window = self.tail + data
        self.messages += window.count(_TYPE) - self.tail.count(_TYPE)
        if not self.marker_ns and (
            (self.marker and self.marker in window) or (self.expect and self.messages > self.expect)
        ):
            self.marker_ns = time.monotonic_ns()
            self._finish()
        self.tail = window[-self._keep :]
        if self.messages and not self.greeted.done():
            self.greeted.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        for f in (self.upgraded, self.greeted):
            if not f.done():
                f.set_exception(ConnectionError("closed before the first message"))
        if not self.marker_ns and not self.closed_early:
            self.closed_early = True
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.remaining[0] -= 1
        if self.remaining[0] <= 0:
            self.done.set()

    def record(self) -> dict[str, Any]:
        return {
            "bytes": self.nbytes,
            "messages": self.messages,
            "upgraded_ns": self.upgraded_ns,
            "first_ns": self.first_ns,
            "marker_ns": self.marker_ns,
            "closed_early": self.closed_early,
        }


async def connect(url: str, client: SinkClient) -> None:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: client, parts.hostname or "127.0.0.1", parts.port or 80)
    assert client.transport is not None
    key = base64.b64encode(os.urandom(16)).decode()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    client.transport.write(request.encode())
    await asyncio.wait_for(client.upgraded, 30)
    await asyncio.wait_for(client.greeted, 30)


async def main_async(args: argparse.Namespace) -> None:
    done = asyncio.Event()
    remaining = [args.clients]
    marker = args.marker.encode()
    clients = [SinkClient(marker, args.expect, done, remaining) for _ in range(args.clients)]
    gate = asyncio.Semaphore(32)  # a burst of 500 upgrades at once only measures the backlog

    async def one(c: SinkClient) -> None:
        async with gate:
            await connect(args.url, c)

    results = await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        emit(event="error", message=f"{len(failed)} connects failed, first: {failed[0]!r}")
        return
    emit(event="ready", clients=len(clients))

    stopper = asyncio.create_task(wait_for_command(await commands(), "stop"))
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait({stopper, waiter}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
    for t in (stopper, waiter):
        t.cancel()
    emit(event="done", clients=[c.record() for c in clients], timed_out=not done.is_set())
    for c in clients:
        if c.transport:
            c.transport.abort()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__.split("\n")[0])
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--marker", default="", help="text in the last event's payload: done")
    p.add_argument("--expect", type=int, default=0, help="done after this many events")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds after ready")
    args = p.parse_args()
    run(main_async(args))


if __name__ == "__main__":
    main()
