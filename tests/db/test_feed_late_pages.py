"""Late rows are paged (issue 16 item 4): a transaction that commits after a
later one is read ``limit`` rows at a time, and the cursors between its pages
point inside it. No skip, no repeat within a pass, bounded batches."""

from __future__ import annotations

import random
from typing import Any

import psycopg

from outbox.cursor import Cursor
from outbox.relay.feed import Event, head, read_batch


async def drain(
    aconn: psycopg.AsyncConnection[Any], cursor: Cursor, limit: int
) -> tuple[list[Event], Cursor, list[int]]:
    out: list[Event] = []
    sizes: list[int] = []
    for _ in range(10_000):
        batch = await read_batch(aconn, cursor, limit)
        cursor = batch.end
        if not batch.events:
            return out, cursor, sizes
        sizes.append(len(batch.events))
        out.extend(batch.events)
    raise AssertionError("the feed did not come to rest")


async def _publish(conn: psycopg.AsyncConnection[Any], kind: str, n: int) -> None:
    await conn.execute(
        "SELECT outbox.publish(%s, jsonb_build_object('i', i)) FROM generate_series(0, %s) i",
        (kind, n - 1),
    )


async def test_late_transaction_is_read_a_page_at_a_time(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    big = await psycopg.AsyncConnection.connect(db_url)
    try:
        cursor = await head(aconn)
        await _publish(big, "t.big", 45)  # smaller ids, commits last
        await aconn.execute("SELECT outbox.publish('t.small', '{}')")
        got, cursor, _ = await drain(aconn, cursor, 10)
        assert [e.type for e in got] == ["t.small"]
        await big.commit()
        got, cursor, sizes = await drain(aconn, cursor, 10)
        assert [e.payload["i"] for e in got] == list(range(45))
        assert max(sizes) <= 10 and len(sizes) == 5
        # Every cursor on the way resumes with no gap, and repeats at most
        # the part of the transaction in its own batch.
        ids = [e.id for e in got]
        for k, ev in enumerate(got):
            rest, _, _ = await drain(aconn, Cursor.decode(ev.cursor), 10)
            rest_ids = [e.id for e in rest]
            assert set(ids[k + 1 :]) <= set(rest_ids)
            assert len(rest_ids) <= len(ids) - (k + 1) + 10
        assert (await drain(aconn, cursor, 10))[0] == []
    finally:
        await big.close()


async def test_cursor_inside_a_transaction_round_trips() -> None:
    c = Cursor(100, 50, (7, 9), ((9, 42),))
    back = Cursor.decode(c.encode())
    assert back == c
    assert back.position(9) == 42 and back.position(7) == 0
    assert Cursor.decode(Cursor(5, 6, (3,)).encode()) == Cursor(5, 6, (3,))


async def test_interleaved_late_transactions_random_commit_order(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    rng = random.Random(16)
    for _round in range(3):
        writers = [await psycopg.AsyncConnection.connect(db_url) for _ in range(4)]
        try:
            cursor = await head(aconn)
            await aconn.execute("SELECT outbox.publish('t.early', '{}')")
            got, cursor, _ = await drain(aconn, cursor, 7)
            seen = [e.id for e in got]
            expected: dict[int, list[int]] = {}
            for _ in range(40):
                w = rng.randrange(len(writers))
                cur = await writers[w].execute(
                    "SELECT outbox.publish('t.w', jsonb_build_object('w', %s::int))", (w,)
                )
                row = await cur.fetchone()
                assert row is not None
                expected.setdefault(w, []).append(int(row[0]))
                if rng.random() < 0.2:  # a small transaction that commits early
                    await aconn.execute("SELECT outbox.publish('t.mid', '{}')")
                    more, cursor, sizes = await drain(aconn, cursor, 7)
                    seen += [e.id for e in more]
                    assert all(s <= 2 * 7 for s in sizes)  # a page and late rows
            order = list(range(len(writers)))
            rng.shuffle(order)
            rolled = order[0]
            await writers[rolled].rollback()
            for w in order[1:]:
                await writers[w].commit()
                more, cursor, sizes = await drain(aconn, cursor, 7)
                assert all(s <= 2 * 7 for s in sizes)  # a page and late rows
                seen += [e.id for e in more]
                # One transaction's events in id order.
                mine = [e.id for e in more if e.type == "t.w" and e.payload["w"] == w]
                assert mine == sorted(mine)
            assert len(seen) == len(set(seen)), "an event came twice in one pass"
            want = {i for w, ids in expected.items() if w != rolled for i in ids}
            assert want <= set(seen), "an event was skipped"
            assert not set(expected.get(rolled, [])) & set(seen)
        finally:
            for w in writers:
                await w.close()
