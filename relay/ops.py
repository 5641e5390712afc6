"""Operator actions on deliveries and secrets (the API's verbs call these).

Each takes an async psycopg connection, runs in one transaction of its own
(nested as a savepoint if the caller already has one open) and rings the
``outbox_deliveries`` doorbell, so every delivery worker picks the work up
at once instead of at its next poll.

A retried or recovered delivery continues its attempt count: a delivery
that had used up its retry schedule gets one more attempt, and is ``failed``
again (with a new ``webhook.delivery_failed`` event) if that one fails too.
Deliveries of an inactive webhook stay pending until it is active again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row, scalar_row

from outbox.names import DELIVERIES_CHANNEL
from outbox.relay.signing import generate_secret
from outbox.sqlfiles import query

AsyncConn = psycopg.AsyncConnection[Any]
_SQL = "ops.sql"


async def wake(conn: AsyncConn) -> None:
    """Ring the deliveries doorbell (at commit): every worker looks for due work."""
    # NOTIFY is delivered at commit, so a rolled-back action rings nothing.
    await conn.execute(query("deliveries_wake", _SQL), {"channel": DELIVERIES_CHANNEL})


async def retry_delivery(
    conn: AsyncConn, webhook_id: int, delivery_id: int
) -> dict[str, Any] | None:
    """Make a delivery due now (pending again even if it failed or succeeded).

    Returns the delivery (API fields plus ``event_id``), or ``None`` if the
    webhook has no such delivery. A delivery a worker is sending right now
    is left alone: it is already being attempted.
    """
    params = {"webhook_id": webhook_id, "delivery_id": delivery_id}
    async with conn.transaction():
        await conn.execute(query("ops_retry_delivery", _SQL), params)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("ops_delivery", _SQL), params)
            row = await cur.fetchone()
        if row is not None:
            await wake(conn)
    return row


async def recover_failed(conn: AsyncConn, webhook_id: int, since: datetime) -> int:
    """Re-queue the webhook's failed deliveries created at or after ``since``; return how many."""
    async with conn.transaction():
        cur = await conn.execute(
            query("ops_recover_failed", _SQL), {"webhook_id": webhook_id, "since": since}
        )
        count = cur.rowcount
        if count:
            await wake(conn)
    return count


async def send_test(conn: AsyncConn, webhook_id: int) -> int | None:
    """Publish a ``webhook.test`` event for this webhook only; return the delivery id.

    ``None`` if there is no such webhook (nothing is published then).
    """
    async with conn.transaction():
        cur = conn.cursor(row_factory=scalar_row)
        await cur.execute(query("ops_send_test", _SQL), {"webhook_id": webhook_id})
        delivery_id = await cur.fetchone()
        if delivery_id is None:
            return None
        await wake(conn)
    return int(delivery_id)


async def rotate_secret(conn: AsyncConn, webhook_id: int, overlap: timedelta) -> str | None:
    """Give the webhook a new generated secret and return it (``None``: no such webhook).

    For ``overlap`` the old secret stays valid: requests carry a Standard
    Webhooks signature made with each secret, so receivers can switch over
    at their own pace.
    """
    secret = generate_secret()
    async with conn.transaction():
        cur = await conn.execute(
            query("ops_rotate_secret", _SQL),
            {"webhook_id": webhook_id, "overlap": overlap, "secret": secret},
        )
        if cur.rowcount == 0:
            return None
    return secret
