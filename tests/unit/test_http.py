"""The sender's HTTP/1.1 client (relay/http.py) against real loopback servers.

Most tests use the steerable receiver of tests/support/receivers.py; the
ones that need bytes no well-behaved server sends (chunked pieces, 1xx,
garbage, a close right after the request) use a scripted raw server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from outbox.relay import ssrf
from outbox.relay.attempt import post
from outbox.relay.http import (
    KEEPALIVE_EXPIRY,
    USER_AGENT,
    Client,
    ConnectError,
    LocalProtocolError,
    RemoteProtocolError,
)
from tests.support.receivers import Drip, Hang, Reply, running
from tests.support.servers import free_port
from tests.support.waiting import wait_for

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _client(keepalive_expiry: float = KEEPALIVE_EXPIRY) -> Client:
    return Client(allow=LOOPBACK, timeout=5.0, keepalive_expiry=keepalive_expiry)


async def _post(client: Client, url: str, body: bytes = b"{}", **kwargs: int) -> tuple[int, bytes]:
    resp = await client.post(url, body, {"content-type": "application/json"}, **kwargs)
    return resp.status, resp.body


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A server that runs ``script`` per connection; yields (url, [connections])."""
    accepted = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", accepted
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


# --- keep-alive ---------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    async with running() as rx, _client() as client:
        for i in range(20):
            status, body = await _post(client, rx.url, b'{"n": %d}' % i)
            assert status == 200 and body == b'{"status":"ok"}'
    assert len(rx.requests) == 20 and rx.connections == 1
    assert [r.body for r in rx.requests[:2]] == [b'{"n": 0}', b'{"n": 1}']


async def test_request_head_and_headers() -> None:
    async with running() as rx, _client() as client:
        await client.post(rx.url + "?a=1", b"{}", {"x-webhook-event": "user.created"})
    [req] = rx.requests
    assert req.method == "POST" and req.path == "/hook?a=1"
    assert req.headers["host"] == f"127.0.0.1:{rx.port}"
    assert req.headers["user-agent"] == USER_AGENT
    assert req.headers["x-webhook-event"] == "user.created"
    assert req.headers["content-length"] == "2"
    assert "accept-encoding" not in req.headers


async def test_userinfo_is_sent_as_basic_auth() -> None:
    async with running() as rx, _client() as client:
        await _post(client, f"http://user:p%40ss@127.0.0.1:{rx.port}/hook")
    assert rx.requests[0].headers["authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss


async def test_concurrent_requests_open_as_many_connections_as_needed() -> None:
    async with running() as rx, _client() as client:
        for _ in range(3):
            await asyncio.gather(*[_post(client, rx.url) for _ in range(5)])
    assert len(rx.requests) == 15
    assert rx.connections == 5  # kept alive between rounds, never more than in use


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    """Closed while idle: noticed before writing, so the request goes on a fresh connection."""
    async with running() as rx, _client() as client:
        assert (await _post(client, rx.url))[0] == 200
        rx.drop_connections()
        await wait_for(lambda: not rx._conns, what="server side closed")
        assert (await _post(client, rx.url))[0] == 200
    assert rx.connections == 2 and len(rx.requests) == 2


async def test_close_after_the_request_is_an_error_not_a_resend() -> None:
    """Once the request was written the server may have acted on it: no silent retry."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))  # then close without answering

    async with raw_server(script) as (url, accepted), _client() as client:
        with pytest.raises(RemoteProtocolError, match="without sending a response"):
            await _post(client, url)
    assert len(seen) == 1 and accepted == [1]


async def test_expired_idle_connection_is_not_reused() -> None:
    async with running() as rx, _client(keepalive_expiry=0.0) as client:
        for _ in range(3):
            assert (await _post(client, rx.url))[0] == 200
    assert rx.connections == 3


async def test_connection_close_response_is_not_reused() -> None:
    async with running() as rx, _client() as client:
        rx.script(Reply(200, b"{}", (("Connection", "close"),)))
        assert (await _post(client, rx.url))[0] == 200
        assert (await _post(client, rx.url))[0] == 200
    assert rx.connections == 2


async def test_request_is_sent_in_one_piece() -> None:
    """A large body arrives whole, and the receiver parses it."""
    async with running() as rx, _client() as client:
        rx.script(Reply(204, b""))
        status, body = await _post(client, rx.url, b"x" * 100_000)
    assert status == 204 and body == b""
    assert rx.requests[0].body == b"x" * 100_000


# --- responses -------------------------------------------------------------------


async def test_chunked_response_in_pieces_then_reuse() -> None:
    pieces = [b"5\r\nhel", b"lo\r\n", b"6\r\n world\r\n0\r", b"\n\r\n"]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                await writer.drain()
                writer.write(piece)
            await writer.drain()

    async with raw_server(script) as (url, accepted), _client() as client:
        for _ in range(3):
            assert await _post(client, url) == (200, b"hello world")
    assert accepted == [1]


async def test_informational_response_is_skipped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async with raw_server(script) as (url, _), _client() as client:
        assert await _post(client, url) == (201, b"ok")


async def test_garbage_response_is_a_protocol_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(script) as (url, _), _client() as client:
        with pytest.raises(RemoteProtocolError, match="invalid HTTP response"):
            await _post(client, url)


async def test_body_until_close_without_length() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()

    async with raw_server(script) as (url, _), _client() as client:
        assert await _post(client, url) == (200, b"all of it")


async def test_redirect_is_not_followed() -> None:
    async with running() as target, running() as rx, _client() as client:
        rx.script(Reply(302, b"", (("Location", target.url),)))
        resp = await client.post(rx.url, b"{}", {})
    assert resp.status == 302 and resp.headers["location"] == target.url
    assert target.requests == []


async def test_oversize_body_is_capped_and_the_connection_dropped() -> None:
    async with running() as rx, _client() as client:
        rx.script(Drip(chunk=b"y" * 4096, every=0.001))
        assert await _post(client, rx.url, body_cap=1000) == (200, b"y" * 1000)
        assert (await _post(client, rx.url))[0] == 200
    assert rx.connections == 2  # the endless body's connection was not reused


async def test_dripping_body_is_bounded_by_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    async with running() as rx, _client() as client:
        rx.script(Drip(chunk=b"z" * 10, every=0.01))
        t0 = loop.time()
        resp = await client.post(rx.url, b"{}", {}, deadline=t0 + 0.3, body_cap=1_000_000)
        elapsed = loop.time() - t0
    # The head came in time, so the status stands; the body is what arrived.
    assert resp.status == 200 and not resp.complete
    assert resp.body and set(resp.body) == {ord("z")}
    assert 0.25 <= elapsed < 2.0


async def test_no_response_head_by_the_deadline_is_a_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with running() as rx, _client() as client:
        rx.script(Hang())
        with pytest.raises(TimeoutError):
            await client.post(rx.url, b"{}", {}, deadline=loop.time() + 0.2)
        rx.release.set()
        assert (await _post(client, rx.url))[0] == 200
    assert rx.connections == 2  # the timed-out connection was closed


async def test_refused_connection_is_a_connect_error() -> None:
    async with _client() as client:
        with pytest.raises(ConnectError):
            await _post(client, f"http://127.0.0.1:{free_port()}/hook")


async def test_header_with_a_line_break_is_refused_before_sending() -> None:
    async with running() as rx, _client() as client:
        with pytest.raises(LocalProtocolError):
            await client.post(rx.url, b"{}", {"x-webhook-event": "a\r\nx-injected: 1"})
    assert rx.requests == []


# --- one attempt (relay.attempt.post) ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "value", "expected"), [(503, "7", 7.0), (429, "120", 120.0), (500, "7", None)]
)
async def test_attempt_reads_retry_after(status: int, value: str, expected: float | None) -> None:
    loop = asyncio.get_running_loop()
    async with running() as rx, _client() as client:
        rx.script(Reply(status, b"busy", (("Retry-After", value),)))
        result = await post(
            client, rx.url, b"{}", {}, attempt=1, deadline=loop.time() + 5, body_cap=100
        )
    assert result.status == status and result.body == "busy" and not result.ok
    assert result.retry_after == expected and result.error_message == f"HTTP {status}"


async def test_attempt_classifies_failures() -> None:
    loop = asyncio.get_running_loop()
    async with running() as rx, _client() as client:
        rx.script(Hang())
        timeout = await post(
            client, rx.url, b"{}", {}, attempt=1, deadline=loop.time() + 0.2, body_cap=100
        )
        rx.release.set()
        refused = await post(
            client,
            f"http://127.0.0.1:{free_port()}/",
            b"{}",
            {},
            attempt=2,
            deadline=loop.time() + 5,
            body_cap=100,
        )
    async with Client(allow=()) as strict:
        unsafe = await post(
            strict, rx.url, b"{}", {}, attempt=3, deadline=loop.time() + 5, body_cap=100
        )
    assert timeout.error_class == "Timeout" and timeout.status is None
    assert refused.error_class == "ConnectError" and refused.error_message
    assert unsafe.error_class == "UnsafeURL" and "loopback" in (unsafe.error_message or "")


# --- TLS ----------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.test (needs the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=hooks.test",
         "-addext", "subjectAltName=DNS:hooks.test"],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


async def test_tls_verifies_the_host_name(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate

    async def resolve(host: str) -> Sequence[str]:
        return ["127.0.0.1"]

    monkeypatch.setattr(ssrf, "default_resolver", resolve)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with running() as rx:
        tls = await asyncio.start_server(rx._serve, "127.0.0.1", 0, ssl=server_ctx)
        port = tls.sockets[0].getsockname()[1]
        try:
            async with Client(allow=LOOPBACK, ssl_context=client_ctx) as client:
                for _ in range(2):
                    assert (await _post(client, f"https://hooks.test:{port}/hook"))[0] == 200
                # Same address, another name: the certificate does not match.
                with pytest.raises(ConnectError, match="certificate"):
                    await _post(client, f"https://other.test:{port}/hook")
        finally:
            tls.close()
            await tls.wait_closed()
    assert len(rx.requests) == 2 and rx.connections == 1
    assert rx.requests[0].headers["host"] == f"hooks.test:{port}"
