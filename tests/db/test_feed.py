"""relay/feed.py beyond its core property (tests/db/test_feed_core.py): where a
full page is cut, late transactions that go on past the page, very large
transactions, the ``more`` flag, lag, and non-autocommit connections."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from outbox.cursor import Cursor
from outbox.relay.feed import Event, head, measure_lag, read_batch


async def publish(conn: psycopg.AsyncConnection[Any], event_type: str) -> int:
    cur = await conn.execute("SELECT outbox.publish(%s, '{}')", (event_type,))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def drain(
    aconn: psycopg.AsyncConnection[Any], cursor: Cursor, limit: int
) -> tuple[list[list[Event]], Cursor]:
    batches: list[list[Event]] = []
    while True:
        batch = await read_batch(aconn, cursor, limit)
        cursor = batch.end
        if not batch.events:
            return batches, cursor
        batches.append(batch.events)


async def connect(db_url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(db_url)


async def test_cut_never_splits_a_transaction_that_ends_inside_the_page(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    t1, t2, t3 = await connect(db_url), await connect(db_url), await connect(db_url)
    try:
        start = await head(aconn)
        e1 = await publish(t1, "t.one")
        e2 = await publish(t2, "t.two")
        e3 = await publish(t3, "t.three")
        e4 = await publish(t2, "t.two")
        e5 = await publish(t3, "t.three")  # past a page of 4
        for t in (t1, t2, t3):
            await t.commit()
        # Page [e1 t1, e2 t2, e3 t3, e4 t2]: t3 goes on past the page, and t2
        # has a row after t3's first one, so only t1 can be kept whole.
        first = await read_batch(aconn, start, limit=4)
        assert [e.id for e in first.events] == [e1]
        assert first.more
        batches, _ = await drain(aconn, first.end, limit=4)
        assert [[e.id for e in b] for b in batches] == [[e2, e4, e3, e5]]
    finally:
        for t in (t1, t2, t3):
            await t.close()


async def test_late_transaction_going_past_the_page_is_held_back_whole(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    a, b = await connect(db_url), await connect(db_url)
    try:
        start = await head(aconn)
        a1 = await publish(a, "t.a")  # A draws first and stays open
        await publish(b, "t.b")
        await b.commit()
        batch = await read_batch(aconn, start)
        assert [e.type for e in batch.events] == ["t.b"]
        cursor = batch.end
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        c_ids = [await publish(aconn, "t.c") for _ in range(3)]
        a2 = await publish(a, "t.a")
        c_ids += [await publish(aconn, "t.c") for _ in range(3)]
        await a.commit()
        # Page of 3 = the first three C events; A (late: a1 is below the
        # cursor) continues past the page with a2, so a1 waits for it.
        batch = await read_batch(aconn, cursor, limit=3)
        assert [e.id for e in batch.events] == c_ids[:3]
        batches, _ = await drain(aconn, batch.end, limit=3)
        # A comes out whole, in one batch, ordered by its last event (a2).
        assert [e.id for e in batches[0]] == [a1, a2, *c_ids[3:5]]
        assert [e.id for b in batches[1:] for e in b] == [c_ids[5]]
    finally:
        await a.close()
        await b.close()


async def test_a_transaction_much_larger_than_a_page_streams_in_id_order(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    conn.execute(
        "INSERT INTO outbox.events (event_type, payload) "
        "SELECT 'bulk.row', jsonb_build_object('i', g) FROM generate_series(1, 20000) g"
    )
    conn.execute("ANALYZE outbox.events")
    began = time.monotonic()
    batches, _ = await drain(aconn, Cursor(0), limit=500)
    elapsed = time.monotonic() - began
    got = [e.payload["i"] for b in batches for e in b]
    assert got == list(range(1, 20001))
    assert all(len(b) == 500 for b in batches)
    # Each page costs one probe of (xid, id), not a walk over the transaction's
    # rows: 40 pages of a 20,000-row transaction take well under a second.
    assert elapsed < 5, elapsed


async def test_more_is_set_only_for_a_full_page(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    for _ in range(5):
        conn.execute("SELECT outbox.publish('t.x', '{}')")
    full = await read_batch(aconn, Cursor(0), limit=5)
    assert len(full.events) == 5 and full.more
    rest = await read_batch(aconn, full.end, limit=5)
    assert rest.events == [] and not rest.more


async def test_lag_counts_committed_unread_events_including_late_ones(
    db_url: str, conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    late = await connect(db_url)
    try:
        cursor = await head(aconn)
        await publish(late, "t.late")  # drawn first, committed last
        for _ in range(3):
            conn.execute("SELECT outbox.publish('t.x', '{}')")
        lag = await measure_lag(aconn, cursor)
        assert lag.events == 3
        batch = await read_batch(aconn, cursor)
        assert (await measure_lag(aconn, batch.end)).events == 0
        await late.commit()
        lag = await measure_lag(aconn, batch.end)
        assert lag.events == 1
        assert lag.oldest_seconds >= 0
        assert lag.as_dict()["capped"] is False
    finally:
        await late.close()


async def test_read_on_a_non_autocommit_connection_leaves_it_idle(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("SELECT outbox.publish('t.x', '{}')")
    c = await connect(db_url)
    try:
        batch = await read_batch(c, Cursor(0))
        assert [e.type for e in batch.events] == ["t.x"]
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        cursor = await head(c)
        assert cursor.after == batch.end.after
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        await c.close()
