"""`outbox demo`'s parts: the domain and its six events, traffic, the receiver, options."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from outbox.cli.demo_domain import (
    EVENT_TYPES,
    Receiver,
    Traffic,
    generate_secret,
    register_webhook,
    setup,
    verify_seed_signature,
    verify_standard_signature,
)
from outbox.errors import ConfigError
from tests.conftest import wait_for


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


def test_traffic_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError):
        Traffic("", rate=0)


# --- signatures and the receiver -------------------------------------------------------------


def test_seed_signature_matches_the_seed_verifier() -> None:
    secret = "optional-secret-for-signing"
    payload = {"user_id": 123, "username": "testuser", "a": [1, 2]}
    body = json.dumps(payload, sort_keys=True).encode()
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert verify_seed_signature(secret, body, sig)
    assert not verify_seed_signature(secret, body + b" ", sig)
    assert not verify_seed_signature(secret, body, None)
    assert not verify_seed_signature(secret, body, sig.replace("sha256=", "sha1="))


def test_standard_signature_agrees_with_the_standardwebhooks_library() -> None:
    from datetime import UTC, datetime

    from standardwebhooks import Webhook

    secret = generate_secret()
    body = b'{"a": 1}'
    now = datetime.now(UTC)
    header = Webhook(secret).sign("evt_42", now, body.decode())
    ts = str(int(now.timestamp()))
    assert verify_standard_signature(secret, "evt_42", ts, body, header)
    # Several signatures during a rotation: any valid one is enough.
    assert verify_standard_signature(secret, "evt_42", ts, body, f"v1,AAAA {header}")
    assert not verify_standard_signature(secret, "evt_43", ts, body, header)
    assert not verify_standard_signature(secret, "evt_42", str(int(ts) - 3600), body, header)
    assert not verify_standard_signature(generate_secret(), "evt_42", ts, body, header)


def _sign(secret: str, event_id: int, body: bytes) -> dict[str, str]:
    from outbox.cli.demo_domain import _key

    ts = str(int(time.time()))
    msg_id = f"evt_{event_id}"
    std = base64.b64encode(
        hmac.new(_key(secret), f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    return {
        "content-type": "application/json",
        "x-webhook-event": "user.created",
        "x-webhook-signature": "sha256="
        + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": f"v1,{std}",
    }


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: server.started or task.done(), timeout=10, what="receiver")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


async def test_receiver_accepts_signed_requests_and_refuses_forged_ones() -> None:
    main, flaky = generate_secret(), "plain-secret"
    receiver = Receiver({"main": main, "flaky": flaky}, fail_rate=1.0)
    body = json.dumps({"user_id": 1}, sort_keys=True).encode()
    async with running(receiver.app) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/hooks/main", content=body, headers=_sign(main, 1, body))
        assert r.status_code == 204
        r = await client.post("/hooks/main", content=body, headers=_sign(main, 1, body))
        assert r.status_code == 204  # a retry: same webhook-id
        forged = _sign(main, 2, body)
        r = await client.post("/hooks/main", content=body + b" ", headers=forged)
        assert r.status_code == 401
        r = await client.post("/hooks/main", content=body, headers=_sign(flaky, 3, body))
        assert r.status_code == 401  # signed with another endpoint's secret
        r = await client.post("/hooks/flaky", content=body, headers=_sign(flaky, 4, body))
        assert r.status_code == 503  # fail_rate 1.0: refused on purpose
        r = await client.post("/hooks/nope", content=body, headers=_sign(main, 5, body))
        assert r.status_code == 404
    s = receiver.stats["main"]
    assert (s.ok, s.duplicates, s.bad_signature) == (2, 1, 2)
    assert s.by_type["user.created"] == 2
    assert receiver.stats["flaky"].refused == 1


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


# --- options ---------------------------------------------------------------------------------


def _args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict(
        rate=None,
        duration=None,
        no_traffic=False,
        host=None,
        port=None,
        database_url=None,
        embedded=False,
        data_dir=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_options_flags_override_env_and_errors_name_the_culprit() -> None:
    from outbox.cli.demo import options

    env = {
        "OUTBOX_DEMO_RATE": "50",
        "OUTBOX_PORT": "9000",
        "OUTBOX_DEMO_DURATION": "2m",
        "OUTBOX_DEMO_NO_TRAFFIC": "true",
        "OUTBOX_DATABASE_URL": "postgresql:///x",
    }
    o = options(_args(), env)
    assert (o.rate, o.port, o.duration, o.traffic) == (50.0, 9000, 120.0, False)
    assert o.database_url == "postgresql:///x"
    o = options(_args(rate="7", port="0", duration="3s", database_url="postgresql:///y"), env)
    assert (o.rate, o.port, o.duration, o.database_url) == (7.0, 0, 3.0, "postgresql:///y")
    o = options(_args(), {})
    assert (o.rate, o.port, o.duration, o.traffic, o.host) == (5.0, 8080, None, True, "127.0.0.1")

    for args, env, culprit in [
        (_args(rate="fast"), {}, "--rate"),
        (_args(rate="0"), {}, "--rate"),
        (_args(), {"OUTBOX_DEMO_RATE": "-3"}, "OUTBOX_DEMO_RATE"),
        (_args(port="70000"), {}, "--port"),
        (_args(), {"OUTBOX_PORT": "http"}, "OUTBOX_PORT"),
        (_args(duration="soon"), {}, "--duration"),
        (_args(duration="0s"), {}, "--duration"),
        (_args(), {"OUTBOX_DEMO_DURATION": "forever"}, "OUTBOX_DEMO_DURATION"),
    ]:
        with pytest.raises(ConfigError, match=f"^{culprit}: "):
            options(args, env)
