"""kill -9 of the ``outbox serve`` copy that holds the head of a key, with
its request in flight: nothing of that key is sent while the dead copy's
lease lasts, the other copy then sends the head again (same webhook-id) and
the key goes on in order, as do the other keys (whatever else the dead copy
held in flight is sent again after its lease too)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psycopg

from tests.support.delivery import create_webhook, delivery, succeeded
from tests.support.ordering import arrivals, interleaved, order_violations, publish_keyed, seen
from tests.support.receivers import Action, Hang, Reply, Request, running
from tests.support.relay import ServeProcess, serve_processes
from tests.support.waiting import wait_for

Conn = psycopg.AsyncConnection[Any]
LEASE = 2.0
SERVE_ENV = {
    "OUTBOX_LEASE": f"{LEASE:g}s",
    "OUTBOX_WEBHOOK_TIMEOUT": "1.5",
    "OUTBOX_RETRY_SCHEDULE": "100ms,200ms,400ms",
    "OUTBOX_POLL_INTERVAL": "200ms",
}
KEYS = ["x", "y", "z", "w"]
PER_KEY = 10


async def test_kill_9_of_the_heads_holder(aconn: Conn, db_url: str, tmp_path: Path) -> None:
    head_arrivals = 0

    def handler(req: Request) -> Action:
        nonlocal head_arrivals
        if seen(req) == ("x", 0):
            head_arrivals += 1
            if head_arrivals == 1:
                return Hang()  # held until its sender is dead
        return Reply()

    async with running(handler) as rx:
        wid = await create_webhook(aconn, rx.url, event_types=("order.*",), ordering="key")
        with serve_processes() as procs:
            procs += [ServeProcess(db_url, tmp_path / f"s{i}.log", env=SERVE_ENV) for i in (0, 1)]
            for p in procs:
                await p.wait_ready()
            ids = await publish_keyed(aconn, interleaved(KEYS, PER_KEY))
            await wait_for(lambda: head_arrivals >= 1, timeout=30, what="x0 in flight")
            cur = await aconn.execute(
                "SELECT id FROM outbox.deliveries WHERE webhook_id = %s AND event_id = %s",
                (wid, ids[0]),
            )
            row = await cur.fetchone()
            assert row is not None
            head = int(row[0])
            holder = str((await delivery(aconn, head))["locked_by"])
            [victim] = [p for p in procs if f":{p.proc.pid}:" in holder]
            [survivor] = [p for p in procs if p is not victim]
            victim.signal(signal.SIGKILL)
            assert await victim.wait() == -signal.SIGKILL
            # The other keys go on meanwhile; x waits for its head.
            others = len(KEYS[1:]) * PER_KEY
            await wait_for(lambda: succeeded(aconn, wid, others), timeout=60, what="y, z, w")
            await wait_for(
                lambda: succeeded(aconn, wid, len(KEYS) * PER_KEY), timeout=60, what="x too"
            )
            assert survivor.proc.poll() is None, survivor.log()
    assert order_violations(rx.requests) == []
    got = arrivals(rx.requests)
    assert got["x"] == [0, 0, *range(1, PER_KEY)]
    x0 = [r for r in rx.requests if seen(r) == ("x", 0)]
    assert x0[1].at - x0[0].at >= LEASE - 0.5  # not before the dead copy's lease ran out
    assert x0[0].headers["webhook-id"] == x0[1].headers["webhook-id"] == f"evt_{ids[0]}"
    for k in KEYS[1:]:
        assert sorted(set(got[k])) == list(range(PER_KEY))
