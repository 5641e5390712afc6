"""Receivers that misbehave in ways tests/db/test_delivery.py does not cover:
refusing connections for a while, and dripping a body slower than the
timeout. The whole app runs in-process (no fault here needs a real process);
the oracle judges every event."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.faults.harness import (
    Ledger,
    Writer,
    add_hook,
    attempt_outcomes,
    fast_settings,
    settle,
    writing,
)
from tests.faults.wsclients import ResumingClient, connected, running_clients
from tests.support.receivers import Drip, Reply, Request, running
from tests.support.servers import serve_app
from tests.support.waiting import wait_for


async def test_receiver_refusing_connections_then_back(
    settings: Any, db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    ledger = Ledger()
    async with running() as down, running() as steady:
        hooks = [
            await add_hook(aconn, down, ("fault.*",)),
            await add_hook(aconn, steady, ("fault.b",)),
        ]
        async with serve_app(fast_settings(settings)) as app:
            clients = [ResumingClient("ws", [app.ws_url], drop_every=97)]
            async with running_clients(clients):
                await wait_for(lambda: connected(clients), what="ws connected")
                writer = Writer(db_url, ledger, total=400, rate=200)
                async with writing(writer):
                    await wait_for(lambda: len(down.requests) >= 40, timeout=20, what="traffic")
                    await down.close()  # nothing listens on the port: connection refused
                    mark = writer.written
                    await wait_for(
                        lambda: writer.written >= mark + 150, timeout=20, what="writes in outage"
                    )
                    await down.start()  # the same port again
                verdict = await settle(db_url, ledger, hooks, clients, timeout=30)
    outcomes = await attempt_outcomes(aconn)
    assert outcomes.get("retry", 0) > 0, outcomes  # the outage did fail attempts
    assert verdict.delivered == verdict.pairs, verdict.summary()  # and all came through


async def test_receiver_dripping_a_slow_body(
    settings: Any, db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    ledger = Ledger()
    dripped = 0

    def handler(_req: Request) -> Drip | Reply:
        # Every third of the first 90 requests: 200, then a body slower than
        # the timeout (0.5 s) that never ends.
        nonlocal dripped
        if dripped < 30 and len(slow.requests) % 3 == 0:
            dripped += 1
            return Drip(chunk=b"x" * 8, every=0.05)
        return Reply()

    async with running(handler) as slow, running() as steady:
        hooks = [
            await add_hook(aconn, slow, ("fault.*",)),
            await add_hook(aconn, steady, ("fault.*",)),
        ]
        async with serve_app(fast_settings(settings)) as app:
            clients = [ResumingClient("ws", [app.ws_url])]
            async with running_clients(clients):
                await wait_for(lambda: connected(clients), what="ws connected")
                writer = Writer(db_url, ledger, total=300, rate=200)
                async with writing(writer):
                    pass
                verdict = await settle(db_url, ledger, hooks, clients, timeout=30)
    assert dripped == 30
    # The status line arrived, so a dripped answer is a success; the endless
    # body cost each of those attempts no more than the attempt deadline.
    assert verdict.delivered == verdict.pairs, verdict.summary()
    cur = await aconn.execute(
        "SELECT count(*), max(duration_ms) FROM outbox.delivery_attempts WHERE duration_ms > 400"
    )
    row = await cur.fetchone()
    assert row is not None and row[0] >= 30 and row[1] < 1500, row
