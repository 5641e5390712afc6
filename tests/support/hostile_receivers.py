"""Hostile webhook receivers on loopback raw sockets, one process each.

``python -m tests.support.hostile_receivers CASE PORT [CERT KEY]`` serves
CASE on 127.0.0.1:PORT and prints ``ready``. Each case misbehaves the way
issue 15 lists; everything it sends is bounded by the client cutting it off
(the relay closes the connection), and the process is killed by the test.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Awaitable, Callable

Case = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)


async def repeated_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-A: a\r\n" * 200_000 + b"\r\n")
    await writer.drain()
    await reader.read()


async def endless_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    i = 0
    while True:
        writer.write(b"".join(b"X-%d: %s\r\n" % (i + k, b"v" * 64) for k in range(100)))
        i += 100
        await writer.drain()


async def huge_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\n")  # 10 GiB
    chunk = b"x" * 65536
    while True:
        writer.write(chunk)
        await writer.drain()


async def dripping_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 100_000:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.05)


async def pipelined(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await _request(reader)
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()


async def retry_after_superscript(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        await _request(reader)
        head = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: ²\r\nContent-Length: 0\r\n"
        writer.write(head.encode() + b"\r\n")
        await writer.drain()


async def early_response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A 500 written on accept, before any request; then each request is answered.

    Whether the early 500 reaches the client before or after its request was
    written is up to the scheduler. Before: refused as unsolicited. After: it
    is indistinguishable from an answer, and the connection stays open, so
    every request read later is answered too (with a 500, one behind).
    Answering only once per connection would leave a reused connection
    silent, and the attempt on it would time out: a second misbehaviour
    (the dripping_head case's), not this one's.
    """
    writer.write(b"HTTP/1.1 500 Early\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    while True:
        await _request(reader)
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()


async def tls_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """TLS with a certificate for another name: the handshake is what fails."""
    while True:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()


CASES: dict[str, Case] = {
    "repeated_headers": repeated_headers,
    "endless_headers": endless_headers,
    "huge_body": huge_body,
    "dripping_head": dripping_head,
    "pipelined": pipelined,
    "retry_after_superscript": retry_after_superscript,
    "early_response": early_response,
    "tls_mismatch": tls_ok,
}


async def main(case: str, port: int, cert: str | None, key: str | None) -> None:
    handler = CASES[case]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            writer.close()

    context = None
    if cert and key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    server = await asyncio.start_server(serve, "127.0.0.1", port, ssl=context)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], int(args[1]), *(args[2:4] or [None, None])))
