"""A tiny HTTP(S) forward proxy on loopback, for OUTBOX_WEBHOOK_PROXY tests.

It plays the egress proxy (smokescreen's role): it gets absolute-form
``POST http://host:port/path`` requests (passed on unchanged, keep-alive
included) and ``CONNECT host:port`` tunnels,
records what it was asked for, and connects to ``target`` whatever the host
name is (so test names need no DNS) — or refuses with 403 when ``deny`` says
so, as an SSRF-filtering proxy would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass
class Proxy:
    target: tuple[str, int] | None = None  # where every request goes (None: the asked port)
    deny: Callable[[str], bool] = field(default=lambda _authority: False)
    asked: list[str] = field(default_factory=list)  # request lines / CONNECT lines
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    def _where(self, authority: str) -> tuple[str, int]:
        _host, _, port = authority.rpartition(":")
        return self.target or ("127.0.0.1", int(port or 80))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.asked.append(line)
            method, target, _ = line.split(" ", 2)
            if method == "CONNECT":
                authority = target
            else:
                authority = target.split("://", 1)[1].split("/", 1)[0]
            if self.deny(authority):
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(*self._where(authority))
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:  # forwarded as asked (absolute form), which the test receiver accepts
                up_writer.write(head)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def running_proxy(**kwargs: object) -> AsyncIterator[Proxy]:
    proxy = Proxy(**kwargs)  # type: ignore[arg-type]
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()
