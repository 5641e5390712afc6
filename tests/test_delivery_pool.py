"""The sender's connection pool (relay/pool.py) against a real loopback receiver."""

from __future__ import annotations

import asyncio
import ipaddress

import httpx

from relay.attempt import make_client
from tests.conftest import wait_for
from tests.webhook_receiver import Drip, Reply, running

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def _client(max_connections: int = 8) -> httpx.AsyncClient:
    return make_client(timeout=5.0, max_connections=max_connections, allow=LOOPBACK)


async def test_sequential_requests_reuse_one_connection() -> None:
    async with running() as rx, _client() as client:
        for i in range(20):
            resp = await client.post(rx.url, content=b'{"n": %d}' % i)
            assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    assert len(rx.requests) == 20 and rx.connections == 1
    assert [r.body for r in rx.requests[:2]] == [b'{"n": 0}', b'{"n": 1}']


async def test_concurrent_requests_open_as_many_connections_as_needed() -> None:
    async with running() as rx, _client() as client:
        for _ in range(3):
            await asyncio.gather(*[client.post(rx.url, content=b"{}") for _ in range(5)])
    assert len(rx.requests) == 15
    assert rx.connections == 5  # kept alive between rounds, never more than in use


async def test_connection_closed_by_the_server_is_replaced() -> None:
    async with running() as rx, _client() as client:
        assert (await client.post(rx.url, content=b"{}")).status_code == 200
        rx.drop_connections()
        await wait_for(lambda: not rx._conns, what="server side closed")
        assert (await client.post(rx.url, content=b"{}")).status_code == 200
    assert rx.connections == 2


async def test_body_abandoned_midway_does_not_return_the_connection() -> None:
    async with running() as rx, _client() as client:
        rx.script(Drip())
        async with client.stream("POST", rx.url, content=b"{}") as resp:
            async for _ in resp.aiter_bytes():
                break  # stop reading an endless body
        assert (await client.post(rx.url, content=b"{}")).status_code == 200
    assert rx.connections == 2


async def test_request_is_sent_in_one_piece() -> None:
    """Head and body arrive together (one write), and the receiver parses both."""
    async with running() as rx, _client() as client:
        rx.script(Reply(204, b""))
        resp = await client.post(rx.url, content=b"x" * 100_000)
    assert resp.status_code == 204
    assert rx.requests[0].body == b"x" * 100_000
