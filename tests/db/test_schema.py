"""Schema invariants: xid before id, publish, NOTIFY only after commit."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import outbox


def _events(conn: psycopg.Connection[Any]) -> list[tuple[int, int, str, Any]]:
    return [
        (r[0], int(r[1]), r[2], r[3])
        for r in conn.execute(
            "SELECT id, xid::text, event_type, payload FROM outbox.events ORDER BY id"
        )
    ]


def test_publish_sync_commits_with_caller(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        eid = outbox.publish(conn, "order.placed", {"n": 1})
    assert isinstance(eid, int)
    with conn.transaction():
        outbox.publish(conn, "order.placed", {"n": 2})
        raise_rollback(conn)
    assert [(e[2], e[3]) for e in _events(conn)] == [("order.placed", {"n": 1})]


def raise_rollback(conn: psycopg.Connection[Any]) -> None:
    raise psycopg.Rollback()


async def test_publish_async(db_url: str, conn: psycopg.Connection[Any]) -> None:
    async with await psycopg.AsyncConnection.connect(db_url) as aconn:
        eid = await outbox.publish(aconn, "order.placed", {"async": True})
        await aconn.commit()
    assert _events(conn)[0][0] == eid


def test_publish_sqlmodel_session(db_url: str, conn: psycopg.Connection[Any]) -> None:
    from sqlalchemy import create_engine
    from sqlmodel import Session

    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(db_url))
    try:
        with Session(engine) as session:
            eid = outbox.publish(session, "order.placed", {"session": True})
            session.commit()
        with Session(engine) as session:
            outbox.publish(session, "order.placed", {"rolled": "back"})
            session.rollback()
    finally:
        engine.dispose()
    assert [(e[0], e[3]) for e in _events(conn)] == [(eid, {"session": True})]


@pytest.mark.parametrize("bad", ["", "User.Created", "nodot", "a..b", "a.b-c", "a.b "])
def test_publish_rejects_invalid_event_type(conn: psycopg.Connection[Any], bad: str) -> None:
    from outbox.errors import InvalidEventType

    with pytest.raises(InvalidEventType):
        outbox.publish(conn, bad, {})
    # The SQL function checks too, for callers in other languages.
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid event type"):
        conn.execute("SELECT outbox.publish(%s, '{}')", (bad,))


def test_xid_is_taken_before_id_for_first_write(conn: psycopg.Connection[Any]) -> None:
    """publish as a transaction's very first write: its xid is below any xid
    assigned after its id was drawn."""
    # A: the publish is the first write of its transaction. B starts after A
    # drew its id, so B's xid must be larger than A's.
    with psycopg.connect(conn.info.dsn) as other, conn.transaction():
        conn.execute("SELECT outbox.publish('a.first', '{}')")
        other.execute("SELECT outbox.publish('b.second', '{}')")
        other.commit()
    ev = _events(conn)
    a = next(e for e in ev if e[2] == "a.first")
    b = next(e for e in ev if e[2] == "b.second")
    assert a[0] < b[0]
    assert a[1] < b[1]


def test_raw_insert_also_takes_xid_first(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(
            "INSERT INTO outbox.events (event_type, payload) VALUES ('raw.insert', %s)",
            (Jsonb({}),),
        )
        xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
    assert xid is not None
    assert _events(conn)[0][1] == int(xid[0])


def test_xid_before_id_under_concurrent_writers(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """The property the feed relies on, observed under concurrent writers:
    in any snapshot, every event below the largest visible id is either
    visible too or belongs to a transaction the snapshot still considers in
    progress (listed in xip, or at/above xmax)."""
    n_threads, per_thread = 6, 60
    errors: list[BaseException] = []
    done = threading.Event()
    snapshots: list[tuple[set[int], set[int], int]] = []

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with psycopg.connect(db_url) as c:
                for _ in range(per_thread):
                    with c.transaction():
                        if rnd.random() < 0.5:
                            c.execute("SELECT outbox.publish('w.first', '{}')")
                        else:
                            c.execute("SELECT pg_current_xact_id()")
                            c.execute("SELECT pg_sleep(0.001)")
                            c.execute("SELECT outbox.publish('w.later', '{}')")
                        if rnd.random() < 0.3:
                            c.execute("SELECT pg_sleep(0.002)")
                        c.execute("SELECT outbox.publish('w.second', '{}')")
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            with psycopg.connect(db_url) as c:
                while not done.is_set() and len(snapshots) < 2000:
                    with c.transaction():
                        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        snap = c.execute("SELECT pg_current_snapshot()::text").fetchone()
                        ids = c.execute("SELECT coalesce(array_agg(id), '{}') FROM outbox.events")
                        row = ids.fetchone()
                    assert snap is not None and row is not None
                    _, xmax, xips = snap[0].split(":")
                    xip = {int(x) for x in xips.split(",") if x}
                    snapshots.append((set(row[0]), xip, int(xmax)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n_threads)]
    rt = threading.Thread(target=reader)
    rt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    done.set()
    rt.join(timeout=30)
    assert not errors, errors
    xid_of = {e[0]: e[1] for e in _events(conn)}
    assert len(xid_of) == n_threads * per_thread * 2
    checked = 0
    for visible, xip, xmax in snapshots:
        if not visible:
            continue
        top = max(visible)
        for eid, xid in xid_of.items():
            if eid < top and eid not in visible:
                # xmax is latestCompletedXid + 1, not the next xid to be
                # assigned: a running transaction may sit at or above it.
                assert xid in xip or xid >= xmax, f"event {eid} (xid {xid}) lost below {top}"
                checked += 1
    assert len(snapshots) > 10


async def test_one_notify_per_transaction_only_after_commit(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    listener = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        await listener.execute("LISTEN outbox_events")
        # Play a sleeping relay: hold the doorbell lock exclusively.
        await listener.execute("SELECT pg_advisory_lock(outbox.doorbell_key())")
        got: list[str] = []

        async def drain(timeout: float) -> None:
            async for n in listener.notifies(timeout=timeout):
                got.append(n.payload)

        # Rolled back: no notification at all.
        with conn.transaction():
            for i in range(5):
                conn.execute("SELECT outbox.publish('x.y', %s)", (Jsonb({"i": i}),))
            # Not yet committed: nothing may arrive.
            await drain(0.3)
            assert got == []
            raise_rollback(conn)
        await drain(0.3)
        assert got == []
        # Committed, 5 events: exactly one empty notification.
        with conn.transaction():
            for i in range(5):
                conn.execute("SELECT outbox.publish('x.y', %s)", (Jsonb({"i": i}),))
        await drain(1.0)
        assert got == [""]
    finally:
        await listener.close()


async def test_no_notify_while_no_relay_sleeps_and_sleep_waits_for_writers(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The doorbell protocol (sql/003_doorbell.sql): a writer that finds no
    sleeping relay takes the shared lock instead of notifying, and a relay
    cannot fall asleep until that writer has committed."""
    relay = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        await relay.execute("LISTEN outbox_events")
        with conn.transaction():
            conn.execute("SELECT outbox.publish('x.y', '{}')")
            # The relay tries to fall asleep: it must wait for the writer.
            cur = await relay.execute("SELECT pg_try_advisory_lock(outbox.doorbell_key())")
            row = await cur.fetchone()
            assert row == (False,)
        # Committed without a sleeping relay: no notification was sent...
        notes = [n async for n in relay.notifies(timeout=0.3)]
        assert notes == []
        # ...and now the relay can fall asleep (then reads once more).
        cur = await relay.execute("SELECT pg_try_advisory_lock(outbox.doorbell_key())")
        assert await cur.fetchone() == (True,)
        # While it sleeps, a writer rings.
        conn.execute("SELECT outbox.publish('x.y', '{}')")
        notes = [n async for n in relay.notifies(timeout=2.0, stop_after=1)]
        assert len(notes) == 1
    finally:
        await relay.close()


def test_event_type_constraint_is_named(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        conn.execute("INSERT INTO outbox.events (event_type, payload) VALUES ('Bad', '{}')")
    assert info.value.diag.constraint_name == "events_event_type_format"
