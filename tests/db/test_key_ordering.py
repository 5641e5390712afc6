"""Per-key order (webhook ``ordering: key``): the dispatcher's queues, the
worker, lease expiry and long queues, against real Postgres and a real
receiver on loopback. The dispatcher's transaction runs by hand
(``dispatch_all``); the worker runs in-process. Multi-process and kill -9
cases: tests/e2e/test_key_ordering_serve.py and tests/faults/.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import psycopg

from outbox.relay.config import parse_schedule
from outbox.relay.delivery import ops
from outbox.relay.delivery import store as delivery_db
from outbox.relay.delivery.retry import AttemptResult
from outbox.relay.delivery.store import Outcome
from outbox.sqlfiles import query
from tests.support.delivery import attempts, create_webhook, fast, worker
from tests.support.ordering import (
    arrivals,
    dispatch_all,
    interleaved,
    order_violations,
    publish_keyed,
    queue_state,
    seen,
)
from tests.support.receivers import Action, Reply, Request, running
from tests.support.waiting import wait_for

Conn = psycopg.AsyncConnection[Any]
KEYS = ["k0", "k1", "k2", "k3", "k4"]


def failing(target: tuple[str | None, int], times: int) -> Any:
    """A handler answering 500 to the first ``times`` requests for ``target``."""
    left = times

    def handler(req: Request) -> Action:
        nonlocal left
        if seen(req) == target and left > 0:
            left -= 1
            return Reply(500)
        return Reply()

    return handler


async def count(conn: Conn, webhook_id: int, status: str) -> int:
    cur = await conn.execute(
        "SELECT count(*) FROM outbox.deliveries WHERE webhook_id = %s AND status = %s",
        (webhook_id, status),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def delivery_of(conn: Conn, webhook_id: int, key: str | None, seq: int) -> int:
    cur = await conn.execute(
        "SELECT d.id FROM outbox.deliveries d JOIN outbox.events e ON e.id = d.event_id"
        " WHERE d.webhook_id = %s AND e.key IS NOT DISTINCT FROM %s"
        " AND (e.payload ->> 'seq')::int = %s",
        (webhook_id, key, seq),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_dispatch_queues_keyed_deliveries_behind_one_head_per_key(
    aconn: Conn, db_url: str
) -> None:
    ordered = await create_webhook(aconn, "http://127.0.0.1:9/", ordering="key")
    plain = await create_webhook(aconn, "http://127.0.0.1:9/", name="plain")
    await publish_keyed(aconn, [*interleaved(["a", "b"], 3), (None, 0), (None, 1)])
    assert await dispatch_all(db_url) == 16
    assert await queue_state(aconn, ordered) == {"a": (1, 2), "b": (1, 2)}
    assert await queue_state(aconn, plain) == {}  # unordered: no key, all due
    cur = await aconn.execute(
        "SELECT e.key, (e.payload ->> 'seq')::int, d.due_at < 'infinity'"
        " FROM outbox.deliveries d JOIN outbox.events e ON e.id = d.event_id"
        " WHERE d.webhook_id = %s ORDER BY d.id",
        (ordered,),
    )
    rows = await cur.fetchall()
    # The heads are each key's first event; keyless events are due at once.
    assert [r for r in rows if r[2]] == [
        ("a", 0, True),
        ("b", 0, True),
        (None, 0, True),
        (None, 1, True),
    ]
    # A later batch for a key with a head waits behind it.
    await publish_keyed(aconn, [("a", 3), ("c", 0)])
    await dispatch_all(db_url)
    assert await queue_state(aconn, ordered) == {"a": (1, 3), "b": (1, 2), "c": (1, 0)}


async def test_interleaved_keys_one_head_fails_twice(aconn: Conn, db_url: str) -> None:
    """Five keys interleaved; k2's first event fails twice: k2 holds its order
    (nothing of k2 is attempted before its head succeeded), the other keys
    finish without waiting for it, and waiting deliveries are never attempted."""
    per_key = 20
    settings = fast(db_url, retry_schedule=parse_schedule("500ms,2s,2s"))
    async with running(failing(("k2", 0), 2)) as rx:
        wid = await create_webhook(aconn, rx.url, ordering="key")
        await publish_keyed(aconn, [*interleaved(KEYS, per_key), (None, 0), (None, 1)])
        total = await dispatch_all(db_url)
        assert total == 5 * per_key + 2
        async with worker(settings) as w:
            w.wake()
            await wait_for(lambda: count(aconn, wid, "success"), timeout=60, what="a first success")
            await wait_for(
                lambda: _all(aconn, wid, total), timeout=60, what="every delivery success"
            )
    assert order_violations(rx.requests) == []
    got = arrivals(rx.requests)
    assert got["k2"] == [0, 0, 0, *range(1, per_key)]
    for k in KEYS:
        if k != "k2":
            assert got[k] == list(range(per_key))
    assert sorted(got[None]) == [0, 1]
    # The others did not wait: all of them were in before k2's head succeeded.
    k2_head_ok = [r.at for r in rx.requests if seen(r) == ("k2", 0)][-1]
    others_done = max(r.at for r in rx.requests if seen(r)[0] not in ("k2", None))
    assert others_done < k2_head_ok
    # k2's later events: first requested after its head's success, one attempt each.
    assert min(r.at for r in rx.requests if seen(r)[0] == "k2" and seen(r)[1] > 0) > k2_head_ok
    head = await delivery_of(aconn, wid, "k2", 0)
    assert [a["outcome"] for a in await attempts(aconn, head)] == ["retry", "retry", "success"]
    for seq in range(1, per_key):
        assert len(await attempts(aconn, await delivery_of(aconn, wid, "k2", seq))) == 1


async def _all(conn: Conn, webhook_id: int, n: int) -> bool:
    return await count(conn, webhook_id, "success") >= n


async def test_a_head_that_ends_failed_lets_the_next_one_go(aconn: Conn, db_url: str) -> None:
    settings = fast(db_url, retry_schedule=parse_schedule("50ms,50ms"))
    async with running(failing(("a", 0), 3)) as rx:
        wid = await create_webhook(aconn, rx.url, ordering="key")
        ids = await publish_keyed(aconn, interleaved(["a"], 4))
        await dispatch_all(db_url)
        async with worker(settings) as w:
            w.wake()
            await wait_for(lambda: _all(aconn, wid, 3), timeout=30, what="a1..a3 success")
    assert arrivals(rx.requests)["a"] == [0, 0, 0, 1, 2, 3]
    head = await delivery_of(aconn, wid, "a", 0)
    assert await count(aconn, wid, "failed") == 1
    cur = await aconn.execute(
        "SELECT payload FROM outbox.events WHERE event_type = 'webhook.delivery_failed'"
    )
    [(payload,)] = await cur.fetchall()
    assert payload["delivery_id"] == head and payload["event_id"] == ids[0]
    assert payload["key"] == "a" and payload["skipped"] is True


async def test_lease_expiry_of_the_head_holds_the_key_then_resends_it(
    aconn: Conn, db_url: str
) -> None:
    """A holder that claimed the heads and went silent (crashed, partitioned):
    nothing behind them is claimable while its lease lasts; after it, another
    worker sends the head again and the key goes on in order; the silent
    holder's late record is fenced out."""
    async with running() as rx:
        wid = await create_webhook(aconn, rx.url, ordering="key")
        await publish_keyed(aconn, interleaved(["a", "b"], 5))
        await dispatch_all(db_url)
        lease = timedelta(seconds=2)
        claimed_at = time.monotonic()
        ghost = await delivery_db.claim(aconn, worker="ghost", limit=100, lease=lease, skip=[])
        assert sorted(seen_job(j) for j in ghost) == [("a", 0), ("b", 0)]
        # Nothing else is claimable: the heads are held, the rest waits.
        assert await delivery_db.claim(aconn, worker="other", limit=100, lease=lease, skip=[]) == []
        async with worker(fast(db_url)) as w:
            w.wake()
            await wait_for(lambda: _all(aconn, wid, 10), timeout=30, what="all delivered")
        # The ghost's record (a success it never had) is not taken.
        late = [
            Outcome(
                j, AttemptResult(attempt=1, started_at=0.0, duration=0.0, status=200), "success"
            )
            for j in ghost
        ]
        done = await delivery_db.flush(aconn, late, [], disable_after=timedelta(days=5))
        assert done.recorded == 0 and done.promoted == 0
    got = arrivals(rx.requests)
    assert got == {"a": list(range(5)), "b": list(range(5))}
    # The heads were sent only once the ghost's lease had run out.
    assert min(r.at for r in rx.requests) - claimed_at >= lease.total_seconds() - 0.5
    assert await queue_state(aconn, wid) == {}


def seen_job(job: delivery_db.Job) -> tuple[str | None, int]:
    return job.key, int(job.payload["seq"])


async def test_a_key_with_10000_queued_costs_the_claim_nothing(aconn: Conn, db_url: str) -> None:
    """10,000 deliveries queued behind one head: the claim reads the heads
    only (the waiting rows are past the end of its index range), the other
    key drains without waiting, and the long key goes in order."""
    async with running() as rx:
        wid = await create_webhook(aconn, rx.url, ordering="key")
        await publish_keyed(aconn, [("big", n) for n in range(10_000)])
        await publish_keyed(aconn, [("small", n) for n in range(50)])
        assert await dispatch_all(db_url) == 10_050
        assert await queue_state(aconn, wid) == {"big": (1, 9_999), "small": (1, 49)}
        plan = await _claim_plan(aconn)
        assert plan["rows"] <= 2, plan  # the two heads, not 10,000 waiting rows
        assert plan["buffers"] <= 10, plan  # a few index and heap pages
        async with worker(fast(db_url)) as w:
            w.wake()
            await wait_for(
                lambda: _delivered(aconn, wid, "small", 50), timeout=60, what="small drained"
            )
            await wait_for(
                lambda: _delivered(aconn, wid, "big", 200), timeout=60, what="200 of big"
            )
        got = arrivals(rx.requests)
        assert got["small"] == list(range(50))
        assert got["big"] == list(range(len(got["big"])))
        # Waiting rows were never attempted.
        cur = await aconn.execute(
            "SELECT count(*) FROM outbox.delivery_attempts a JOIN outbox.deliveries d"
            " ON d.id = a.delivery_id WHERE d.due_at = 'infinity'"
        )
        assert (await cur.fetchone()) == (0,)


async def _delivered(conn: Conn, webhook_id: int, key: str, n: int) -> bool:
    cur = await conn.execute(
        "SELECT count(*) FROM outbox.deliveries d JOIN outbox.events e ON e.id = d.event_id"
        " WHERE d.webhook_id = %s AND e.key = %s AND d.status = 'success'",
        (webhook_id, key),
    )
    row = await cur.fetchone()
    return row is not None and row[0] >= n


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _walk(child))]


async def _claim_plan(conn: Conn) -> dict[str, int]:
    """Rows the claim's due-index scan returned and buffers it touched (rolled back)."""
    sql = query("delivery_claim", "delivery.sql")
    params = {"worker": "plan", "limit": 100, "lease": timedelta(seconds=30), "skip": []}
    async with conn.transaction(force_rollback=True):
        cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        row = await cur.fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    nodes = _walk(plan[0]["Plan"])
    scans = [n for n in nodes if n.get("Index Name") == "deliveries_due_idx"]
    assert scans, [n.get("Node Type") for n in nodes]
    return {
        "rows": max(int(n["Actual Rows"]) for n in scans),
        "buffers": max(
            int(n.get("Shared Hit Blocks", 0)) + int(n.get("Shared Read Blocks", 0)) for n in scans
        ),
    }


# -- the operator's verbs -----------------------------------------------------------


async def test_retry_and_skip_on_key_queues(aconn: Conn, db_url: str) -> None:
    # No worker runs: the state is what the verbs make it.
    wid = await create_webhook(aconn, "http://127.0.0.1:9/", ordering="key")
    await publish_keyed(aconn, interleaved(["a"], 3))
    await dispatch_all(db_url)
    a0, a1, a2 = [await delivery_of(aconn, wid, "a", n) for n in range(3)]

    # A waiting delivery keeps its place.
    try:
        await ops.retry_delivery(aconn, wid, a1)
    except ops.Refused as exc:
        assert f"behind delivery {a0}" in str(exc)
    else:
        raise AssertionError("retry of a waiting delivery was not refused")
    # The head: due now (it already is), stays the head.
    row = await ops.retry_delivery(aconn, wid, a0)
    assert row is not None and row["status"] == "pending" and not row["waiting"]

    # Skipping the head ends it failed with the reason and promotes the next.
    row = await ops.skip_delivery(aconn, wid, a0, "poison message")
    assert row is not None and row["status"] == "failed"
    assert row["error_message"] == "skipped by an operator: poison message"
    assert await queue_state(aconn, wid) == {"a": (1, 1)}
    cur = await aconn.execute(
        "SELECT due_at < 'infinity' FROM outbox.deliveries WHERE id = %s", (a1,)
    )
    assert (await cur.fetchone()) == (True,)
    try:
        await ops.skip_delivery(aconn, wid, a0, None)
    except ops.Refused as exc:
        assert "already failed" in str(exc)
    else:
        raise AssertionError("skip of a finished delivery was not refused")
    assert await ops.skip_delivery(aconn, wid, 10**9, None) is None

    # Retrying the skipped one: it joins the queue again, waiting behind a1
    # (a1 is the head), and goes before a2 (its id is older).
    row = await ops.retry_delivery(aconn, wid, a0)
    assert row is not None and row["status"] == "pending" and row["waiting"]
    assert await queue_state(aconn, wid) == {"a": (1, 2)}
    await ops.skip_delivery(aconn, wid, a1, None)
    cur = await aconn.execute(
        "SELECT id FROM outbox.deliveries WHERE webhook_id = %s AND status = 'pending'"
        " AND due_at < 'infinity'",
        (wid,),
    )
    assert await cur.fetchall() == [(a0,)]  # a2 still waits, behind it
    assert await queue_state(aconn, wid) == {"a": (1, 1)}
    assert a2 > a0


async def test_ordering_none_releases_what_waits(aconn: Conn, db_url: str) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/", ordering="key")
    await publish_keyed(aconn, interleaved(["a", "b"], 3))
    await dispatch_all(db_url)
    async with aconn.transaction():
        await aconn.execute("UPDATE outbox.webhooks SET ordering = 'none' WHERE id = %s", (wid,))
        assert await ops.unorder_waiting(aconn, wid) == 4
    assert await queue_state(aconn, wid) == {"a": (1, 0), "b": (1, 0)}
    cur = await aconn.execute(
        "SELECT count(*) FROM outbox.deliveries WHERE webhook_id = %s AND due_at <= now()",
        (wid,),
    )
    assert (await cur.fetchone()) == (6,)
