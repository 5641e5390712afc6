"""The relay runtime in-process (relay/runtime.py, relay/listener.py): wake-up
by NOTIFY, the poll timer, a killed listener or feed connection, idle
transactions, late commits, and a writers' soak through the whole relay
(hub batches and delivery rows)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import psycopg

from tests.support.relay import (
    Recorder,
    add_webhook,
    backend_pid,
    deliveries_summary,
    relay_settings,
    running_relay,
)
from tests.support.waiting import wait_for


async def test_cursor_is_the_head_of_the_feed_before_run(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("SELECT outbox.publish('t.old', '{}')")
    async with running_relay(relay_settings(db_url)) as (relay, rec):
        assert relay.cursor is not None and relay.cursor.after >= 1
        conn.execute("SELECT outbox.publish('t.new', '{}')")
        await wait_for(lambda: rec.events, timeout=5, what="the new event")
        # Only what was committed after start reaches the hub.
        assert [e.type for e in rec.events] == ["t.new"]
        # Empty reads after it refresh the snapshot part of the cursor, never
        # its position.
        assert relay.cursor.after == rec.batches[-1].end.after


async def test_notify_wakes_the_feed_long_before_the_poll_timer(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    async with running_relay(relay_settings(db_url, poll_interval=30.0)) as (relay, rec):
        began = time.monotonic()
        conn.execute("SELECT outbox.publish('t.x', '{}')")
        await wait_for(lambda: rec.events, timeout=5, what="event via NOTIFY")
        assert time.monotonic() - began < 2
        assert relay.metrics.events_read.get() == 1


async def test_without_notify_the_poll_timer_delivers_everything(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = relay_settings(db_url, poll_interval=0.2, notify=False)
    async with running_relay(settings) as (relay, rec):
        assert relay.listener is None and relay.status().listener == "disabled"
        # A raw INSERT rings no doorbell at all.
        conn.execute(
            "INSERT INTO outbox.events (event_type, payload) "
            "SELECT 't.raw', jsonb_build_object('i', g) FROM generate_series(1, 50) g"
        )
        await wait_for(lambda: len(rec.events) == 50, timeout=5, what="polled events")
        assert [e.payload["i"] for e in rec.events] == list(range(1, 51))


async def test_listener_killed_with_pg_terminate_backend_loses_nothing(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    add_webhook(conn, ["*"])
    async with running_relay(relay_settings(db_url, poll_interval=30.0)) as (relay, rec):
        assert relay.listener is not None
        name = relay.listener.application_name
        for round_ in range(3):
            pid = backend_pid(conn, name)
            assert pid is not None
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # Committed while nobody listens (or just after): the catch-up
            # read after the new LISTEN finds them, not the 30 s poll.
            for i in range(10):
                conn.execute(
                    "SELECT outbox.publish('t.x', jsonb_build_object('i', %s::int))",
                    (round_ * 10 + i,),
                )
            await wait_for(
                lambda r=round_: len(rec.events) == (r + 1) * 10,
                timeout=5,
                what="events after the listener was killed",
            )
            await wait_for(
                lambda p=pid: relay.listener.connected and relay.listener.backend_pid != p,
                timeout=5,
                what="re-LISTEN",
            )
        assert relay.listener.reconnects >= 3
        assert sorted(e.payload["i"] for e in rec.events) == list(range(30))
        await wait_for(
            lambda: deliveries_summary(conn)[2] == 0, timeout=5, what="every event dispatched"
        )


async def test_feed_connection_killed_resumes_from_its_cursor(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    async with running_relay(relay_settings(db_url, poll_interval=0.3)) as (relay, rec):
        conn.execute("SELECT outbox.publish('t.before', '{}')")
        await wait_for(lambda: len(rec.events) == 1, timeout=5, what="first event")
        pid = backend_pid(conn, f"outbox feed {relay.instance}")
        assert pid is not None
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(5):
            conn.execute("SELECT outbox.publish('t.after', '{}')")
        await wait_for(lambda: len(rec.events) == 6, timeout=5, what="events after the kill")
        ids = rec.ids()
        assert len(set(ids)) == len(ids)
        assert relay.status().feed.state == "ok"


async def test_idle_in_transaction_session_does_not_delay_other_events(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    idle = await psycopg.AsyncConnection.connect(db_url)
    try:
        await idle.execute("SELECT pg_current_xact_id()")  # an xid, no events, left open
        async with running_relay(relay_settings(db_url, poll_interval=30.0)) as (_, rec):
            for i in range(5):
                began = time.monotonic()
                conn.execute("SELECT outbox.publish('t.x', '{}')")
                await wait_for(lambda n=i + 1: len(rec.events) == n, timeout=5, what="event")
                assert time.monotonic() - began < 1.0
    finally:
        await idle.close()


async def test_late_commit_reaches_the_hub_after_a_later_id(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    a = await psycopg.AsyncConnection.connect(db_url)
    try:
        async with running_relay(relay_settings(db_url, poll_interval=30.0)) as (_, rec):
            await a.execute("SELECT outbox.publish('t.a', '{}')")  # draws the smaller id
            conn.execute("SELECT outbox.publish('t.b', '{}')")
            await wait_for(lambda: len(rec.events) == 1, timeout=5, what="B")
            await a.commit()
            await wait_for(lambda: len(rec.events) == 2, timeout=5, what="A")
            assert [e.type for e in rec.events] == ["t.b", "t.a"]
            assert rec.events[1].id < rec.events[0].id
    finally:
        await a.close()


def test_writers_soak_through_the_relay(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """Writers x hundreds of transactions, random pre-commit delays, ~10%
    rollbacks, while the relay runs: the hub gets exactly the committed
    events, once each, same-row causal order kept; every committed event gets
    exactly one delivery row."""
    add_webhook(conn, ["*"])
    conn.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
    conn.execute("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 4) g")
    n_writers, per_writer = 5, 300
    committed: set[int] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with psycopg.connect(db_url) as c:
                for _ in range(per_writer):
                    row = rnd.randint(1, 4)
                    ids: list[int] = []
                    rolled_back = rnd.random() < 0.1
                    with c.transaction():
                        n = c.execute(
                            "UPDATE counters SET n = n + 1 WHERE id = %s RETURNING n", (row,)
                        ).fetchone()
                        assert n is not None
                        for _ in range(rnd.randint(1, 3)):
                            got = c.execute(
                                "SELECT outbox.publish('soak.tick', jsonb_build_object("
                                "'row', %s::int, 'n', %s::int))",
                                (row, n[0]),
                            ).fetchone()
                            assert got is not None
                            ids.append(int(got[0]))
                        if rnd.random() < 0.3:
                            time.sleep(rnd.random() * 0.004)
                        if rolled_back:
                            raise psycopg.Rollback()  # swallowed by transaction()
                    if not rolled_back:
                        with lock:
                            committed.update(ids)
        except BaseException as exc:
            errors.append(exc)

    async def main() -> Recorder:
        settings = relay_settings(db_url, poll_interval=0.5, batch_size=200)
        async with running_relay(settings) as (relay, rec):
            threads = [threading.Thread(target=writer, args=(i,)) for i in range(n_writers)]
            for t in threads:
                t.start()
            await wait_for(
                lambda: not any(t.is_alive() for t in threads),
                timeout=120,
                interval=0.1,
                what="writers",
            )
            assert not errors, errors
            await wait_for(
                lambda: len(rec.events) >= len(committed),
                timeout=20,
                what="all committed events read",
            )
            await wait_for(
                lambda: deliveries_summary(conn)[2] == 0, timeout=20, what="all events dispatched"
            )
            assert relay.leadership.is_leader
            return rec

    rec = asyncio.run(main())
    ids = rec.ids()
    assert len(ids) == len(set(ids)), "an event reached the hub twice"
    assert set(ids) == committed
    in_db = {r[0] for r in conn.execute("SELECT id FROM outbox.events")}
    assert in_db == committed
    rows, distinct, undispatched = deliveries_summary(conn)
    assert rows == distinct == len(committed) and undispatched == 0
    last: dict[int, int] = {}
    for e in rec.events:
        row, n = e.payload["row"], e.payload["n"]
        assert n >= last.get(row, 0), f"row {row}: n={n} after {last[row]}"
        last[row] = n
