"""The feed reader (relay/feed.py) directly against Postgres: never skips,
never repeats within a pass, never stalls on unrelated open transactions."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import psycopg

from outbox.cursor import Cursor
from outbox.relay.feed import Event, head, read_batch


async def drain(
    aconn: psycopg.AsyncConnection[Any], cursor: Cursor, limit: int = 1000
) -> tuple[list[Event], Cursor]:
    out: list[Event] = []
    while True:
        batch = await read_batch(aconn, cursor, limit)
        cursor = batch.end
        if not batch.events:
            return out, cursor
        out.extend(batch.events)


async def test_out_of_order_commit_is_not_skipped(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    a = await psycopg.AsyncConnection.connect(db_url)
    b = await psycopg.AsyncConnection.connect(db_url)
    try:
        cursor = await head(aconn)
        await a.execute("SELECT outbox.publish('t.a', '{}')")  # A draws the smaller id, waits
        await b.execute("SELECT outbox.publish('t.b', '{}')")
        await b.commit()
        got, cursor = await drain(aconn, cursor)
        assert [e.type for e in got] == ["t.b"]
        await a.commit()
        got2, cursor = await drain(aconn, cursor)
        assert [e.type for e in got2] == ["t.a"]
        assert got2[0].id < got[0].id
        got3, _ = await drain(aconn, cursor)
        assert got3 == []
    finally:
        await a.close()
        await b.close()


async def test_rolled_back_event_never_emitted(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    a = await psycopg.AsyncConnection.connect(db_url)
    try:
        cursor = await head(aconn)
        await a.execute("SELECT outbox.publish('t.rolled', '{}')")
        await aconn.execute("SELECT outbox.publish('t.kept', '{}')")
        got, cursor = await drain(aconn, cursor)
        await a.rollback()
        got2, _ = await drain(aconn, cursor)
        assert [e.type for e in got + got2] == ["t.kept"]
    finally:
        await a.close()


async def test_idle_transaction_with_xid_does_not_stall(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    idle = await psycopg.AsyncConnection.connect(db_url)
    try:
        await idle.execute("SELECT pg_current_xact_id()")  # holds an xid, writes nothing
        cursor = await head(aconn)
        for i in range(3):
            await aconn.execute("SELECT outbox.publish('t.x', %s::jsonb)", (f'{{"i": {i}}}',))
            batch = await read_batch(aconn, cursor)
            assert [e.payload["i"] for e in batch.events] == [i]  # at once, every time
            cursor = batch.end
    finally:
        await idle.rollback()
        await idle.close()


async def test_transaction_events_come_out_together_in_causal_order(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    t1 = await psycopg.AsyncConnection.connect(db_url)
    t2 = await psycopg.AsyncConnection.connect(db_url)
    try:
        cursor = await head(aconn)
        # Interleaved ids: t1 gets 1,3 and t2 gets 2,4.
        await t1.execute("SELECT outbox.publish('t.one', '{}')")
        await t2.execute("SELECT outbox.publish('t.two', '{}')")
        await t1.execute("SELECT outbox.publish('t.one', '{}')")
        await t2.execute("SELECT outbox.publish('t.two', '{}')")
        await t2.commit()
        await t1.commit()
        # A later transaction caused by both.
        await aconn.execute("SELECT outbox.publish('t.after', '{}')")
        got, _ = await drain(aconn, cursor)
        assert [e.type for e in got] == ["t.one", "t.one", "t.two", "t.two", "t.after"]
    finally:
        await t1.close()
        await t2.close()


async def test_full_page_is_cut_at_transaction_boundary(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    for _ in range(3):
        conn.execute("SELECT outbox.publish('t.single', '{}')")
    with conn.transaction():
        for _ in range(4):
            conn.execute("SELECT outbox.publish('t.multi', '{}')")
    batch = await read_batch(aconn, Cursor(0), limit=5)
    # The 4-event transaction does not fit after 3 singles: held for the next batch.
    assert [e.type for e in batch.events] == ["t.single"] * 3
    batch2 = await read_batch(aconn, batch.end, limit=5)
    assert [e.type for e in batch2.events] == ["t.multi"] * 4


async def test_transaction_larger_than_page_still_progresses(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    with conn.transaction():
        for i in range(25):
            conn.execute("SELECT outbox.publish('t.big', %s::jsonb)", (f'{{"i": {i}}}',))
    got, _ = await drain(aconn, Cursor(0), limit=10)
    assert [e.payload["i"] for e in got] == list(range(25))


async def test_per_event_cursor_resumes_without_gap(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    for i in range(10):
        conn.execute("SELECT outbox.publish('t.x', %s::jsonb)", (f'{{"i": {i}}}',))
    got, _ = await drain(aconn, Cursor(0), limit=4)
    ids = [e.id for e in got]
    for k, ev in enumerate(got):
        rest, _ = await drain(aconn, Cursor.decode(ev.cursor), limit=4)
        # Resuming from an event's cursor may repeat, never skip.
        assert set(ids[k + 1 :]) <= {e.id for e in rest}


async def test_frame_is_the_contract_message(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    import json

    conn.execute("""SELECT outbox.publish('user.created', '{"user_id": 1, "name": "Ан"}')""")
    batch = await read_batch(aconn, Cursor(0))
    msg = json.loads(batch.events[0].frame)
    assert msg["type"] == "user.created"
    assert msg["payload"] == {"user_id": 1, "name": "Ан"}
    assert msg["id"] == batch.events[0].id
    assert msg["cursor"] == batch.end.encode()
    assert msg["timestamp"].endswith("+00:00") or "+" in msg["timestamp"]


def test_soak_emitted_equals_committed(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """Writers with random pre-commit delays and ~10% rollbacks, while a
    reader drains concurrently: every committed event exactly once, same-row
    causal order kept, nothing rolled back."""
    n_writers, per_writer = 6, 250
    committed: set[int] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []
    conn.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
    conn.execute("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g")

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with psycopg.connect(db_url) as c:
                for _ in range(per_writer):
                    row = rnd.randint(1, 5)
                    ids = []
                    rolled = False
                    with c.transaction():
                        # The counter update orders same-row transactions.
                        r = c.execute(
                            "UPDATE counters SET n = n + 1 WHERE id = %s RETURNING n", (row,)
                        ).fetchone()
                        assert r is not None
                        for _ in range(rnd.randint(1, 3)):
                            got = c.execute(
                                "SELECT outbox.publish('soak.tick', jsonb_build_object("
                                "'row', %s::int, 'n', %s::int))",
                                (row, r[0]),
                            ).fetchone()
                            assert got is not None
                            ids.append(got[0])
                        if rnd.random() < 0.3:
                            c.execute("SELECT pg_sleep(%s)", (rnd.random() * 0.003,))
                        if rnd.random() < 0.1:
                            rolled = True
                            raise psycopg.Rollback()  # swallowed by transaction()
                    if not rolled:
                        with lock:
                            committed.update(ids)
        except BaseException as exc:
            errors.append(exc)

    emitted: list[Event] = []
    stop = threading.Event()

    async def reader() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as a:
            cursor = Cursor(0)
            while True:
                finished = stop.is_set()
                got, cursor = await drain(a, cursor, limit=200)
                emitted.extend(got)
                if finished:
                    return
                await asyncio.sleep(0.002)

    rt = threading.Thread(target=lambda: asyncio.run(reader()))
    rt.start()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    rt.join(timeout=60)
    assert not errors, errors
    ids = [e.id for e in emitted]
    assert len(ids) == len(set(ids)), "an event was emitted twice in one pass"
    in_db = {r[0] for r in conn.execute("SELECT id FROM outbox.events")}
    assert set(ids) == in_db
    assert in_db == committed
    # Same-row causal order: per counter row, n never goes down in emit order.
    last: dict[int, int] = {}
    for e in emitted:
        row, n = e.payload["row"], e.payload["n"]
        assert n >= last.get(row, 0), f"row {row}: n={n} emitted after {last[row]}"
        last[row] = n


async def test_per_event_cursor_repeats_at_most_its_own_transaction(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    """Interleaved multi-event transactions and a late commit: resuming from
    any event's cursor never skips a later event and never repeats an
    earlier transaction; from the last event of a transaction, not even it.
    (A transaction too large for one page is split across batches; resuming
    inside it may repeat its earlier part: see relay/feed.py.)"""
    start = await head(aconn)
    late = await psycopg.AsyncConnection.connect(db_url)
    t1 = await psycopg.AsyncConnection.connect(db_url)
    t2 = await psycopg.AsyncConnection.connect(db_url)
    try:
        await late.execute("SELECT outbox.publish('t.late', '{}')")  # smallest id, commits last
        for _ in range(3):
            await t1.execute("SELECT outbox.publish('t.one', '{}')")
            await t2.execute("SELECT outbox.publish('t.two', '{}')")
            await aconn.execute("SELECT outbox.publish('t.solo', '{}')")
        await t2.commit()
        await t1.commit()
        first, cursor = await drain(aconn, start, limit=50)
        await late.commit()
        second, _ = await drain(aconn, cursor, limit=50)
        got = first + second
        assert [e.type for e in got].count("t.late") == 1
        for k, ev in enumerate(got):
            rest, _ = await drain(aconn, Cursor.decode(ev.cursor), limit=50)
            rest_ids = {e.id for e in rest}
            assert {e.id for e in got[k + 1 :]} <= rest_ids, f"gap after event {k}"
            earlier_txns = {e.id for e in got[:k] if e.xid != ev.xid}
            assert not (earlier_txns & rest_ids), f"event {k} repeats an earlier transaction"
            last_of_txn = k + 1 == len(got) or got[k + 1].xid != ev.xid
            if last_of_txn:
                assert ev.id not in rest_ids
    finally:
        for c in (late, t1, t2):
            await c.close()
