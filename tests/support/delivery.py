"""Webhook and delivery rows made directly in SQL, as the dispatcher would,
and an in-process delivery worker on fast settings."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from outbox.api.config import Settings
from outbox.publish import apublish
from outbox.relay.config import parse_schedule
from outbox.relay.delivery.worker import DeliveryWorker
from outbox.relay.metrics import Metrics

TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def create_webhook(
    conn: psycopg.AsyncConnection[Any],
    url: str,
    *,
    secret: str = TEST_SECRET,
    event_types: tuple[str, ...] = ("*",),
    payload_format: str = "raw",
    name: str = "hook",
    headers: dict[str, str] | None = None,
    ordering: str = "none",
) -> int:
    cur = await conn.execute(
        "INSERT INTO outbox.webhooks"
        " (name, url, event_types, secret, payload_format, headers, ordering)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (name, url, list(event_types), secret, payload_format, Jsonb(headers or {}), ordering),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def enqueue(
    conn: psycopg.AsyncConnection[Any], webhook_id: int, event_type: str, payload: Any
) -> tuple[int, int]:
    """Publish an event and its delivery to one webhook; ``(event_id, delivery_id)``."""
    async with conn.transaction():
        event_id = await apublish(conn, event_type, payload)
        cur = await conn.execute(
            "INSERT INTO outbox.deliveries (webhook_id, event_id, event_type) "
            "VALUES (%s, %s, %s) RETURNING id",
            (webhook_id, event_id, event_type),
        )
        row = await cur.fetchone()
    assert row is not None
    return event_id, int(row[0])


async def enqueue_many(
    conn: psycopg.AsyncConnection[Any],
    webhook_id: int,
    payloads: list[Any],
    event_type: str = "load.item",
) -> int:
    """Many events and deliveries in one statement; returns how many."""
    cur = await conn.execute(
        "WITH ev AS (SELECT outbox.publish(%s, p) AS id FROM unnest(%s::jsonb[]) AS p) "
        "INSERT INTO outbox.deliveries (webhook_id, event_id, event_type) "
        "SELECT %s, id, %s FROM ev",
        (event_type, [Jsonb(p) for p in payloads], webhook_id, event_type),
    )
    return cur.rowcount


async def delivery(conn: psycopg.AsyncConnection[Any], delivery_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute("SELECT * FROM outbox.deliveries WHERE id = %s", (delivery_id,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def attempts(conn: psycopg.AsyncConnection[Any], delivery_id: int) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute(
            "SELECT * FROM outbox.delivery_attempts WHERE delivery_id = %s ORDER BY id",
            (delivery_id,),
        )
        return await cur.fetchall()


async def webhook(conn: psycopg.AsyncConnection[Any], webhook_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute("SELECT * FROM outbox.webhooks WHERE id = %s", (webhook_id,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def events(conn: psycopg.AsyncConnection[Any], event_type: str) -> list[Any]:
    cur = await conn.execute(
        "SELECT payload FROM outbox.events WHERE event_type = %s ORDER BY id", (event_type,)
    )
    return [r[0] for r in await cur.fetchall()]


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def fast(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "retry_schedule": parse_schedule("50ms,50ms,50ms"),
        "webhook_timeout": 2.0,
        "poll_interval": 0.2,
        "lease": timedelta(seconds=10),
        "webhook_allow_networks": LOOPBACK,
    }
    values.update(overrides)
    return Settings.load(database_url=db_url, **values)


def new_worker(settings: Settings, **kwargs: Any) -> DeliveryWorker:
    """A worker wired as the service wires it: its group, the database, the poll timer."""
    return DeliveryWorker(
        settings.delivery,
        Metrics(),
        database_url=settings.database.url,
        poll_interval=settings.feed.poll_interval,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def worker(settings: Settings, **kwargs: Any) -> AsyncIterator[DeliveryWorker]:
    import asyncio

    w = new_worker(settings, **kwargs)
    task = asyncio.create_task(w.run(), name="test-worker")
    try:
        yield w
    finally:
        await asyncio.wait_for(w.stop(), timeout=30)
        await asyncio.wait_for(task, timeout=10)


async def status_is(conn: psycopg.AsyncConnection[Any], delivery_id: int, *statuses: str) -> bool:
    return (await delivery(conn, delivery_id))["status"] in statuses


async def succeeded(conn: psycopg.AsyncConnection[Any], webhook_id: int, n: int) -> bool:
    """At least ``n`` of the webhook's deliveries ended ``success``."""
    cur = await conn.execute(
        "SELECT count(*) FROM outbox.deliveries WHERE webhook_id = %s AND status = 'success'",
        (webhook_id,),
    )
    row = await cur.fetchone()
    return row is not None and row[0] >= n
