"""/ws fan-out against a real server: a stalled client cannot hold up the others."""

from __future__ import annotations

import asyncio
import secrets
import statistics
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.support.servers import serve_app
from tests.support.waiting import wait_for
from tests.support.ws import commit, hub_of, recv_json, settled, ws_connect


async def test_a_stalled_client_is_closed_with_1013_while_others_keep_up(
    settings: Any, db_url: str
) -> None:
    # Small bound so the test is quick; random text so that nothing on the
    # way can compress it and hide how full the socket buffers are.
    settings = settings.replace(ws_max_queue_bytes=1_000_000)
    loop = asyncio.get_running_loop()
    async with serve_app(settings) as server:
        hub = hub_of(server)
        metrics = server.app.state.outbox.metrics
        # max_queue=1: the client library stops reading the socket as soon
        # as one message waits, so the server's sends back up. No client
        # pings: their pongs would wait behind the backlog and time out.
        async with (
            ws_connect(server, max_queue=1, ping_interval=None) as stalled,
            ws_connect(server) as healthy,
        ):
            await recv_json(stalled)
            await recv_json(healthy)
            published: list[int] = []
            latencies: list[float] = []
            for n in range(400):
                started = loop.time()
                published += await commit(
                    db_url, [("file.uploaded", {"n": n, "blob": secrets.token_urlsafe(48_000)})]
                )
                assert (await recv_json(healthy))["id"] == published[-1]
                latencies.append(loop.time() - started)
                if hub.client_count == 1:
                    break
            else:
                pytest.fail("the stalled client was never dropped")
            assert metrics.ws_dropped.get() == 1

            for n in range(10):  # life goes on for the healthy client
                started = loop.time()
                [event_id] = await commit(db_url, [("file.uploaded", {"after": n})])
                assert (await recv_json(healthy))["id"] == event_id
                latencies.append(loop.time() - started)
            assert max(latencies) < 2.0, latencies
            print(f"healthy client: median {statistics.median(latencies) * 1000:.1f} ms")

            # The stalled client gets what was already in flight, in order,
            # then the close frame telling it to resume later.
            received: list[int] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    received.append((await recv_json(stalled, timeout=10))["id"])
            assert received == published[: len(received)]
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
            assert "behind" in closed.value.rcvd.reason
        await settled(server)


async def _collect(ws: ClientConnection, count: int) -> list[int]:
    return [(await recv_json(ws, timeout=30))["id"] for _ in range(count)]


async def test_200_concurrent_clients_all_receive_every_event(settings: Any, db_url: str) -> None:
    async with serve_app(settings) as server:
        clients: list[ClientConnection] = []
        try:
            for _ in range(4):  # in waves, to keep the listen backlog small
                clients += await asyncio.gather(*(ws_connect(server) for _ in range(50)))
            hellos = await asyncio.gather(*(recv_json(ws, timeout=30) for ws in clients))
            assert {h["type"] for h in hellos} == {"connection"}
            await wait_for(lambda: hub_of(server).client_count == 200, what="200 registered")
            published: list[int] = []
            for t in range(5):
                published += await commit(
                    db_url, [("ticket.created", {"t": t, "k": k}) for k in range(4)]
                )
            results = await asyncio.gather(*(_collect(ws, len(published)) for ws in clients))
            assert all(ids == published for ids in results)
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))
        await settled(server)
