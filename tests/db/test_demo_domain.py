"""`outbox demo`'s domain against Postgres: the six events, traffic, the webhooks it
registers (signatures, the receiver and options need no database: tests/unit/)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg

from outbox.cli.demo_domain import (
    EVENT_TYPES,
    Traffic,
    register_webhook,
    setup,
)


def events(conn: psycopg.Connection[Any], after: int = 0) -> list[tuple[str, Any]]:
    rows = conn.execute(
        "SELECT event_type, payload FROM outbox.events WHERE id > %s ORDER BY id", (after,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def last_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM outbox.events").fetchone()
    return int(row[0]) if row else 0


# --- the domain --------------------------------------------------------------------------


def test_setup_is_idempotent_and_tracks_the_six_seed_events(conn: psycopg.Connection[Any]) -> None:
    first = setup(conn)
    again = setup(conn)
    assert len(first) == 7
    assert all(r.changed for r in first)
    assert not any(r.changed for r in again)
    assert {r.event_type for r in first} == set(EVENT_TYPES)
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'demo'"
        )
    }
    assert tables == {"users", "transactions", "tickets", "ticket_messages"}


def test_domain_writes_fire_exactly_the_seed_events(conn: psycopg.Connection[Any]) -> None:
    setup(conn)
    start = last_id(conn)

    def step(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[str, Any]]:
        nonlocal start
        conn.execute(sql, params)
        got = events(conn, start)
        start = last_id(conn)
        return got

    got = step(
        "INSERT INTO demo.users (telegram_id, username, first_name, last_name, referral_code)"
        " VALUES (456789, 'testuser', 'Test', 'User', 'refABC123')"
    )
    # Exactly the seed's user.created payload, no more (balance, created_at stay out).
    assert got == [
        (
            "user.created",
            {
                "user_id": 1,
                "telegram_id": 456789,
                "username": "testuser",
                "first_name": "Test",
                "last_name": "User",
                "referral_code": "refABC123",
                "referred_by_id": None,
            },
        )
    ]

    got = step(
        "INSERT INTO demo.transactions (user_id, type, amount_kopeks) VALUES (1, 'deposit', 10000)"
    )
    assert [t for t, _ in got] == ["transaction.created"]
    assert got[0][1]["status"] == "pending"
    tx = got[0][1]["id"]

    got = step("UPDATE demo.transactions SET status = 'completed' WHERE id = %s", (tx,))
    assert [t for t, _ in got] == ["payment.completed"]
    assert got[0][1]["previous"] == {"status": "pending"}
    assert got[0][1]["amount_kopeks"] == 10000

    # Not a change of status, or not a deposit: no payment.completed.
    assert step("UPDATE demo.transactions SET status = 'completed' WHERE id = %s", (tx,)) == []
    assert step("UPDATE demo.transactions SET description = 'x' WHERE id = %s", (tx,)) == []
    got = step(
        "INSERT INTO demo.transactions (user_id, type, amount_kopeks, status) "
        "VALUES (1, 'subscription_payment', 9900, 'pending')"
    )
    assert [t for t, _ in got] == ["transaction.created"]
    assert (
        step(
            "UPDATE demo.transactions SET status = 'completed' WHERE type = 'subscription_payment'"
        )
        == []
    )
    got = step(
        "INSERT INTO demo.transactions (user_id, type, amount_kopeks, status) "
        "VALUES (1, 'deposit', 500, 'pending')"
    )
    assert (
        step("UPDATE demo.transactions SET status = 'failed' WHERE id = %s", (got[0][1]["id"],))
        == []
    )

    # A deposit inserted already completed fires both.
    got = step(
        "INSERT INTO demo.transactions (user_id, type, amount_kopeks, status) "
        "VALUES (1, 'deposit', 25000, 'completed')"
    )
    assert sorted(t for t, _ in got) == ["payment.completed", "transaction.created"]

    got = step("INSERT INTO demo.tickets (user_id, title) VALUES (1, 'VPN is down')")
    assert [t for t, _ in got] == ["ticket.created"]
    ticket = got[0][1]["id"]
    assert step("UPDATE demo.tickets SET status = 'open' WHERE id = %s", (ticket,)) == []
    assert step("UPDATE demo.tickets SET title = 'VPN!' WHERE id = %s", (ticket,)) == []
    got = step("UPDATE demo.tickets SET status = 'answered' WHERE id = %s", (ticket,))
    assert [t for t, _ in got] == ["ticket.status_changed"]
    assert got[0][1]["status"] == "answered"
    assert got[0][1]["previous"] == {"status": "open"}

    got = step(
        "INSERT INTO demo.ticket_messages (ticket_id, user_id, is_from_admin, "
        "message_text) VALUES (%s, 1, true, 'Looking into it')",
        (ticket,),
    )
    assert [t for t, _ in got] == ["ticket.message_added"]
    assert got[0][1]["is_from_admin"] is True


# --- traffic ------------------------------------------------------------------------------


async def test_traffic_writes_at_the_rate_and_counts_every_event(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        setup(conn)
    traffic = Traffic(db_url, rate=300, rng=random.Random(7))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stats = await asyncio.wait_for(traffic.run(asyncio.Event(), duration=1.5), timeout=30)
    assert loop.time() - t0 >= 1.4
    # Never more than the rate allows plus one second of burst. Fewer only when
    # the machine is slow (a loaded CI box), so the floor is loose.
    assert 30 <= stats.events <= 300 * 2.5 + 10, stats
    assert stats.errors == 0
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT event_type, count(*) FROM outbox.events GROUP BY 1").fetchall()
    by_type = dict(rows)
    # Every event the generator counted is in the log, and nothing else.
    assert sum(by_type.values()) == stats.events
    assert set(by_type) == set(EVENT_TYPES)


async def test_traffic_picks_up_where_a_previous_run_left(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        setup(conn)
    first = await Traffic(db_url, rate=200, rng=random.Random(1)).run(asyncio.Event(), 0.5)
    second = await Traffic(db_url, rate=200, rng=random.Random(2)).run(asyncio.Event(), 0.5)
    assert first.errors == second.errors == 0
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox.events").fetchone()
    assert row is not None and row[0] == first.events + second.events


async def test_traffic_stops_promptly_when_asked(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        setup(conn)
    stop = asyncio.Event()
    task = asyncio.create_task(Traffic(db_url, rate=0.2).run(stop))
    await asyncio.sleep(0)  # let it start; the stop below is what we measure
    stop.set()
    stats = await asyncio.wait_for(task, timeout=5)
    assert stats.errors == 0


# --- the receiver's webhooks ------------------------------------------------------------------


def test_register_webhook_moves_the_url_and_keeps_the_secret(
    conn: psycopg.Connection[Any],
) -> None:
    wid, secret = register_webhook(
        conn, "demo receiver", "http://127.0.0.1:1/hooks/main", ["*"], "d"
    )
    assert secret.startswith("whsec_")
    conn.execute("UPDATE outbox.webhooks SET is_active = false, disabled_reason = 'x'")
    again, same = register_webhook(
        conn, "demo receiver", "http://127.0.0.1:2/hooks/main", ["*"], "d"
    )
    assert (again, same) == (wid, secret)
    row = conn.execute(
        "SELECT url, is_active, disabled_reason, event_types FROM outbox.webhooks"
    ).fetchone()
    assert row == ("http://127.0.0.1:2/hooks/main", True, None, ["*"])
