"""A real HTTP/1.1 webhook receiver on loopback that tests can steer.

A plain asyncio server (no framework) so a test can make it misbehave in
ways a framework would not allow: hang while holding the request, drip an
endless body, answer a redirect. Every request is recorded with its headers
and exact body bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when the body was complete


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b'{"status":"ok"}'
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Hang:
    """Hold the request open until ``Receiver.release`` is set (then answer 200)."""


@dataclass(frozen=True)
class Drip:
    """Answer 200 and send ``chunk`` every ``every`` seconds, forever."""

    chunk: bytes = b"x" * 1024
    every: float = 0.01


Action = Reply | Hang | Drip
Handler = Callable[[Request], Action]

_REASONS = {
    200: "OK",
    204: "No Content",
    302: "Found",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Receiver:
    handler: Handler = field(default=lambda _req: Reply())
    requests: list[Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    connections: int = 0  # accepted so far
    _server: asyncio.Server | None = None
    _conns: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def script(self, *actions: Action, then: Action | None = None) -> None:
        """Answer with ``actions`` in order, then ``then`` (default 200) forever."""
        queue = list(actions)
        last = then or Reply()
        self.handler = lambda _req: queue.pop(0) if queue else last

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            await self._server.wait_closed()

    def drop_connections(self) -> None:
        """Close every open connection (as a server's keep-alive timeout would)."""
        for w in list(self._conns):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        self.connections += 1
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                self.requests.append(req)
                self.arrived.set()
                action = self.handler(req)
                if isinstance(action, Hang):
                    await self.release.wait()
                    action = Reply()
                if isinstance(action, Drip):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n"
                    )
                    while True:
                        writer.write(b"%x\r\n%s\r\n" % (len(action.chunk), action.chunk))
                        await writer.drain()
                        await asyncio.sleep(action.every)
                head = [
                    f"HTTP/1.1 {action.status} {_REASONS.get(action.status, 'Status')}",
                    f"Content-Length: {len(action.body)}",
                    "Content-Type: application/json",
                ]
                head += [f"{k}: {v}" for k, v in action.headers]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + action.body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._conns.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body, time.monotonic())


@contextlib.asynccontextmanager
async def running(handler: Handler | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver() if handler is None else Receiver(handler=handler)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.close()
