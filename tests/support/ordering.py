"""Per-key order tests: keyed events, the dispatcher run by hand, and the oracle.

Events carry ``{"key": K, "seq": n}`` payloads (n counts per key from 0 in
publish order). The oracle reads what a receiver got: for one key the
sequence of arrivals must never go back (a repeat of the same event is
at-least-once and allowed; an earlier event after a later one is a
violation), and a delivery n+1 must not arrive before n's successful attempt.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import psycopg

from outbox.relay.dispatcher import dispatch, load_cursor
from outbox.relay.feed import read_batch
from tests.support.receivers import Request

Conn = psycopg.AsyncConnection[Any]


async def publish_keyed(
    conn: Conn, items: Iterable[tuple[str | None, int]], event_type: str = "order.changed"
) -> list[int]:
    """Publish ``(key, seq)`` events in one transaction, in order; their ids."""
    keys, seqs = zip(*items, strict=True)
    cur = await conn.execute(
        "SELECT outbox.publish(%s, jsonb_build_object('key', k, 'seq', s), key => k)"
        " FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS i (k, s, o) ORDER BY o",
        (event_type, list(keys), list(seqs)),
    )
    return [int(r[0]) for r in await cur.fetchall()]


def interleaved(keys: list[str], per_key: int) -> list[tuple[str | None, int]]:
    """Round-robin over ``keys``: (k0, 0), (k1, 0), ..., (k0, 1), ..."""
    return [(k, n) for n in range(per_key) for k in keys]


async def dispatch_all(db_url: str) -> int:
    """Run the dispatcher's transaction over every event not yet dispatched."""
    created = 0
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cursor, stored = await load_cursor(conn)
        while True:
            batch = await read_batch(conn, cursor, 1000)
            if batch.events:
                created += await dispatch(conn, batch, stored)
                stored = batch.end.encode()
            cursor = batch.end
            if not batch.more:
                return created


def seen(req: Request) -> tuple[str | None, int]:
    body = json.loads(req.body)
    data = body.get("data", body)
    return data["key"], int(data["seq"])


def arrivals(requests: list[Request]) -> dict[str | None, list[int]]:
    """Per key, the seq of every request in arrival order (repeats included)."""
    out: dict[str | None, list[int]] = defaultdict(list)
    for r in requests:
        key, seq = seen(r)
        out[key].append(seq)
    return dict(out)


def order_violations(requests: list[Request]) -> list[str]:
    """Keys whose arrivals went back (keyless events are not checked)."""
    bad = []
    for key, seqs in arrivals(requests).items():
        if key is None:
            continue
        for a, b in itertools.pairwise(seqs):
            if b < a:
                bad.append(f"key {key}: {b} arrived after {a} ({seqs[:50]}...)")
                break
    return bad


async def queue_state(conn: Conn, webhook_id: int) -> dict[str, Any]:
    """Per-key counts of heads and waiting deliveries for one webhook."""
    cur = await conn.execute(
        "SELECT key, count(*) FILTER (WHERE due_at < 'infinity'),"
        " count(*) FILTER (WHERE due_at = 'infinity')"
        " FROM outbox.deliveries WHERE webhook_id = %s AND status = 'pending'"
        " AND key IS NOT NULL GROUP BY key",
        (webhook_id,),
    )
    return {k: (int(h), int(w)) for k, h, w in await cur.fetchall()}


async def queue_keyed(
    conn: Conn, webhook_id: int, items: list[tuple[str, int]], event_type: str = "order.changed"
) -> None:
    """Events and their keyed deliveries to one webhook, queued as the
    dispatcher queues them (waiting, then the heads promoted), without a
    dispatcher: for a webhook that a running relay leaves alone (inactive)."""
    from outbox.relay.delivery import store as delivery_db

    async with conn.transaction():
        ids = await publish_keyed(conn, items, event_type)
        await delivery_db.lock_webhooks(conn, [webhook_id])
        await conn.execute(
            "INSERT INTO outbox.deliveries (webhook_id, event_id, event_type, key, due_at)"
            " SELECT %s, e.id, %s, k, 'infinity'"
            " FROM unnest(%s::bigint[], %s::text[]) WITH ORDINALITY AS e (id, k, o) ORDER BY o",
            (webhook_id, event_type, ids, [k for k, _ in items]),
        )
        await delivery_db.promote(conn, sorted({(webhook_id, k) for k, _ in items}))
