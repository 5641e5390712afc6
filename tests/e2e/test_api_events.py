"""REST: /events (replay and backfill), /event-types and /metrics."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import psycopg
import pytest
import websockets

import outbox
from outbox.api.config import Settings
from outbox.cursor import Cursor
from tests.support.api import TOKEN, add_delivery, api_client, create_webhook
from tests.support.servers import serve_app

EVENT_KEYS = {"id", "type", "payload", "timestamp", "cursor", "key", "traceparent"}


@pytest.fixture
async def client(settings: Settings) -> Any:
    async with api_client(settings) as c:
        yield c


def publish(conn: psycopg.Connection[Any], event_type: str, payload: Any) -> int:
    with conn.transaction():
        return outbox.publish(conn, event_type, payload)


async def read_all(client: httpx.AsyncClient, query: str, since: str | None = None) -> Any:
    """Follow next_cursor until has_more is false; return (events, last cursor, pages)."""
    events: list[dict[str, Any]] = []
    pages = 0
    while True:
        url = f"/events?{query}" + (f"&since={since}" if since else "")
        resp = await client.get(url)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        events += page["items"]
        since = page["next_cursor"]
        pages += 1
        assert pages < 50, "paging did not end"
        if not page["has_more"]:
            return events, since, pages


async def test_events_page_through_the_whole_log(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    ids = [publish(conn, "user.created", {"n": i}) for i in range(25)]
    first = (await client.get("/events?limit=10")).json()
    assert len(first["items"]) == 10 and first["has_more"] is True
    assert first["items"][0].keys() == EVENT_KEYS
    e = first["items"][0]
    assert (e["id"], e["type"], e["payload"]) == (ids[0], "user.created", {"n": 0})
    assert e["timestamp"].endswith("+00:00")

    events, cursor, pages = await read_all(client, "limit=10")
    # 10 + 10 + a short last page of 5 that already says has_more false.
    assert [e["id"] for e in events] == ids and pages == 3
    # At the end: nothing new, the cursor stays usable.
    again = (await client.get(f"/events?since={cursor}")).json()
    assert (again["items"], again["has_more"]) == ([], False)
    more = publish(conn, "user.created", {"n": 25})
    tail = (await client.get(f"/events?since={cursor}")).json()
    assert [e["id"] for e in tail["items"]] == [more]


async def test_events_filter_by_type_and_pattern(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    types = ["user.created", "ticket.created", "ticket.status_changed", "payment.completed"]
    ids = {t: publish(conn, t, {"t": t}) for t in types * 3}
    assert ids
    events, _, _ = await read_all(client, "event_type=ticket.*&limit=2")
    assert {e["type"] for e in events} == {"ticket.created", "ticket.status_changed"}
    assert len(events) == 6
    events, _, _ = await read_all(client, "event_type=user.created,payment.completed")
    assert [e["type"] for e in events] == ["user.created", "payment.completed"] * 3
    # A filter that matches nothing still reaches the end (has_more false).
    events, _, _ = await read_all(client, "event_type=nothing.here&limit=1")
    assert events == []


async def test_a_late_commit_is_not_skipped(
    client: httpx.AsyncClient, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(db_url) as slow:
        early = outbox.publish(slow, "user.created", {"slow": True})  # not committed yet
        later = publish(conn, "user.created", {"slow": False})
        assert early < later
        page = (await client.get("/events")).json()
        assert [e["id"] for e in page["items"]] == [later]
        slow.commit()
    page = (await client.get(f"/events?since={page['next_cursor']}")).json()
    assert [e["id"] for e in page["items"]] == [early]


async def test_bad_cursor_type_or_limit_is_a_422(client: httpx.AsyncClient) -> None:
    for query, field in [
        ("since=not-a-cursor", "since: malformed cursor"),
        ("since=" + "A" * 10, "since: malformed cursor"),
        ("event_type=Bad.Type", "event_type: invalid event type pattern"),
        ("event_type=user.created,,", "event_type: invalid event type pattern"),
        ("limit=0", "limit:"),
        ("limit=1001", "limit:"),
    ]:
        resp = await client.get(f"/events?{query}")
        assert resp.status_code == 422, query
        assert resp.json()["detail"].startswith(field), resp.json()


async def test_an_expired_cursor_is_a_410(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    ids = [publish(conn, "user.created", {"n": i}) for i in range(3)]
    old = Cursor(ids[0]).encode()
    assert (await client.get(f"/events?since={old}")).status_code == 200
    # Retention deleted the first two events and recorded its watermark.
    with conn.transaction():
        conn.execute("DELETE FROM outbox.events WHERE id <= %s", (ids[1],))
        conn.execute(
            "INSERT INTO outbox.relay_state (name, value) VALUES ('retention_watermark', %s)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (str(ids[1]),),
        )
    resp = await client.get(f"/events?since={old}")
    assert resp.status_code == 410
    assert resp.json()["detail"].startswith("cursor expired")
    # Without since= the client starts from the oldest retained event.
    assert [e["id"] for e in (await client.get("/events")).json()["items"]] == [ids[2]]


async def test_next_cursor_resumes_on_the_websocket(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    """Backfill over REST, then continue live on /ws from the same cursor."""
    before = [publish(conn, "user.created", {"n": i}) for i in range(3)]
    async with serve_app(settings) as server:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"X-API-Key": TOKEN}
        ) as client:
            page = (await client.get("/events")).json()
        assert [e["id"] for e in page["items"]] == before
        after = [publish(conn, "user.created", {"n": i}) for i in range(3, 5)]
        url = f"{server.ws_url}?token={TOKEN}&since={page['next_cursor']}"
        async with websockets.connect(url) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["type"] == "connection"
            got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in after]
    assert [m["id"] for m in got] == after


async def test_event_types_seen_and_tracked(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("CREATE TABLE tickets (id serial PRIMARY KEY, status text)")
    outbox.track(
        conn,
        [
            outbox.Rule("tickets", "insert", "ticket.created"),
            outbox.Rule("tickets", "update", "ticket.status_changed", of=("status",)),
        ],
    )
    conn.execute("INSERT INTO tickets (status) VALUES ('open')")
    publish(conn, "user.created", {})
    resp = await client.get("/event-types")
    assert resp.status_code == 200
    body = resp.json()
    assert body["window"] > 0
    by_type = {item["event_type"]: item for item in body["items"]}
    assert list(by_type) == ["ticket.created", "ticket.status_changed", "user.created"]
    assert by_type["ticket.created"]["seen"] is True
    assert by_type["ticket.created"]["tracked"] == [
        {"table": "public.tickets", "operation": "insert"}
    ]
    changed = by_type["ticket.status_changed"]
    assert (changed["seen"], changed["last_seen_at"]) == (False, None)
    assert changed["tracked"] == [{"table": "public.tickets", "operation": "update"}]
    assert by_type["user.created"]["tracked"] == []


_SAMPLE = re.compile(
    r'^[a-z_:][a-z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+Inf]+$'
)


async def test_metrics_is_prometheus_text_with_delivery_gauges(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client, is_active=False)
    for status in ("pending", "pending", "failed", "success"):
        add_delivery(conn, hook["id"], status=status)
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = resp.text.splitlines()
    types = [ln.split()[2] for ln in lines if ln.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a metric is exported twice"
    for line in lines:
        assert line.startswith("# ") or _SAMPLE.match(line), line
    # (prometheus-client writes every sample value as a float.)
    assert 'outbox_deliveries{status="pending"} 2.0' in lines
    assert 'outbox_deliveries{status="failed"} 1.0' in lines
    assert 'outbox_deliveries{status="success"} 1.0' in lines
    assert "outbox_delivery_queue_depth 2.0" in lines
    # The list: events read, feed lag, attempt latency, WebSocket clients.
    for name in (
        "outbox_events_read_total",
        "outbox_feed_lag_events",
        "outbox_delivery_attempt_seconds",
        "outbox_ws_clients",
    ):
        assert name in types
