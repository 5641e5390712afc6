"""The dispatcher, leader election and retention (relay/dispatcher.py,
relay/leader.py, relay/retention.py) against the real database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from outbox.cursor import Cursor
from outbox.errors import LostLeadership
from outbox.relay.dispatcher import dispatch, load_cursor
from outbox.relay.feed import read_batch
from outbox.relay.retention import cursor_expired, retention_round, watermark
from tests.support.relay import (
    Recorder,
    add_webhook,
    backend_pid,
    deliveries_summary,
    relay_settings,
    running_relay,
)
from tests.support.waiting import wait_for


def deliveries(conn: psycopg.Connection[Any]) -> set[tuple[int, str]]:
    rows = conn.execute(
        "SELECT d.webhook_id, e.event_type FROM outbox.deliveries d "
        "JOIN outbox.events e ON e.id = d.event_id"
    ).fetchall()
    return {(int(w), str(t)) for w, t in rows}


async def dispatch_all(aconn: psycopg.AsyncConnection[Any]) -> int:
    cursor, stored = await load_cursor(aconn)
    created = 0
    while True:
        batch = await read_batch(aconn, cursor)
        if not batch.events:
            return created
        created += await dispatch(aconn, batch, stored)
        cursor, stored = batch.end, batch.end.encode()


async def test_routing_by_patterns_and_state(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    exact = add_webhook(conn, ["user.created"], name="exact")
    prefix = add_webhook(conn, ["ticket.*"], name="prefix")
    every = add_webhook(conn, ["*"], name="all")
    add_webhook(conn, ["*"], active=False, name="off")
    for t in (
        "user.created",
        "user.deleted",
        "ticket.created",
        "ticket.message.added",
        "tickets.created",
        "webhook.test",
    ):
        conn.execute("SELECT outbox.publish(%s, '{}')", (t,))
    assert await dispatch_all(aconn) == 8
    assert deliveries(conn) == {
        (exact, "user.created"),
        (prefix, "ticket.created"),
        (prefix, "ticket.message.added"),
        (every, "user.created"),
        (every, "user.deleted"),
        (every, "ticket.created"),
        (every, "ticket.message.added"),
        (every, "tickets.created"),
    }
    # webhook.test is never routed; the inactive webhook gets nothing.
    assert conn.execute(
        "SELECT count(*) FROM outbox.deliveries WHERE event_type = 'webhook.test'"
    ).fetchone() == (0,)


async def test_lifecycle_events_skip_the_disabled_webhook_they_are_about(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    watcher = add_webhook(conn, ["webhook.*"], name="watcher")
    broken = add_webhook(conn, ["*"], name="broken")
    with conn.transaction():
        conn.execute("UPDATE outbox.webhooks SET is_active = false WHERE id = %s", (broken,))
        conn.execute(
            "SELECT outbox.publish('webhook.disabled', jsonb_build_object("
            "'webhook_id', %s::bigint))",
            (broken,),
        )
    await dispatch_all(aconn)
    assert deliveries(conn) == {(watcher, "webhook.disabled")}


async def test_a_webhook_never_gets_the_webhook_events_about_itself(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    """A failing, still active endpoint subscribed to '*' must not receive its
    own webhook.delivery_failed events: each would fail and breed another."""
    failing = add_webhook(conn, ["*"], name="failing")
    other = add_webhook(conn, ["*"], name="other")
    conn.execute(
        "SELECT outbox.publish('webhook.delivery_failed', jsonb_build_object("
        "'webhook_id', %s::bigint, 'delivery_id', 1))",
        (failing,),
    )
    conn.execute("SELECT outbox.publish('user.created', '{}')")
    await dispatch_all(aconn)
    assert deliveries(conn) == {
        (other, "webhook.delivery_failed"),
        (failing, "user.created"),
        (other, "user.created"),
    }


async def test_first_dispatcher_starts_from_the_beginning_and_stores_its_cursor(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    hook = add_webhook(conn, ["*"])
    for _ in range(3):
        conn.execute("SELECT outbox.publish('t.before_any_relay', '{}')")
    assert await load_cursor(aconn) == (Cursor(0), None)
    assert await dispatch_all(aconn) == 3
    cursor, stored = await load_cursor(aconn)
    assert stored is not None and cursor.after == 3
    # Dispatching the same batch again doubles nothing.
    batch = await read_batch(aconn, Cursor(0))
    assert await dispatch(aconn, batch, stored) == 0
    assert deliveries_summary(conn) == (3, 3, 0)
    assert {w for w, _ in deliveries(conn)} == {hook}


async def test_a_second_leader_cannot_move_the_cursor_it_did_not_read(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    add_webhook(conn, ["*"])
    conn.execute("SELECT outbox.publish('t.one', '{}')")
    batch = await read_batch(aconn, Cursor(0))
    stale_batch = batch
    assert await dispatch(aconn, batch, None) == 1
    conn.execute("SELECT outbox.publish('t.two', '{}')")
    # A relay that still believes no cursor is stored (it read before us).
    with pytest.raises(LostLeadership):
        await dispatch(aconn, await read_batch(aconn, stale_batch.end), None)
    # ... and one that read an older value.
    with pytest.raises(LostLeadership):
        await dispatch(aconn, await read_batch(aconn, stale_batch.end), Cursor(0).encode())
    # Neither inserted anything: the rows go with the cursor move.
    assert deliveries_summary(conn)[0] == 1


async def test_dispatch_notifies_deliveries_in_the_same_transaction(
    db_url: str, conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    add_webhook(conn, ["t.*"])
    listener = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        await listener.execute("LISTEN outbox_deliveries")
        conn.execute("SELECT outbox.publish('x.unmatched', '{}')")
        await dispatch_all(aconn)  # no rows: no doorbell
        got = [n async for n in listener.notifies(timeout=0.3)]
        assert got == []
        conn.execute("SELECT outbox.publish('t.matched', '{}')")
        await dispatch_all(aconn)
        got = [n async for n in listener.notifies(timeout=2, stop_after=1)]
        assert [n.channel for n in got] == ["outbox_deliveries"]
    finally:
        await listener.close()


async def test_relay_dispatches_and_wakes_the_sender(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    add_webhook(conn, ["*"])
    async with running_relay(relay_settings(db_url, poll_interval=30.0)) as (relay, rec):
        await wait_for(lambda: relay.leadership.is_leader, timeout=5, what="leadership")
        wakes = rec.wakes
        conn.execute("SELECT outbox.publish('t.x', '{}')")
        await wait_for(lambda: deliveries_summary(conn)[0] == 1, timeout=5, what="delivery row")
        await wait_for(lambda: rec.wakes > wakes, timeout=5, what="sender woken")
        # (The sender may be woken first by the NOTIFY on outbox_deliveries,
        # before the dispatcher counts what it created: wait for the count.)
        await wait_for(
            lambda: relay.metrics.deliveries_created.get() == 1, timeout=5, what="counted"
        )
        assert relay.status().role == "leader"


async def test_one_leader_and_a_killed_leader_is_replaced_within_seconds(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    add_webhook(conn, ["*"])
    add_webhook(conn, ["t.*"], name="second")
    settings = relay_settings(db_url, poll_interval=0.5)
    async with (
        running_relay(settings, leader_retry_interval=0.3) as (a, _),
        running_relay(settings, leader_retry_interval=0.3) as (b, _),
    ):
        await wait_for(
            lambda: a.leadership.is_leader or b.leadership.is_leader, timeout=5, what="a leader"
        )
        leader, other = (a, b) if a.leadership.is_leader else (b, a)
        assert not other.leadership.is_leader
        for _ in range(20):
            conn.execute("SELECT outbox.publish('t.x', '{}')")
        # The leader's session dies (as when its host vanishes or an admin
        # terminates it): the lock goes with it.
        pid = backend_pid(conn, leader.leadership.application_name)
        assert pid is not None
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(20):
            conn.execute("SELECT outbox.publish('t.y', '{}')")
        await wait_for(
            lambda: other.leadership.is_leader or leader.leadership.is_leader,
            timeout=5,
            what="a new leader",
        )
        await wait_for(
            lambda: deliveries_summary(conn) == (80, 80, 0),
            timeout=10,
            what="every event dispatched to both webhooks, once",
        )
        assert sum(r.leadership.is_leader for r in (a, b)) == 1


async def test_stop_releases_the_lock_so_another_relay_takes_over_at_once(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    add_webhook(conn, ["*"])
    settings = relay_settings(db_url, poll_interval=0.5)
    async with running_relay(settings, leader_retry_interval=0.2) as (first, _):
        await wait_for(lambda: first.leadership.is_leader, timeout=5, what="first leads")
        async with running_relay(settings, leader_retry_interval=0.2) as (second, _):
            await first.stop()
            await wait_for(lambda: second.leadership.is_leader, timeout=5, what="takeover")
            conn.execute("SELECT outbox.publish('t.x', '{}')")
            await wait_for(
                lambda: deliveries_summary(conn) == (1, 1, 0),
                timeout=5,
                what="dispatch by the new leader",
            )


# --- retention ---------------------------------------------------------------------


def age(conn: psycopg.Connection[Any], ids: list[int], days: int) -> None:
    conn.execute(
        "UPDATE outbox.events SET created_at = now() - %s * interval '1 day' WHERE id = ANY(%s)",
        (days, ids),
    )


def publish(conn: psycopg.Connection[Any], n: int, event_type: str = "t.x") -> list[int]:
    return [
        int(conn.execute("SELECT outbox.publish(%s, '{}')", (event_type,)).fetchone()[0])
        for _ in range(n)
    ]


async def test_retention_deletes_only_old_dispatched_unneeded_events(
    db_url: str, conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    hook = add_webhook(conn, ["needed.*"])
    old = publish(conn, 5)
    needed = publish(conn, 1, "needed.x")  # its delivery stays pending
    await dispatch_all(aconn)
    _, stored = await load_cursor(aconn)
    undispatched = publish(conn, 3)
    age(conn, old + needed + undispatched, days=10)
    recent = publish(conn, 2)
    result = await retention_round(aconn, timedelta(days=7), batch=2)
    left = {r[0] for r in conn.execute("SELECT id FROM outbox.events")}
    # Old and dispatched: gone. The pending delivery's event stays; so do the
    # old ones above the dispatcher's cursor, and the recent ones.
    assert not set(old) & left
    assert set(needed + undispatched + recent) == left
    assert result.events_deleted == 5
    assert await watermark(aconn) == max(old) == result.watermark
    assert await cursor_expired(aconn, Cursor(0))
    assert await cursor_expired(aconn, Cursor(max(old) - 1))
    assert not await cursor_expired(aconn, Cursor(max(old)))
    assert (await load_cursor(aconn))[1] == stored  # retention never moves the cursor
    # Once the delivery is finished (and old), its event goes too.
    conn.execute(
        "UPDATE outbox.deliveries SET status = 'failed', created_at = now() - "
        "interval '10 days' WHERE webhook_id = %s",
        (hook,),
    )
    result = await retention_round(aconn, timedelta(days=7))
    assert result.deliveries_deleted == 1 and result.events_deleted == 1
    assert await watermark(aconn) == needed[0]


async def test_retention_never_deletes_rows_of_a_transaction_the_cursor_waits_for(
    db_url: str, conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    slow = await psycopg.AsyncConnection.connect(db_url)
    try:
        await slow.execute("SELECT outbox.publish('t.slow', '{}')")  # draws first, stays open
        publish(conn, 3)
        await dispatch_all(aconn)  # stored cursor: after the 3, slow's xid pending
        await slow.commit()
        conn.execute("UPDATE outbox.events SET created_at = now() - interval '30 days'")
        result = await retention_round(aconn, timedelta(days=7))
        assert result.events_deleted == 3
        left = [r[0] for r in conn.execute("SELECT event_type FROM outbox.events")]
        assert left == ["t.slow"]  # not dispatched yet: kept
    finally:
        await slow.close()


async def test_retention_with_nothing_dispatched_deletes_no_events(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    age(conn, publish(conn, 3), days=30)
    result = await retention_round(aconn, timedelta(days=7))
    assert result.events_deleted == 0
    assert not await cursor_expired(aconn, Cursor(0))


async def test_retention_deletes_finished_deliveries_and_their_attempts(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    add_webhook(conn, ["*"])
    publish(conn, 4)
    await dispatch_all(aconn)
    conn.execute("""
        UPDATE outbox.deliveries SET
            status = CASE WHEN event_id % 2 = 0 THEN 'success' ELSE 'pending' END,
            delivered_at = CASE WHEN event_id % 2 = 0 THEN now() END,
            created_at = now() - interval '9 days'""")
    conn.execute("""
        INSERT INTO outbox.delivery_attempts
            (delivery_id, attempt_number, started_at, duration_ms, outcome)
        SELECT id, 1, now(), 1, 'success' FROM outbox.deliveries WHERE status = 'success'""")
    result = await retention_round(aconn, timedelta(days=7), batch=1)
    assert result.deliveries_deleted == 2
    statuses = [r[0] for r in conn.execute("SELECT status FROM outbox.deliveries")]
    assert statuses == ["pending", "pending"]
    assert conn.execute("SELECT count(*) FROM outbox.delivery_attempts").fetchone() == (0,)


async def test_the_leader_applies_retention_by_itself(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    age(conn, publish(conn, 3), days=30)
    settings = relay_settings(db_url, poll_interval=0.2, retention=timedelta(days=7))
    rec = Recorder()
    async with running_relay(settings, rec, retention_interval=0.2) as (relay, _):
        await wait_for(lambda: relay.leadership.is_leader, timeout=5, what="leadership")
        await wait_for(
            lambda: conn.execute("SELECT count(*) FROM outbox.events").fetchone() == (0,),
            timeout=10,
            what="retention by the leader",
        )


async def test_relay_sessions_never_jit_compile(db_url: str) -> None:
    """Every dedicated relay session runs with JIT off: a fresh database's
    dispatch_batch plan costs more than jit_above_cost, and compiling it
    took ~0.5 s per batch of 1,000 events for ~10 ms of work (BENCHMARKS.md, B4)."""
    from outbox.relay.reconnect import connect

    conn = await connect(db_url, "test-relay-session")
    try:
        cur = await conn.execute(
            "SELECT current_setting('jit'), current_setting('tcp_keepalives_idle')"
        )
        jit, idle = await cur.fetchone() or (None, None)
    finally:
        await conn.close()
    assert jit == "off"
    assert idle is not None


@pytest.mark.parametrize("key", [None, "k:1"], ids=["unkeyed-one-statement", "keyed-transaction"])
async def test_both_dispatch_paths_keep_the_compare_and_set_and_the_repeat(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any], key: str | None
) -> None:
    # A batch without keys is one autocommit statement; one with keys is a
    # transaction (the promotion for ordering: key webhooks follows the lock).
    hook = add_webhook(conn, ["*"])
    conn.execute("UPDATE outbox.webhooks SET ordering = 'key' WHERE id = %s", (hook,))
    conn.execute("SELECT outbox.publish('t.one', '{}', key => %s)", (key,))
    batch = await read_batch(aconn, Cursor(0))
    assert await dispatch(aconn, batch, None) == 1
    # The delivery is due (a keyed one as its queue's head), not waiting.
    due = conn.execute("SELECT due_at < 'infinity' FROM outbox.deliveries").fetchall()
    assert due == [(True,)]
    conn.execute("SELECT outbox.publish('t.two', '{}', key => %s)", (key,))
    with pytest.raises(LostLeadership):
        await dispatch(aconn, await read_batch(aconn, batch.end), None)
    assert deliveries_summary(conn)[0] == 1
    # No transaction is left open on the connection either way.
    assert aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # A repeat of a dispatched batch (after a crash) doubles nothing.
    assert await dispatch(aconn, batch, batch.end.encode()) == 0
    assert deliveries_summary(conn)[0] == 1
