"""Retention (leader only): delete old events and finished deliveries.

Every :data:`RETENTION_INTERVAL` seconds the leader deletes, in bounded
batches (each its own short transaction, no long locks):

* finished (``success``/``failed``) deliveries created more than
  ``OUTBOX_RETENTION`` ago, oldest first (``deliveries_finished_created_idx``);
  their attempts go with them (``ON DELETE CASCADE``);
* events created more than ``OUTBOX_RETENTION`` ago, walking the primary key
  in id order, but never one the dispatcher has not handled yet (above its
  stored cursor, or written by a transaction its cursor still waits for) and
  never one a pending delivery still needs (``deliveries_pending_event_idx``).

Each event batch records the largest id it deleted as the
``retention_watermark`` in ``outbox.relay_state``, in the same transaction:
a resume cursor below the watermark may have lost events, so
:func:`cursor_expired` refuses it (``/ws`` and ``GET /events`` ask).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from outbox.cursor import Cursor
from outbox.relay.dispatcher import STATE_NAME as DISPATCHER_STATE
from outbox.sqlfiles import query

log = logging.getLogger("outbox.relay.retention")

WATERMARK_NAME = "retention_watermark"
RETENTION_INTERVAL = 60.0
RETENTION_BATCH = 5000
# Per round and per table; what is left waits for the next round.
MAX_BATCHES = 200


@dataclass(frozen=True, slots=True)
class RetentionResult:
    events_deleted: int = 0
    deliveries_deleted: int = 0
    watermark: int = 0


async def watermark(conn: psycopg.AsyncConnection[Any]) -> int:
    """The largest event id retention has deleted (0 if none)."""
    cur = await conn.execute(query("relay_state_get"), {"name": WATERMARK_NAME})
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def cursor_expired(conn: psycopg.AsyncConnection[Any], cursor: Cursor) -> bool:
    """True when events after ``cursor`` may already have been deleted."""
    return cursor.after < await watermark(conn)


async def retention_round(
    conn: psycopg.AsyncConnection[Any],
    keep: timedelta,
    *,
    batch: int = RETENTION_BATCH,
    max_batches: int = MAX_BATCHES,
    keep_going: Callable[[], bool] = lambda: True,
) -> RetentionResult:
    """One round of deletions on ``conn`` (autocommit: one transaction per batch).

    ``keep_going`` is checked between batches (the relay passes "still the
    leader and not stopping").
    """
    deliveries = 0
    for _ in range(max_batches):
        cur = await conn.execute(query("retention_deliveries"), {"keep": keep, "limit": batch})
        deliveries += max(cur.rowcount, 0)
        if cur.rowcount < batch or not keep_going():
            break

    events = 0
    mark = await watermark(conn)
    cur = await conn.execute(query("relay_state_get"), {"name": DISPATCHER_STATE})
    row = await cur.fetchone()
    # Nothing dispatched yet: every event is still needed.
    if row is not None and keep_going():
        # A stale read is safe: the stored cursor only moves forward, and an
        # older one protects more events, never fewer.
        dispatched = Cursor.decode(row[0])
        after = 0
        for _ in range(max_batches):
            cur = await conn.execute(
                query("retention_events"),
                {
                    "from": after,
                    "max_id": dispatched.after,
                    "pending": [str(x) for x in dispatched.pending],
                    "xmax": str(dispatched.xmax),
                    "keep": keep,
                    "limit": batch,
                },
            )
            r = await cur.fetchone()
            assert r is not None
            scanned, last_id, deleted, new_mark, reached_recent = r
            events += int(deleted)
            if new_mark is not None:
                mark = max(mark, int(new_mark))
            # Ids grow with time, so the first event too young to delete ends
            # the walk; so does the end of what the dispatcher has handled.
            if reached_recent or scanned < batch or not keep_going():
                break
            after = int(last_id)
    if events or deliveries:
        log.info(
            "retention deleted %d events and %d finished deliveries (watermark %d)",
            events,
            deliveries,
            mark,
        )
    return RetentionResult(events, deliveries, mark)
