"""One feed read per process (issue 22 item 2): once the leader's dispatcher
has caught up from its stored cursor it joins the feed loop and reads no
more on its own; every event still gets its deliveries exactly once and the
hub every event exactly once."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg

from outbox.cursor import Cursor, meet, passed
from tests.support.relay import add_webhook, relay_settings, running_relay
from tests.support.waiting import wait_for


def test_meet_has_passed_what_both_have() -> None:
    rng = random.Random(22)
    for _ in range(2000):

        def cursor() -> Cursor:
            xids = sorted(rng.sample(range(1, 12), rng.randrange(0, 4)))
            done = tuple((x, rng.randrange(1, 30)) for x in xids if rng.random() < 0.4)
            return Cursor(rng.randrange(0, 30), rng.randrange(1, 14), tuple(xids), done)

        a, b = cursor(), cursor()
        m = meet(a, b)
        for event_id in range(1, 32):
            for xid in range(1, 15):
                both = passed(a, event_id, xid) and passed(b, event_id, xid)
                assert passed(m, event_id, xid) == both, (a, b, m, event_id, xid)


async def test_dispatcher_joins_the_feed_loop_and_stops_reading(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    hook = add_webhook(conn, ["*"])
    # A backlog from before the relay started: the dispatcher catches up on its own.
    conn.execute("SELECT outbox.publish('t.before', '{}') FROM generate_series(1, 2500)")
    async with running_relay(relay_settings(db_url, poll_interval=0.2)) as (relay, rec):
        await wait_for(lambda: relay.dispatcher.joined, timeout=20, what="dispatcher joined")
        own = relay.dispatcher.own_reads
        writers = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(3)]
        try:

            async def write(w: psycopg.AsyncConnection[Any], n: int) -> list[int]:
                ids = []
                for i in range(n):
                    async with w.transaction():
                        for _ in range(i % 3 + 1):
                            cur = await w.execute("SELECT outbox.publish('t.live', '{}')")
                            row = await cur.fetchone()
                            assert row is not None
                            ids.append(int(row[0]))
                return ids

            written = [
                i for ids in await asyncio.gather(*(write(w, 60) for w in writers)) for i in ids
            ]
        finally:
            for w in writers:
                await w.close()

        def delivered() -> int:
            row = conn.execute(
                "SELECT count(*) FROM outbox.deliveries"
                " WHERE webhook_id = %s AND event_id = ANY(%s)",
                (hook, written),
            ).fetchone()
            return int(row[0]) if row else 0

        await wait_for(lambda: delivered() == len(written), timeout=20, what="deliveries")
        await wait_for(lambda: set(written) <= set(rec.ids()), timeout=20, what="hub")
        assert relay.dispatcher.joined
        assert relay.dispatcher.own_reads == own, "the joined dispatcher read on its own"
    hub_ids = rec.ids()
    assert len(hub_ids) == len(set(hub_ids)), "the hub got an event twice"
    total = conn.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM outbox.deliveries WHERE webhook_id = %s",
        (hook,),
    ).fetchone()
    assert total is not None and total[0] == total[1] == 2500 + len(written)
