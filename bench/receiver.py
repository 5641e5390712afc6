"""A cheap webhook receiver for B4 and B5: plain asyncio, HTTP/1.1 keep-alive.

Run as ``python -m bench.receiver --port P [--fail-every K] [--fail-matching S]``.
Answers every POST with 200 ``{}``, except every K-th request, which gets 500
(K=5: 20% failing, deterministic rather than random so runs compare), and
every request whose body contains the bytes S (B4k: one key that always fails). ``GET /_stats``
returns the counts. A hand-written protocol instead of a framework, so the
receiver costs the machine little next to the sender being measured; it is
its own process so its CPU is not the harness's.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench.childio import emit, run

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
FAIL = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    b'Content-Length: 17\r\n\r\n{"error":"bench"}'
)


class Stats:
    def __init__(self, fail_every: int, fail_matching: bytes = b"") -> None:
        self.fail_every = fail_every
        self.fail_matching = fail_matching
        self.requests = 0
        self.ok = 0
        self.failed = 0
        self.bytes = 0


class FramedHTTP(asyncio.Protocol):
    """HTTP/1.1 requests framed by Content-Length, handed to ``respond`` one at a time.

    Just enough HTTP for the bench's loopback receivers (this one and
    bench/otlp_sink.py): the baseline client must not be slowed by the peer.
    """

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.respond(head.split(" ", 2), body)

    def respond(self, request_line: list[str], body: bytes) -> None:
        raise NotImplementedError


class Handler(FramedHTTP):
    def __init__(self, stats: Stats) -> None:
        super().__init__()
        self.stats = stats

    def respond(self, request_line: list[str], body: bytes) -> None:
        assert self.transport is not None
        s = self.stats
        if request_line[0] == "GET" and request_line[1].startswith("/_stats"):
            body = json.dumps(
                {"requests": s.requests, "ok": s.ok, "failed": s.failed, "bytes": s.bytes}
            ).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            return
        s.requests += 1
        s.bytes += len(body)
        if (s.fail_every and s.requests % s.fail_every == 0) or (
            s.fail_matching and s.fail_matching in body
        ):
            s.failed += 1
            self.transport.write(FAIL)
        else:
            s.ok += 1
            self.transport.write(OK)


async def main_async(args: argparse.Namespace) -> None:
    stats = Stats(args.fail_every, args.fail_matching.encode())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Handler(stats), "127.0.0.1", args.port, backlog=1024)
    emit(event="ready", port=args.port)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fail-every", type=int, default=0, help="answer every K-th request 500")
    p.add_argument(
        "--fail-matching", default="", help="answer 500 to every request whose body contains this"
    )
    args = p.parse_args()
    run(main_async(args))


if __name__ == "__main__":
    main()
