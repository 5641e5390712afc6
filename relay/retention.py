"""Retention (leader only): delete old events and finished deliveries.

Every :data:`RETENTION_INTERVAL` seconds the leader deletes, in bounded
batches (each its own short transaction, no long locks):

* finished (``success``/``failed``) deliveries created more than
  ``OUTBOX_RETENTION`` ago, oldest first (``deliveries_finished_created_idx``);
  their attempts go with them (``ON DELETE CASCADE``);
* events created more than ``OUTBOX_RETENTION`` ago, walking the primary key
  in id order, but never one the dispatcher or a sink has not handled yet
  (above its stored cursor, or written by a transaction its cursor still
  waits for) and never one a pending delivery still needs
  (``deliveries_pending_event_idx``).

Each event batch records the largest id it deleted as the retention
watermark (:data:`outbox.names.RETENTION_WATERMARK`) in ``outbox.relay_state``,
in the same transaction: a resume cursor below the watermark may have lost
events, so
:func:`cursor_expired` refuses it (``/ws`` and ``GET /events`` ask).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import scalar_row

from outbox.cursor import Cursor, sql_params
from outbox.errors import CursorExpired
from outbox.names import RETENTION_WATERMARK
from outbox.relay.config import RetentionSettings
from outbox.relay.dispatcher import load_cursor
from outbox.relay.reconnect import CONNECTION_ERRORS, close_quietly, connect, describe, nap
from outbox.relay.sinks.store import oldest_cursors as sink_cursors
from outbox.relay.sinks.store import protective
from outbox.rows import record_row
from outbox.sqlfiles import query

log = logging.getLogger("outbox.relay.retention")

_SQL = "retention.sql"
RETENTION_INTERVAL = 60.0
RETENTION_BATCH = 5000
# Per round and per table; what is left waits for the next round.
MAX_BATCHES = 200


@dataclass(frozen=True, slots=True)
class RetentionResult:
    events_deleted: int = 0
    deliveries_deleted: int = 0
    watermark: int = 0


class _EventBatch(NamedTuple):
    """What one ``retention_events`` batch did."""

    scanned: int
    last_id: int | None
    deleted: int
    watermark: str | None  # the new watermark, None when unchanged
    reached_recent: bool


async def watermark(conn: psycopg.AsyncConnection[Any]) -> int:
    """The largest event id retention has deleted (0 if none)."""
    cur = conn.cursor(row_factory=scalar_row)
    await cur.execute(query("relay_state_get", "relay_state.sql"), {"name": RETENTION_WATERMARK})
    value = await cur.fetchone()
    return int(value) if value is not None else 0


async def cursor_expired(conn: psycopg.AsyncConnection[Any], cursor: Cursor) -> bool:
    """True when events after ``cursor`` may already have been deleted."""
    return cursor.after < await watermark(conn)


async def check_cursor(conn: psycopg.AsyncConnection[Any], cursor: Cursor) -> None:
    """Raise :class:`~outbox.errors.CursorExpired` when events after ``cursor``
    may already have been deleted (``GET /events`` answers 410, ``/ws`` closes 1008)."""
    if await cursor_expired(conn, cursor):
        raise CursorExpired(
            f"cursor after id {cursor.after} is older than retention (OUTBOX_RETENTION)",
            field="since",
        )


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
        cur = await conn.execute(
            query("retention_deliveries", _SQL), {"keep": keep, "limit": batch}
        )
        deliveries += max(cur.rowcount, 0)
        if cur.rowcount < batch or not keep_going():
            break

    events = 0
    mark = await watermark(conn)
    dispatched, stored = await load_cursor(conn)
    # Nothing dispatched yet: every event is still needed.
    if stored is not None and keep_going():
        # A stale read is safe: the stored cursor only moves forward, and an
        # older one protects more events, never fewer. Sinks, active or
        # paused, keep what they have not published either.
        dispatched = protective([dispatched, *await sink_cursors(conn)]) or dispatched
        params = {
            **sql_params(dispatched),
            "keep": keep,
            "limit": batch,
            "watermark": RETENTION_WATERMARK,
        }
        after = 0
        cur = conn.cursor(row_factory=record_row(_EventBatch))
        for _ in range(max_batches):
            await cur.execute(query("retention_events", _SQL), {**params, "from": after})
            r = await cur.fetchone()
            assert r is not None
            events += int(r.deleted)
            if r.watermark is not None:
                mark = max(mark, int(r.watermark))
            # Ids grow with time, so the first event too young to delete ends
            # the walk; so does the end of what the dispatcher has handled.
            if r.reached_recent or r.scanned < batch or not keep_going():
                break
            assert r.last_id is not None
            after = int(r.last_id)
    if events or deliveries:
        log.info(
            "retention deleted %d events and %d finished deliveries (watermark %d)",
            events,
            deliveries,
            mark,
        )
    return RetentionResult(events, deliveries, mark)


class RetentionLoop:
    """Every ``interval`` seconds, while this process leads, one :func:`retention_round`.

    Each round opens its own short-lived connection (nothing is held between
    rounds) and stops early when the leadership is lost or the service stops.
    """

    def __init__(
        self,
        url: str,
        settings: RetentionSettings,
        *,
        is_leader: Callable[[], bool],
        instance: str,
        interval: float = RETENTION_INTERVAL,
    ) -> None:
        self.url = url
        self.settings = settings
        self.is_leader = is_leader
        self.instance = instance
        self.interval = interval
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            await nap(self._stopping, self.interval)
            if self._stopping.is_set() or not self.is_leader():
                continue
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await connect(self.url, f"outbox retention {self.instance}")
                await retention_round(
                    conn,
                    self.settings.retention,
                    keep_going=lambda: self.is_leader() and not self._stopping.is_set(),
                )
            except CONNECTION_ERRORS as exc:
                log.warning("retention round failed: %s", describe(exc))
            finally:
                await close_quietly(conn)

    async def stop(self) -> None:
        self._stopping.set()
