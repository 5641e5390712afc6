"""Operator actions (relay/delivery/ops.py) against a real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from outbox.relay.delivery import ops
from tests.support.delivery import create_webhook, delivery, enqueue, events, webhook

Conn = psycopg.AsyncConnection[Any]


async def _fail(conn: Conn, delivery_id: int, *, created: datetime | None = None) -> None:
    await conn.execute(
        "UPDATE outbox.deliveries SET status = 'failed', attempt_number = 8, "
        "due_at = now() + interval '1 day', error_message = 'HTTP 500', "
        "created_at = coalesce(%s, created_at) WHERE id = %s",
        (created, delivery_id),
    )


async def _notified(listen: Conn) -> bool:
    async def first() -> bool:
        async for _ in listen.notifies():
            return True
        return False

    return await asyncio.wait_for(first(), timeout=5)


async def test_retry_failed_delivery(aconn: Conn, db_url: str) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/hook")
    _, did = await enqueue(aconn, wid, "user.created", {"user_id": 1})
    await _fail(aconn, did)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listen:
        await listen.execute("LISTEN outbox_deliveries")
        row = await ops.retry_delivery(aconn, wid, did)
        assert await _notified(listen)
    assert row is not None
    assert row["id"] == did and row["status"] == "pending"
    assert row["payload"] == {"user_id": 1} and row["event_type"] == "user.created"
    d = await delivery(aconn, did)
    assert d["due_at"] <= datetime.now(UTC) and d["next_retry_at"] is None
    assert d["attempt_number"] == 8  # the count continues: one more attempt


async def test_retry_unknown_or_other_webhook(aconn: Conn) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/hook")
    other = await create_webhook(aconn, "http://127.0.0.1:9/other")
    _, did = await enqueue(aconn, wid, "user.created", {})
    assert await ops.retry_delivery(aconn, other, did) is None
    assert await ops.retry_delivery(aconn, wid, did + 1000) is None


async def test_retry_leaves_an_in_flight_delivery_alone(aconn: Conn) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/hook")
    _, did = await enqueue(aconn, wid, "user.created", {})
    await aconn.execute(
        "UPDATE outbox.deliveries SET locked_by = 'w1', due_at = now() + interval '1 minute' "
        "WHERE id = %s",
        (did,),
    )
    before = await delivery(aconn, did)
    row = await ops.retry_delivery(aconn, wid, did)
    assert row is not None and row["status"] == "pending"
    after = await delivery(aconn, did)
    assert after["due_at"] == before["due_at"] and after["locked_by"] == "w1"


async def test_retry_successful_delivery_resends(aconn: Conn) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/hook")
    _, did = await enqueue(aconn, wid, "user.created", {})
    await aconn.execute(
        "UPDATE outbox.deliveries SET status = 'success', delivered_at = now() WHERE id = %s",
        (did,),
    )
    row = await ops.retry_delivery(aconn, wid, did)
    assert row is not None and row["status"] == "pending" and row["delivered_at"] is None


async def test_recover_failed_since(aconn: Conn) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/hook")
    other = await create_webhook(aconn, "http://127.0.0.1:9/other")
    now = datetime.now(UTC)
    old = [(await enqueue(aconn, wid, "a.b", {"n": i}))[1] for i in range(2)]
    new = [(await enqueue(aconn, wid, "a.b", {"n": i}))[1] for i in range(3)]
    _, pending = await enqueue(aconn, wid, "a.b", {})
    _, elsewhere = await enqueue(aconn, other, "a.b", {})
    for did in old:
        await _fail(aconn, did, created=now - timedelta(days=2))
    for did in [*new, elsewhere]:
        await _fail(aconn, did)
    assert await ops.recover_failed(aconn, wid, now - timedelta(hours=1)) == 3
    assert [(await delivery(aconn, d))["status"] for d in new] == ["pending"] * 3
    assert [(await delivery(aconn, d))["status"] for d in old] == ["failed"] * 2
    assert (await delivery(aconn, elsewhere))["status"] == "failed"
    assert (await delivery(aconn, pending))["status"] == "pending"
    assert await ops.recover_failed(aconn, wid, now - timedelta(hours=1)) == 0


async def test_send_test_creates_one_delivery(aconn: Conn) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/hook", name="billing")
    await create_webhook(aconn, "http://127.0.0.1:9/other")
    did = await ops.send_test(aconn, wid)
    assert did is not None
    d = await delivery(aconn, did)
    assert d["webhook_id"] == wid and d["event_type"] == "webhook.test"
    assert d["status"] == "pending"
    [payload] = await events(aconn, "webhook.test")
    assert payload["webhook_id"] == wid and payload["name"] == "billing" and payload["test"]
    cur = await aconn.execute("SELECT count(*) FROM outbox.deliveries")
    assert await cur.fetchone() == (1,)


async def test_send_test_unknown_webhook(aconn: Conn) -> None:
    assert await ops.send_test(aconn, 12345) is None
    assert await events(aconn, "webhook.test") == []


async def test_send_test_joins_the_callers_transaction(aconn: Conn) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/hook")
    try:
        async with aconn.transaction():
            assert await ops.send_test(aconn, wid) is not None
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert await events(aconn, "webhook.test") == []


async def test_rotate_secret_keeps_previous_for_overlap(aconn: Conn) -> None:
    wid = await create_webhook(aconn, "http://127.0.0.1:9/hook", secret="old-secret")
    secret = await ops.rotate_secret(aconn, wid, timedelta(hours=2))
    assert secret is not None and secret.startswith("whsec_")
    w = await webhook(aconn, wid)
    assert w["secret"] == secret and w["previous_secret"] == "old-secret"
    left = w["previous_secret_expires_at"] - datetime.now(UTC)
    assert timedelta(hours=1, minutes=59) < left <= timedelta(hours=2)

    third = await ops.rotate_secret(aconn, wid, timedelta(0))
    w = await webhook(aconn, wid)
    assert w["secret"] == third and w["previous_secret"] is None
    assert w["previous_secret_expires_at"] is None
    assert await ops.rotate_secret(aconn, 9999, timedelta(hours=1)) is None
