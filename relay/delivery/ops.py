"""Operator actions on deliveries and secrets (the API's verbs call these).

Each takes an async psycopg connection, runs in one transaction of its own
(nested as a savepoint if the caller already has one open) and rings the
``outbox_deliveries`` doorbell, so every delivery worker picks the work up
at once instead of at its next poll.

A retried or recovered delivery continues its attempt count: a delivery
that had used up its retry schedule gets one more attempt, and is ``failed``
again (with a new ``webhook.delivery_failed`` event) if that one fails too.
Deliveries of an inactive webhook stay pending until it is active again.

Per-key order (``sql/012_key_ordering.sql``): the actions that add to a
key's queue or end its head take the webhook's lock first
(:func:`outbox.relay.delivery.store.lock_webhooks`) and promote after, like the
dispatcher and the flush. A delivery waiting in its queue is never made due
by an action (:class:`Refused`); its head can be retried now or skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row, scalar_row

from outbox.names import DELIVERIES_CHANNEL
from outbox.relay.delivery import store as delivery_db
from outbox.relay.delivery.signing import generate_secret
from outbox.sqlfiles import query

AsyncConn = psycopg.AsyncConnection[Any]
T = TypeVar("T")
_SQL = "ops.sql"
# An action takes the webhook lock, then delivery rows; a flush recording a
# head takes them the other way round. The rare cycle is broken by the
# server's deadlock detector: the action then starts again.
_DEADLOCK_TRIES = 3


class Refused(Exception):
    """The action does not apply to the delivery as it is now (the API's 409)."""


async def _again_on_deadlock(action: Callable[[], Awaitable[T]]) -> T:
    for tries_left in range(_DEADLOCK_TRIES - 1, -1, -1):
        try:
            return await action()
        except psycopg.errors.DeadlockDetected:
            if not tries_left:
                raise
    raise AssertionError("unreachable")


async def _state(conn: AsyncConn, params: dict[str, Any]) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query("ops_delivery_state", _SQL), params)
        return await cur.fetchone()


def _waiting(state: dict[str, Any]) -> Refused:
    return Refused(
        f"the delivery waits in the queue of key {state['key']!r} behind delivery "
        f"{state['head_id']}: retry or skip that one"
    )


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
    is left alone: it is already being attempted. For a webhook ordered by
    key, a finished keyed delivery joins its key's queue again (it is sent
    now if the queue is empty, else when the deliveries before it ended);
    one waiting in the queue raises :class:`Refused`.
    """
    params = {"webhook_id": webhook_id, "delivery_id": delivery_id}

    async def action() -> dict[str, Any] | None:
        async with conn.transaction():
            await delivery_db.lock_webhooks(conn, [webhook_id])
            cur = await conn.execute(query("ops_retry_delivery", _SQL), params)
            changed = await cur.fetchone()
            if changed is None:
                state = await _state(conn, params)
                if state is not None and state["waiting"]:
                    raise _waiting(state)
            elif changed[1] is not None:
                await delivery_db.promote(conn, [(webhook_id, changed[1])])
            async with conn.cursor(row_factory=dict_row) as cur2:
                await cur2.execute(query("ops_delivery", _SQL), params)
                row = await cur2.fetchone()
            if row is not None:
                await wake(conn)
        return row

    return await _again_on_deadlock(action)


async def skip_delivery(
    conn: AsyncConn, webhook_id: int, delivery_id: int, reason: str | None
) -> dict[str, Any] | None:
    """End a pending delivery ``failed`` without sending it, with ``reason``.

    For the head of a key's queue this unblocks the key: the next delivery
    of the key is sent at once. ``webhook.delivery_failed`` is published
    for it as for an exhausted one. ``None``: the webhook has no such
    delivery; :class:`Refused`: it is finished, or a worker is sending it
    right now.
    """
    params = {
        "webhook_id": webhook_id,
        "delivery_id": delivery_id,
        "reason": "skipped by an operator" + (f": {reason}" if reason else ""),
    }

    async def action() -> dict[str, Any] | None:
        async with conn.transaction():
            await delivery_db.lock_webhooks(conn, [webhook_id])
            cur = await conn.execute(query("ops_skip_delivery", _SQL), params)
            changed = await cur.fetchone()
            if changed is None:
                state = await _state(conn, params)
                if state is None:
                    return None
                if state["in_flight"]:
                    raise Refused(
                        "a worker is sending the delivery right now: skip it when the "
                        "attempt has ended"
                    )
                raise Refused(f"the delivery is already {state['status']}")
            if changed[1] is not None:
                await delivery_db.promote(conn, [(webhook_id, changed[1])])
            await conn.execute(
                query("delivery_publish_failed", "delivery.sql"), {"ids": [delivery_id]}
            )
            async with conn.cursor(row_factory=dict_row) as cur2:
                await cur2.execute(query("ops_delivery", _SQL), params)
                row = await cur2.fetchone()
            await wake(conn)
        return row

    return await _again_on_deadlock(action)


async def unorder_waiting(conn: AsyncConn, webhook_id: int) -> int:
    """After ``ordering`` became ``none``: make what waits in key queues due now.

    Call it in the transaction that updated the webhook row (which holds
    its lock); returns how many deliveries were released.
    """
    cur = await conn.execute(query("ops_unorder_waiting", _SQL), {"webhook_id": webhook_id})
    if cur.rowcount:
        await wake(conn)
    return cur.rowcount


async def recover_failed(conn: AsyncConn, webhook_id: int, since: datetime) -> int:
    """Re-queue the webhook's failed deliveries created at or after ``since``; return how many.

    Keyed ones of a webhook ordered by key join their key's queue again,
    before what waits there already (their ids are older), in their order.
    """

    async def action() -> int:
        async with conn.transaction():
            await delivery_db.lock_webhooks(conn, [webhook_id])
            cur = await conn.execute(
                query("ops_recover_failed", _SQL), {"webhook_id": webhook_id, "since": since}
            )
            rows = await cur.fetchall()
            keys = sorted({k for _, k in rows if k is not None})
            await delivery_db.promote(conn, [(webhook_id, k) for k in keys])
            if rows:
                await wake(conn)
        return len(rows)

    return await _again_on_deadlock(action)


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
