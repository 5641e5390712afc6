"""The sender's HTTP path (relay/delivery/client.py, attempt.py) on real loopback servers.

Every request goes through the shared ``httpx.AsyncClient`` on aiohttp's
engine, as in production. Most tests use the steerable receiver of
tests/webhook_receiver.py; the ones that need bytes no well-behaved server
sends (chunked pieces, 1xx, garbage, huge heads, stray responses) use a
scripted raw server. Every hostile server is bounded: it runs until the
test's attempt deadline, never longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import pytest

from outbox.relay.delivery import ssrf
from outbox.relay.delivery.attempt import post
from outbox.relay.delivery.client import KEEPALIVE_EXPIRY, USER_AGENT, make_client
from outbox.relay.delivery.retry import AttemptResult
from tests.support.receivers import Drip, Hang, Reply, running
from tests.support.servers import free_port
from tests.support.tls import self_signed
from tests.support.waiting import wait_for

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _client(
    keepalive_expiry: float = KEEPALIVE_EXPIRY,
    allow: tuple[ssrf.Network, ...] = LOOPBACK,
    **kwargs: ssl.SSLContext,
) -> httpx.AsyncClient:
    return make_client(max_connections=16, allow=allow, keepalive_expiry=keepalive_expiry, **kwargs)


async def _post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes = b"{}",
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    body_cap: int = 4096,
) -> AttemptResult:
    loop = asyncio.get_running_loop()
    return await post(
        client,
        url,
        body,
        {"content-type": "application/json"} if headers is None else headers,
        attempt=1,
        deadline=loop.time() + timeout,
        body_cap=body_cap,
    )


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A server that runs ``script`` per connection; yields (url, [connections])."""
    accepted = [0]
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", accepted
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
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
            r = await _post(client, rx.url, b'{"n": %d}' % i)
            assert r.ok and r.status == 200 and r.body == '{"status":"ok"}'
    assert len(rx.requests) == 20 and rx.connections == 1
    assert [r.body for r in rx.requests[:2]] == [b'{"n": 0}', b'{"n": 1}']


async def test_request_head_and_headers() -> None:
    async with running() as rx, _client() as client:
        await _post(client, rx.url + "?a=1", headers={"x-webhook-event": "user.created"})
    [req] = rx.requests
    assert req.method == "POST" and req.path == "/hook?a=1"
    assert req.headers["host"] == f"127.0.0.1:{rx.port}"
    assert req.headers["user-agent"] == USER_AGENT
    assert req.headers["x-webhook-event"] == "user.created"
    assert req.headers["content-length"] == "2"
    assert "accept-encoding" not in req.headers
    assert "cookie" not in req.headers


async def test_userinfo_is_sent_as_basic_auth() -> None:
    async with running() as rx, _client() as client:
        assert (await _post(client, f"http://user:p%40ss@127.0.0.1:{rx.port}/hook")).ok
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
        assert (await _post(client, rx.url)).ok
        rx.drop_connections()
        await wait_for(lambda: not rx._conns, what="server side closed")
        await asyncio.sleep(0.05)  # the client's loop sees the FIN
        assert (await _post(client, rx.url)).ok
    assert rx.connections == 2 and len(rx.requests) == 2


async def test_close_after_the_request_is_an_error_not_a_resend() -> None:
    """Once the request was written the server may have acted on it: no silent retry."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))  # then close without answering

    async with raw_server(script) as (url, accepted), _client() as client:
        r = await _post(client, url)
    assert r.error_class == "RemoteProtocolError" and "without sending a response" in (
        r.error_message or ""
    )
    assert len(seen) == 1 and accepted == [1]


async def test_expired_idle_connection_is_not_reused() -> None:
    async with running() as rx, _client(keepalive_expiry=0.001) as client:
        for _ in range(3):
            assert (await _post(client, rx.url)).ok
            await asyncio.sleep(0.01)
    assert rx.connections == 3


async def test_connection_close_response_is_not_reused() -> None:
    async with running() as rx, _client() as client:
        rx.script(Reply(200, b"{}", (("Connection", "close"),)))
        assert (await _post(client, rx.url)).ok
        assert (await _post(client, rx.url)).ok
    assert rx.connections == 2


async def test_large_request_body_arrives_whole() -> None:
    async with running() as rx, _client() as client:
        rx.script(Reply(204, b""))
        r = await _post(client, rx.url, b"x" * 100_000)
    assert r.ok and r.status == 204 and r.body == ""
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
            r = await _post(client, url)
            assert r.ok and r.body == "hello world"
    assert accepted == [1]


async def test_informational_response_is_skipped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async with raw_server(script) as (url, _), _client() as client:
        r = await _post(client, url)
    assert r.ok and (r.status, r.body) == (201, "ok")


async def test_garbage_response_is_a_protocol_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(script) as (url, _), _client() as client:
        r = await _post(client, url)
    assert r.error_class == "RemoteProtocolError" and r.status is None
    assert "invalid HTTP response" in (r.error_message or "")


async def test_body_until_close_without_length() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()

    async with raw_server(script) as (url, _), _client() as client:
        r = await _post(client, url)
    assert r.ok and r.body == "all of it"


async def test_redirect_is_not_followed() -> None:
    async with running() as target, running() as rx, _client() as client:
        rx.script(Reply(302, b"", (("Location", target.url),)))
        r = await _post(client, rx.url)
    assert r.status == 302 and not r.ok
    assert r.error_message == f"HTTP 302: redirect to {target.url!r} not followed"
    assert target.requests == []


async def test_body_over_the_read_limit_fails_and_the_connection_is_dropped() -> None:
    loop = asyncio.get_running_loop()
    async with running() as rx, _client() as client:
        rx.script(Drip(chunk=b"y" * 4096, every=0.001))
        r = await post(
            client, rx.url, b"{}", {}, attempt=1, deadline=loop.time() + 5, body_cap=1000,
            read_limit=64 * 1024,
        )  # fmt: skip
        assert r.status == 200 and not r.ok and r.error_class == "ResponseTooLarge"
        assert r.body == "y" * 1000  # the stored cap
        assert (await _post(client, rx.url)).ok
    assert rx.connections == 2  # the endless body's connection was not reused


async def test_body_longer_than_the_stored_cap_is_still_a_success() -> None:
    async with running() as rx, _client() as client:
        rx.script(Reply(200, b"z" * 50_000))
        r = await _post(client, rx.url, body_cap=100)
        assert r.ok and r.body == "z" * 100
        assert (await _post(client, rx.url)).ok
    assert rx.connections == 1  # read to its end, so the connection was kept


async def test_dripping_body_past_the_deadline_is_a_failed_attempt() -> None:
    loop = asyncio.get_running_loop()
    async with running() as rx, _client() as client:
        rx.script(Drip(chunk=b"z" * 10, every=0.01))
        t0 = loop.time()
        r = await _post(client, rx.url, timeout=0.3, body_cap=1_000_000)
        elapsed = loop.time() - t0
    # The head came in time, but the response never completed: not a success.
    assert r.status == 200 and not r.ok and r.error_class == "Timeout"
    assert "response body incomplete" in (r.error_message or "")
    assert r.body and set(r.body) == {"z"}
    assert 0.25 <= elapsed < 2.0


async def test_no_response_head_by_the_deadline_is_a_timeout() -> None:
    async with running() as rx, _client() as client:
        rx.script(Hang())
        r = await _post(client, rx.url, timeout=0.2)
        assert r.error_class == "Timeout" and r.status is None
        rx.release.set()
        assert (await _post(client, rx.url)).ok
    assert rx.connections == 2  # the timed-out connection was closed


async def test_refused_connection_is_a_connect_error() -> None:
    async with _client() as client:
        r = await _post(client, f"http://127.0.0.1:{free_port()}/hook")
    assert r.error_class == "ConnectError" and r.error_message


async def test_header_with_a_line_break_is_refused_before_sending() -> None:
    async with running() as rx, _client() as client:
        r = await _post(client, rx.url, headers={"x-webhook-event": "a\r\nx-injected: 1"})
    assert r.error_class == "LocalProtocolError" and r.status is None
    assert rx.requests == []


# --- hostile receivers (each bounded by the attempt's deadline) ---------------------


def _head_then(head: bytes, *, then: bytes = b"", forever: bytes = b"") -> Script:
    """Read the request, write ``head`` + ``then``, then ``forever`` until cut off."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head + then)
        await writer.drain()
        while forever:
            writer.write(forever)
            await writer.drain()
        await reader.read()

    return script


async def test_200k_repeated_headers_fail_fast() -> None:
    script = _head_then(b"HTTP/1.1 200 OK\r\n" + b"X-A: a\r\n" * 200_000 + b"\r\n")
    loop = asyncio.get_running_loop()
    async with raw_server(script) as (url, _), _client() as client:
        t0 = loop.time()
        r = await _post(client, url)
        elapsed = loop.time() - t0
    assert r.error_class == "ResponseHeadTooLarge" and not r.ok
    assert elapsed < 1.0


async def test_endless_distinct_headers_fail_fast() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(10_000_000):
            writer.write(b"X-%d: %s\r\n" % (i, b"v" * 64))
            if i % 1000 == 0:
                await writer.drain()

    async with raw_server(script) as (url, _), _client() as client:
        r = await _post(client, url)
    assert r.error_class == "ResponseHeadTooLarge"


async def test_a_header_line_over_the_limit_fails() -> None:
    script = _head_then(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n")
    async with raw_server(script) as (url, _), _client() as client:
        r = await _post(client, url)
    assert r.error_class == "ResponseHeadTooLarge"


async def test_ten_gigabyte_body_is_not_read_to_its_end() -> None:
    script = _head_then(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n", forever=b"x" * 65536
    )
    loop = asyncio.get_running_loop()
    async with raw_server(script) as (url, _), _client() as client:
        t0 = loop.time()
        r = await _post(client, url, body_cap=100)
        elapsed = loop.time() - t0
    assert r.status == 200 and not r.ok and r.error_class == "ResponseTooLarge"
    assert r.body == "x" * 100 and elapsed < 2.0


async def test_dripping_head_is_cut_by_the_deadline() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    async with raw_server(script) as (url, _), _client() as client:
        r = await _post(client, url, timeout=0.5)
    assert r.error_class == "Timeout" and r.status is None


async def test_pipelined_second_response_is_not_taken() -> None:
    """A 500 followed at once by a 200: the attempt got the 500; the extra is discarded."""
    script = _head_then(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        then=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    async with raw_server(script) as (url, accepted), _client() as client:
        first = await _post(client, url)
        second = await _post(client, url)
    assert first.status == 500 and not first.ok
    # The connection with the stray response is not reused: the next request
    # gets its own answer on a fresh one.
    assert second.status == 500 and accepted == [2]


async def test_stray_response_on_an_idle_connection_is_not_taken() -> None:
    """Bytes sent before the next request are never that request's answer."""

    idle = asyncio.Event()  # the first answer was read: the connection is pooled
    dropped = asyncio.Event()  # the client closed the connection the stray came on
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        if not first:
            await reader.read()
            return
        await idle.wait()  # idle: then an answer nobody asked for
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()
        dropped.set()

    async with raw_server(script) as (url, accepted), _client() as client:
        first = await _post(client, url)
        idle.set()
        # The next request starts only once the stray was read (and the
        # connection dropped for it): it cannot race the stray's arrival.
        await asyncio.wait_for(dropped.wait(), timeout=5)
        second = await _post(client, url)
    assert first.status == 500 and second.status == 500
    assert accepted == [2]


async def test_retry_after_that_is_not_a_number_is_ignored() -> None:
    script = _head_then(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: ²\r\nContent-Length: 0\r\n\r\n".encode()
    )
    async with raw_server(script) as (url, _), _client() as client:
        r = await _post(client, url)
    assert r.status == 503 and r.retry_after is None and r.error_message == "HTTP 503"


async def test_early_response_is_never_a_success() -> None:
    """A 500 written before the request arrives: refused as unsolicited, or the 500."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 500 Early\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(script) as (url, _), _client() as client:
        r = await _post(client, url, timeout=2.0)
    assert not r.ok and r.error_class in (None, "UnsolicitedResponse")


# --- one attempt (relay.delivery.attempt.post) ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "value", "expected"), [(503, "7", 7.0), (429, "120", 120.0), (500, "7", None)]
)
async def test_attempt_reads_retry_after(status: int, value: str, expected: float | None) -> None:
    async with running() as rx, _client() as client:
        rx.script(Reply(status, b"busy", (("Retry-After", value),)))
        result = await _post(client, rx.url, body_cap=100)
    assert result.status == status and result.body == "busy" and not result.ok
    assert result.retry_after == expected and result.error_message == f"HTTP {status}"


async def test_attempt_classifies_failures() -> None:
    async with running() as rx, _client() as client:
        rx.script(Hang())
        timeout = await _post(client, rx.url, timeout=0.2)
        rx.release.set()
        refused = await _post(client, f"http://127.0.0.1:{free_port()}/")
    async with _client(allow=()) as strict:
        unsafe = await _post(strict, rx.url)
    assert timeout.error_class == "Timeout" and timeout.status is None
    assert refused.error_class == "ConnectError" and refused.error_message
    assert unsafe.error_class == "UnsafeURL" and "loopback" in (unsafe.error_message or "")


# --- TLS ----------------------------------------------------------------------------


async def test_tls_verifies_the_host_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path, "hooks.test")

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
            async with _client(ssl_context=client_ctx) as client:
                for _ in range(2):
                    assert (await _post(client, f"https://hooks.test:{port}/hook")).ok
                # Same address, another name: the certificate does not match.
                mismatch = await _post(client, f"https://other.test:{port}/hook")
        finally:
            tls.close()
            await tls.wait_closed()
    assert mismatch.error_class == "ConnectError" and "certificate" in (
        mismatch.error_message or ""
    )
    assert len(rx.requests) == 2 and rx.connections == 1
    assert rx.requests[0].headers["host"] == f"hooks.test:{port}"


async def test_cookies_from_a_receiver_are_never_kept_or_sent() -> None:
    async with running() as rx, _client() as client:
        rx.script(Reply(200, b"{}", tuple(("Set-Cookie", f"c{i}=v; Path=/") for i in range(50))))
        assert (await _post(client, rx.url)).ok
        assert (await _post(client, rx.url)).ok
        assert len(client.cookies) == 0
    assert all("cookie" not in r.headers for r in rx.requests)
