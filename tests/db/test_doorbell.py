"""The NOTIFY doorbell (sql/003_doorbell.sql, relay/doorbell.py): writers ring
only while a relay sleeps, yet a sleeping relay — or several — always hears
the next commit long before its poll timer."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg

from tests.support.relay import relay_settings, running_relay
from tests.support.waiting import wait_for


async def test_each_sleeping_relay_hears_the_next_commit(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = relay_settings(db_url, poll_interval=30.0)
    async with running_relay(settings) as (_r1, rec1), running_relay(settings) as (_r2, rec2):
        for i in range(3):
            # Let both fall asleep (they hold or queue for the doorbell lock).
            await wait_for(lambda: _asleep(conn) >= 2, timeout=10, what="both relays asleep")
            began = time.monotonic()
            conn.execute("SELECT outbox.publish('t.ring', %s::jsonb)", (f'{{"i": {i}}}',))
            await wait_for(
                lambda i=i: len(rec1.events) > i and len(rec2.events) > i,
                timeout=5,
                what="both relays woken",
            )
            assert time.monotonic() - began < 2.0


def _asleep(conn: psycopg.Connection[Any]) -> int:
    """Relays holding or waiting for the doorbell lock."""
    return _doorbell_requests(conn)


def _doorbell_requests(conn: psycopg.Connection[Any], *, waiting_only: bool = False) -> int:
    """Exclusive requests for this database's doorbell lock (only those not granted yet)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock'"
        " AND ((classid::bigint << 32) | objid::bigint) = outbox.doorbell_key()"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND NOT (%(waiting_only)s AND granted)",
        {"waiting_only": waiting_only},
    ).fetchone()
    return int(row[0]) if row else 0


async def test_busy_relay_spares_writers_the_notify(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Under a steady stream of commits the relay keeps reading on a short
    poll and holds no lock, so most writers take the shared lock instead of
    notifying; every event still arrives."""
    conn.execute("CREATE TABLE t (id serial PRIMARY KEY, v int)")
    from outbox.capture import Rule, track

    track(conn, [Rule("t", "insert", "t.created")])
    listener = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    await listener.execute("LISTEN outbox_events")
    notes = 0
    stop = asyncio.Event()

    async def count_notes() -> None:
        nonlocal notes
        while not stop.is_set():
            async for _ in listener.notifies(timeout=0.2):
                notes += 1

    n = 1500
    async with running_relay(relay_settings(db_url, poll_interval=30.0)) as (_relay, rec):
        counter = asyncio.create_task(count_notes())

        def write() -> None:
            with psycopg.connect(db_url, autocommit=True) as w:
                for i in range(n):
                    w.execute("INSERT INTO t (v) VALUES (%s)", (i,))

        writers = [threading.Thread(target=write) for _ in range(2)]
        for t in writers:
            t.start()
        for t in writers:
            await asyncio.to_thread(t.join, 60)
        await wait_for(lambda: len(rec.events) >= 2 * n, timeout=30, what="every event")
        stop.set()
        await asyncio.wait_for(counter, timeout=5)
    await listener.close()
    assert len(rec.events) == 2 * n
    assert len({e.id for e in rec.events}) == 2 * n
    # At rest every commit would ring; busy, most do not.
    assert notes < n, f"{notes} notifications for {2 * n} commits"


async def test_an_open_writer_does_not_hold_back_others_that_did_not_ring(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Writer A keeps its event open; writer B took the shared lock before the
    relay queued for the exclusive one, so B's commit rings nobody. The relay
    must still deliver B long before its poll timer (it gives up waiting
    behind A every MAX_SLEEP_WAIT and reads)."""
    a = await psycopg.AsyncConnection.connect(db_url)
    b = await psycopg.AsyncConnection.connect(db_url)
    try:
        async with running_relay(relay_settings(db_url, poll_interval=30.0)) as (_relay, rec):
            await wait_for(lambda: _asleep(conn) >= 1, timeout=10, what="relay asleep")
            # Wake it up, then let both writers take the shared lock while it reads.
            conn.execute("SELECT outbox.publish('t.wake', '{}')")
            await wait_for(lambda: len(rec.events) == 1, timeout=5, what="wake event")
            await a.execute("SELECT outbox.publish('t.a', '{}')")
            await b.execute("SELECT outbox.publish('t.b', '{}')")
            await wait_for(lambda: _waiting(conn) >= 1, timeout=10, what="relay queued")
            began = time.monotonic()
            await b.commit()
            await wait_for(lambda: len(rec.events) == 2, timeout=5, what="B")
            assert time.monotonic() - began < 2.0
            assert rec.events[-1].type == "t.b"
            await a.commit()
            await wait_for(lambda: len(rec.events) == 3, timeout=5, what="A")
    finally:
        await a.close()
        await b.close()


def _waiting(conn: psycopg.Connection[Any]) -> int:
    """Relays queued (not yet granted) for the doorbell lock."""
    return _doorbell_requests(conn, waiting_only=True)


async def test_interrupted_sleep_returns_at_once_and_gives_the_request_up(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A relay queued behind a writer in flight is woken by a bell: it must go
    and read without waiting for its lock request to be cancelled (a cancel
    request is a new connection to the postmaster), and the request must be
    gone afterwards, so writers stop ringing. Then the relay can sleep again."""
    from outbox.relay.doorbell import Doorbell

    writer = await psycopg.AsyncConnection.connect(db_url)
    bell = Doorbell(db_url)
    try:
        await writer.execute("SELECT pg_try_advisory_xact_lock_shared(outbox.doorbell_key())")
        rung = asyncio.Event()
        sleeping = asyncio.create_task(bell.fall_asleep(rung, max_wait=30.0))
        await wait_for(lambda: _waiting(conn) == 1, timeout=10, what="relay queued")
        rung.set()
        outcome = await asyncio.wait_for(sleeping, 10)
        assert outcome == "interrupted" and not bell.held
        await asyncio.wait_for(bell._settle(), 10)
        assert _asleep(conn) == 0  # the request is gone, nothing held
        await writer.rollback()
        assert await asyncio.wait_for(bell.fall_asleep(asyncio.Event(), 10.0), 15) == "held"
        assert _asleep(conn) == 1
        await bell.wake()
        await asyncio.wait_for(bell._settle(), 10)
        assert _asleep(conn) == 0
    finally:
        await bell.close()
        await writer.close()
