"""Event keys and the writer's trace context: stored at capture and publish,
carried out on the feed (/ws frames, /events items) and the webhook envelope."""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlmodel import Session

import outbox
from outbox.capture import Rule, track
from outbox.cursor import Cursor
from outbox.errors import CaptureError
from outbox.relay.feed import read_batch
from outbox.tracing import aset_trace_context, set_trace_context
from tests.support.tracing import BAD, TP, TP2


def _engine(db_url: str) -> Any:
    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(db_url))


def rows(conn: psycopg.Connection[Any]) -> list[tuple[str, str | None, str | None, str | None]]:
    return [
        (r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT event_type, key, traceparent, tracestate FROM outbox.events ORDER BY id"
        )
    ]


@pytest.fixture
def orders(conn: psycopg.Connection[Any]) -> str:
    conn.execute(
        "CREATE TABLE public.orders (id serial PRIMARY KEY, tenant text, status text, secret text)"
    )
    return "orders"


def test_publish_sql_two_argument_form_still_works(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT outbox.publish('user.created', '{}')")
    conn.execute("SELECT outbox.publish('user.created', '{}', key => 'user:42')")
    conn.execute(f"SELECT outbox.publish('user.created', '{{}}', traceparent => '{TP}')")
    assert rows(conn) == [
        ("user.created", None, None, None),
        ("user.created", "user:42", None, None),
        ("user.created", None, TP, None),
    ]


def test_publish_python_sync_async_session(conn: psycopg.Connection[Any], db_url: str) -> None:
    outbox.publish(conn, "user.created", {"n": 1}, key="user:1", traceparent=TP)
    outbox.publish(conn, "user.created", {"n": 2})
    engine = _engine(db_url)
    with Session(engine) as s, s.begin():
        outbox.publish(s, "user.created", {"n": 3}, key="user:3", traceparent=TP2)
    engine.dispose()
    assert rows(conn) == [
        ("user.created", "user:1", TP, None),
        ("user.created", None, None, None),
        ("user.created", "user:3", TP2, None),
    ]


async def test_publish_async(aconn: psycopg.AsyncConnection[Any]) -> None:
    async with aconn.transaction():
        await outbox.publish(aconn, "user.created", {}, key="k", traceparent=TP)
    cur = await aconn.execute("SELECT key, traceparent FROM outbox.events")
    assert await cur.fetchall() == [("k", TP)]


def test_publish_rejects_a_non_text_key(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(TypeError, match="key must be a str"):
        outbox.publish(conn, "user.created", {}, key=42)  # type: ignore[arg-type]


def test_set_local_traceparent_is_stored_on_every_event_of_the_transaction(
    conn: psycopg.Connection[Any], orders: str
) -> None:
    track(
        conn,
        [
            Rule(orders, "insert", "order.created"),
            Rule(orders, "update", "order.updated"),
            Rule(orders, "delete", "order.deleted"),
        ],
    )
    with conn.transaction():
        conn.execute(f"SET LOCAL outbox.traceparent = '{TP}'")
        conn.execute("SET LOCAL outbox.tracestate = 'vendor=abc'")
        conn.execute("INSERT INTO orders (status) VALUES ('new'), ('new')")
        conn.execute("UPDATE orders SET status = 'paid'")
        conn.execute("DELETE FROM orders")
        outbox.publish(conn, "order.audited", {})
    conn.execute("INSERT INTO orders (status) VALUES ('later')")  # next transaction: none
    got = rows(conn)
    assert [r[2:] for r in got[:7]] == [(TP, "vendor=abc")] * 7
    assert got[7] == ("order.created", None, None, None)


@pytest.mark.parametrize("bad", BAD)
def test_invalid_traceparent_is_ignored_with_a_warning(
    conn: psycopg.Connection[Any], orders: str, bad: str
) -> None:
    track(conn, [Rule(orders, "insert", "order.created")])
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(f"{d.severity} {d.message_primary}"))
    with conn.transaction():
        conn.execute("SELECT set_config('outbox.traceparent', %s, true)", (bad,))
        conn.execute("INSERT INTO orders (status) VALUES ('new')")
        conn.execute("INSERT INTO orders (status) VALUES ('new')")
        outbox.publish(conn, "order.audited", {})
    assert [r[2] for r in rows(conn)] == [None, None, None]
    # Once per transaction, not once per row: the bad value is cleared.
    assert len([n for n in notices if "invalid traceparent" in n]) == 1
    assert notices[0].startswith("WARNING")


def test_publish_with_an_invalid_traceparent_still_writes(
    conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "outbox.tracing"):
        outbox.publish(conn, "user.created", {}, traceparent="nope")
    assert rows(conn) == [("user.created", None, None, None)]
    assert "invalid traceparent" in caplog.text


def test_set_trace_context_explicit_and_from_opentelemetry(
    conn: psycopg.Connection[Any], orders: str
) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    track(conn, [Rule(orders, "insert", "order.created")])
    with conn.transaction():
        assert set_trace_context(conn, TP2) == TP2
        conn.execute("INSERT INTO orders (status) VALUES ('a')")
    ctx = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x")]),
    )
    with trace.use_span(NonRecordingSpan(ctx)), conn.transaction():
        assert set_trace_context(conn) == TP
        conn.execute("INSERT INTO orders (status) VALUES ('b')")
    with conn.transaction():  # no current span: nothing set, nothing stored
        assert set_trace_context(conn) is None
        conn.execute("INSERT INTO orders (status) VALUES ('c')")
    assert [r[2:] for r in rows(conn)] == [(TP2, None), (TP, "vendor=x"), (None, None)]


async def test_set_trace_context_async(aconn: psycopg.AsyncConnection[Any]) -> None:
    async with aconn.transaction():
        assert await set_trace_context(aconn, TP) == TP
        assert await aset_trace_context(aconn, TP2, "a=1") == TP2
        await outbox.publish(aconn, "user.created", {})
    cur = await aconn.execute("SELECT traceparent, tracestate FROM outbox.events")
    assert await cur.fetchall() == [(TP2, "a=1")]


def test_set_trace_context_session(conn: psycopg.Connection[Any], db_url: str) -> None:
    engine = _engine(db_url)
    with Session(engine) as s, s.begin():
        set_trace_context(s, TP)
        outbox.publish(s, "user.created", {})
    engine.dispose()
    assert rows(conn) == [("user.created", None, TP, None)]


def test_track_key_single_and_several_columns(conn: psycopg.Connection[Any], orders: str) -> None:
    track(
        conn,
        [
            Rule(orders, "insert", "order.created", key=("id",)),
            Rule(orders, "update", "order.updated", key=("tenant", "id")),
            Rule(orders, "delete", "order.deleted", key=("tenant", "status")),
        ],
    )
    conn.execute("INSERT INTO orders (id, tenant, status) VALUES (7, 'acme', 'new')")
    conn.execute("UPDATE orders SET status = 'paid'")
    conn.execute("UPDATE orders SET tenant = NULL")
    conn.execute("UPDATE orders SET status = NULL")
    conn.execute("DELETE FROM orders")  # OLD row: tenant and status both NULL
    assert [r[:2] for r in rows(conn)] == [
        ("order.created", "7"),
        ("order.updated", "acme:7"),
        ("order.updated", ":7"),  # a NULL part is empty
        ("order.updated", ":7"),
        ("order.deleted", None),  # every part NULL: no key
    ]
    assert {r.event_type: r.key for r in outbox.tracked(conn)}["order.updated"] == (
        "tenant",
        "id",
    )


def test_key_may_not_expose_an_excluded_column(conn: psycopg.Connection[Any], orders: str) -> None:
    with pytest.raises(CaptureError, match=r"^key: column 'secret'"):
        track(conn, [Rule(orders, "insert", "order.created", exclude=("secret",), key=("secret",))])
    with pytest.raises(CaptureError, match=r"^key: unknown column 'nope'"):
        track(conn, [Rule(orders, "insert", "order.created", key=("nope",))])


async def test_feed_events_carry_key_and_traceparent(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    outbox.publish(conn, "user.created", {"n": 1}, key="user:1", traceparent=TP)
    outbox.publish(conn, "user.created", {"n": 2})
    batch = await read_batch(aconn, Cursor(0))
    first, second = (json.loads(e.frame) for e in batch.events)
    assert (first["key"], first["traceparent"]) == ("user:1", TP)
    assert (second["key"], second["traceparent"]) == (None, None)
    assert batch.events[0].as_dict()["key"] == "user:1"
    assert batch.events[1].as_dict()["traceparent"] is None
