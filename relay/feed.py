"""The feed reader: every committed event exactly once per pass, never skipped.

Why ``WHERE id > last_id`` is not enough: ids are drawn before commit, so a
transaction holding id 5 may commit after id 6 was read. Why
``xid < pg_snapshot_xmin(...)`` is not enough either: one idle transaction
holding an xid would stall the whole feed.

What we use instead (the writers guarantee it: ``outbox.next_event_id()``
takes the transaction id before drawing the event id, and the sequence has
CACHE 1 so ids are drawn in one global order):

    If an event with id M is visible in snapshot S, then every id <= M was
    drawn before S was taken, by a transaction that already had its xid. So
    that transaction is visible in S, rolled back, or still in progress as
    far as S is concerned: listed in S's xip, or at/above S's xmax (xmax is
    latestCompletedXid + 1, not the next xid to be assigned, so a running
    transaction may hold an xid >= xmax; tests/test_schema.py caught this).

A read in snapshot S therefore emits the visible rows above the cursor's
``after`` plus the rows at or below it of the transactions the cursor
recorded as in progress (``pending`` xids, or xid >= its ``xmax``) that have
committed since; the next cursor is ``(M', xmax(S), xip(S))`` where M' is the
largest id emitted (or the old ``after``). Nothing below M' can appear later
except rows of transactions S saw as in progress — which the next read looks
up by xid. An idle transaction that wrote nothing costs one xid in the
cursor, never latency.

Order: within a batch, transactions are ordered by their largest event id
and each transaction's events by id, so one transaction's events come out
together and an event caused by another transaction's committed change
comes after it. A full page is cut before the first transaction that
continues past the page, unless that transaction is the first in the page
(a transaction larger than a page is emitted in id order across batches).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from outbox.cursor import Cursor
from outbox.sqlfiles import query


class Event:
    """One committed event. JSON is rendered once and shared by all consumers."""

    __slots__ = ("_frame", "_payload", "created_at", "cursor", "id", "payload_json", "type", "xid")

    def __init__(
        self,
        id: int,
        xid: int,
        type: str,
        payload_json: str,
        created_at: datetime,
        cursor: str = "",
    ) -> None:
        self.id = id
        self.xid = xid
        self.type = type
        self.payload_json = payload_json
        self.created_at = created_at
        self.cursor = cursor
        self._payload: Any = _UNSET
        self._frame: str | None = None

    @property
    def timestamp(self) -> str:
        return self.created_at.isoformat()

    @property
    def payload(self) -> Any:
        if self._payload is _UNSET:
            self._payload = json.loads(self.payload_json)
        return self._payload

    @property
    def frame(self) -> str:
        """The WebSocket message for this event, encoded once."""
        if self._frame is None:
            self._frame = (
                '{"type":'
                + json.dumps(self.type)
                + ',"payload":'
                + self.payload_json
                + ',"timestamp":"'
                + self.timestamp
                + '","id":'
                + str(self.id)
                + ',"cursor":"'
                + self.cursor
                + '"}'
            )
        return self._frame

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "cursor": self.cursor,
        }

    def __repr__(self) -> str:
        return f"Event(id={self.id}, type={self.type!r}, xid={self.xid})"


_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Batch:
    """Events read in one snapshot, in emit order.

    ``start`` is the cursor before the batch, ``end`` after it. Each event's
    own ``cursor`` is ``start`` (resuming from it may repeat earlier events of
    the batch, never skip), except the last event, which carries ``end``.
    """

    events: list[Event]
    start: Cursor
    end: Cursor


def parse_snapshot(text: str) -> tuple[int, int, tuple[int, ...]]:
    """``'xmin:xmax:xip1,xip2'`` -> (xmin, xmax, xips)."""
    xmin, xmax, xip = text.split(":")
    return int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x)


Row = tuple[int, str, str, str, datetime]


async def read_batch(
    conn: psycopg.AsyncConnection[Any], cursor: Cursor, limit: int = 1000
) -> Batch:
    """Read the next batch after ``cursor`` (at most about ``limit`` page rows).

    ``conn`` must be idle (autocommit or not in a transaction); the read runs
    in its own REPEATABLE READ READ ONLY transaction.
    """
    pending = [str(x) for x in cursor.pending]
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur = await conn.execute(query("feed_snapshot"))
        snap_row = await cur.fetchone()
        assert snap_row is not None
        _, xmax, xip = parse_snapshot(snap_row[0])
        cur = await conn.execute(query("feed_page"), {"after": cursor.after, "limit": limit})
        page: list[Row] = await cur.fetchall()
        late: list[Row] = []
        if cursor.after > 0:
            cur = await conn.execute(
                query("feed_late"),
                {"pending": pending, "xmax": str(cursor.xmax), "after": cursor.after},
            )
            late = await cur.fetchall()
        new_after = page[-1][0] if page else cursor.after
        held: set[str] = set()
        if page and len(page) >= limit:
            xids = list({r[1] for r in page})
            cur = await conn.execute(
                query("feed_continuing"), {"xids": xids, "page_max": new_after}
            )
            continuing = {r[0] for r in await cur.fetchall()}
            if continuing:
                first = next(i for i, r in enumerate(page) if r[1] in continuing)
                if first > 0:
                    new_after = page[first - 1][0]
                    page = page[:first]
                    # A late transaction whose rows continue past the cut is
                    # held back whole and stays pending.
                    held = {r[1] for r in late if r[1] in continuing}
    if held:
        late = [r for r in late if r[1] not in held]
    new_pending = set(xip)
    new_pending.update(int(x) for x in held)
    end = Cursor(new_after, xmax, tuple(sorted(new_pending)))
    return Batch(_order(late + page, cursor, end), cursor, end)


def _order(rows: list[Row], start: Cursor, end: Cursor) -> list[Event]:
    if not rows:
        return []
    top: dict[str, int] = {}
    for r in rows:
        if r[0] > top.get(r[1], -1):
            top[r[1]] = r[0]
    rows.sort(key=lambda r: (top[r[1]], r[0]))
    start_s = start.encode()
    events = [Event(r[0], int(r[1]), r[2], r[3], r[4], start_s) for r in rows]
    events[-1].cursor = end.encode()
    return events


async def head(conn: psycopg.AsyncConnection[Any]) -> Cursor:
    """The cursor of "now": resuming from it yields only events not yet visible."""
    async with conn.transaction():
        cur = await conn.execute(query("feed_head"))
        row = await cur.fetchone()
    assert row is not None
    _, xmax, xip = parse_snapshot(row[0])
    return Cursor(int(row[1]), xmax, xip)
