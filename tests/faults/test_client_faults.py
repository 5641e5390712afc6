"""Consumers under strain: a WebSocket client that stops reading while
others keep hanging up and resuming, and 1 MB payloads end to end (webhook
body, signature, WebSocket frame). The app runs in-process; the oracle
judges every event for the receivers and the resuming clients."""

from __future__ import annotations

import random
import string
from datetime import timedelta
from typing import Any

import httpx
import psycopg
from websockets.asyncio.client import connect

from tests.faults.harness import Ledger, Writer, add_hook, fast_settings, settle, writing
from tests.faults.wsclients import ResumingClient, connected, running_clients
from tests.support.receivers import running
from tests.support.servers import serve_app
from tests.support.waiting import wait_for

AUTH = {"Authorization": "Bearer test-token"}


def padded(size: int) -> Any:
    # Random letters, so nothing along the way can make them cheap.
    rnd = random.Random(size)
    blob = "".join(rnd.choices(string.ascii_letters, k=size))
    return lambda seq: {"seq": seq, "blob": blob[seq % 97 :] + str(seq)}


async def dropped_clients(base_url: str) -> float:
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=5) as client:
        text = (await client.get("/metrics")).text
    lines = [ln for ln in text.splitlines() if ln.startswith("outbox_ws_clients_dropped_total")]
    return float(lines[0].split()[-1]) if lines else 0.0


async def test_stalled_websocket_client_while_others_resume(
    settings: Any, db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    ledger = Ledger()
    app_settings = fast_settings(settings, ws_max_queue=300, ws_max_queue_bytes=1024 * 1024)
    async with running() as rx:
        hooks = [await add_hook(aconn, rx, ("fault.*",))]
        async with serve_app(app_settings) as app:
            clients = [ResumingClient(f"c{i}", [app.ws_url], drop_every=200) for i in range(3)]
            # max_queue=1: the client library stops reading the socket after
            # one frame, so the server's sends back up: a consumer that hung.
            async with (
                connect(
                    f"{app.ws_url}?token=test-token", max_queue=1, max_size=None, close_timeout=1
                ) as stalled,
                running_clients(clients),
            ):
                await wait_for(lambda: connected(clients), what="ws connected")
                writer = Writer(db_url, ledger, total=1000, rate=400, payload=padded(8000))
                async with writing(writer):
                    pass
                verdict = await settle(db_url, ledger, hooks, clients, timeout=40)
                assert await wait_for(lambda: dropped_clients(app.base_url), timeout=15)
                assert stalled.close_code in (None, 1013)
    assert verdict.delivered == verdict.pairs, verdict.summary()
    assert all(c.connects >= 3 for c in clients)  # they did hang up and resume


async def test_one_megabyte_payloads_end_to_end(
    settings: Any, db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    ledger = Ledger()
    async with running() as rx, running() as rx2:
        hooks = [await add_hook(aconn, rx, ("fault.*",)), await add_hook(aconn, rx2, ("fault.b",))]
        # (A lease must exceed the webhook timeout: OUTBOX_LEASE is checked at start.)
        slow = fast_settings(settings, webhook_timeout=10.0, lease=timedelta(seconds=12))
        async with serve_app(slow) as app:
            clients = [ResumingClient(f"c{i}", [app.ws_url]) for i in range(2)]
            async with running_clients(clients):
                await wait_for(lambda: connected(clients), what="ws connected")
                writer = Writer(
                    db_url, ledger, total=10, per_tx=1, rollback_every=5, payload=padded(1 << 20)
                )
                async with writing(writer):
                    pass
                verdict = await settle(db_url, ledger, hooks, clients, timeout=60)
    assert verdict.committed == 8 and verdict.rolled_back == 2, verdict.summary()
    assert verdict.delivered == verdict.pairs == 12, verdict.summary()
    assert min(len(r.body) for r in rx.requests) > 1 << 20
