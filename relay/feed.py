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
    transaction may hold an xid >= xmax; tests/db/test_schema.py caught this).

A read in snapshot S therefore emits the visible rows above the cursor's
``after`` plus the rows at or below it of the transactions the cursor
recorded as in progress (``pending`` xids, or xid >= its ``xmax``) that have
committed since; the next cursor is ``(M', xmax(S), xip(S))`` where M' is the
largest id emitted (or the old ``after``). Nothing below M' can appear later
except rows of transactions S saw as in progress — which the next read looks
up by xid. An idle transaction that wrote nothing costs one xid in the
cursor, never latency.

Looking those up: the pending xids one by one, and the xids at or above the
cursor's ``xmax`` by walking them up to S's xmax (sql/feed.sql; past
``RANGE_WALK_MAX`` of them, one range scan). The walk stops below S's xmax
and loses nothing: a transaction at or above it is not visible in S, so it
has no row to emit in this read, and it is at or above the next cursor's
``xmax`` (S's), so the next read still matches it.

Late rows are paged too (at most ``limit`` per read, by id). A cursor may
then point inside a transaction: a pending xid can carry a position ``k``
(``Cursor.done``), meaning its rows with id <= k are emitted and the rest
are not. A read that fills its late page reads no rows above ``after``; it
keeps the cursor's ``after`` and ``xmax`` (so every transaction it did not
reach is still matched, listed or at/above xmax), moves the position of each
transaction it emitted part of to the largest id emitted, drops from the
list each transaction it emitted whole, and lists one at/above xmax emitted
whole as passed up to ``after``. The claim above holds for each position:
what the next read looks up by xid starts after it, and nothing at or below
it is unemitted. Each such read moves a position forward, so a late
transaction of any size drains in ``size / limit`` reads, memory bounded by
the page.

Order: within a batch, transactions are ordered by their largest event id
and each transaction's events by id, so one transaction's events come out
together and an event caused by another transaction's committed change
comes after it. A full page is cut before the first transaction that
continues past the page, unless that transaction is the first in the page
(a transaction larger than a page is emitted in id order across batches).
A full page of late rows is cut the same way.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from outbox.cursor import Cursor, encode_parts, pending_csv, sql_params
from outbox.rows import record_row
from outbox.sqlfiles import bare_query, query

_SQL = "feed.sql"


class Event:
    """One committed event. JSON is rendered once and shared by all consumers."""

    __slots__ = (
        "_cursor",
        "_cursors",
        "_frame",
        "_payload",
        "_pos",
        "created_at",
        "id",
        "key",
        "payload_json",
        "traceparent",
        "tracestate",
        "type",
        "xid",
    )

    def __init__(
        self,
        id: int,
        xid: int,
        type: str,
        payload_json: str,
        created_at: datetime,
        cursor: str = "",
        key: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        self.id = id
        self.xid = xid
        self.type = type
        self.payload_json = payload_json
        self.created_at = created_at
        self.key = key
        self.traceparent = traceparent
        self.tracestate = tracestate
        self._cursor = cursor
        self._cursors: _TxnCursors | None = None
        self._pos = 0
        self._payload: Any = _UNSET
        self._frame: str | None = None

    @property
    def cursor(self) -> str:
        """Where to resume after processing this event: no gap, and repeats
        at most this event's own transaction (see :class:`_TxnCursors`)."""
        if self._cursors is not None:
            self._cursor = self._cursors.get(self._pos)
            self._cursors = None
        return self._cursor

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
                + '","key":'
                + (json.dumps(self.key) if self.key is not None else "null")
                + ',"traceparent":'
                + (json.dumps(self.traceparent) if self.traceparent is not None else "null")
                + "}"
            )
        return self._frame

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "cursor": self.cursor,
            "key": self.key,
            "traceparent": self.traceparent,
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
    ``more`` is true when the page was full: read again at once instead of
    waiting for the next wake-up.
    """

    events: list[Event]
    start: Cursor
    end: Cursor
    more: bool = False


def parse_snapshot(text: str) -> tuple[int, int, tuple[int, ...]]:
    """``'xmin:xmax:xip1,xip2'`` -> (xmin, xmax, xips)."""
    xmin, xmax, xip = text.split(":")
    return int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x)


class Row(NamedTuple):
    """A ``feed_read`` row; ``kind`` says which of its parts (see sql/feed.sql)."""

    kind: str  # 's' snapshot, 'p' page, 'l' late, 'c' continues past the page
    id: int
    xid: int
    event_type: str  # for 's': the snapshot as text
    payload: str
    created_at: datetime
    key: str | None
    traceparent: str | None
    tracestate: str | None


# Late rows of transactions at or above the cursor's xmax are found by one
# index probe per xid between it and the read snapshot's xmax (sql/feed.sql);
# past this many xids (a cursor far behind) one range scan is used instead.
RANGE_WALK_MAX = 10_000


class _Head(NamedTuple):
    snapshot: str
    max_id: int


class _LagRow(NamedTuple):
    events: int
    oldest_seconds: float


_check_rows = record_row(Row)
_rows_checked = False


def _feed_rows(cursor: Any) -> Any:
    """``record_row(Row)``, its column check made once per process: the
    statement never changes, and building the column descriptions of every
    read cost ~5% of an idle relay's CPU."""
    global _rows_checked
    if _rows_checked:
        return _make_row
    maker = _check_rows(cursor)
    _rows_checked = cursor.description is not None
    return maker


# tuple.__new__(Row, values) is what Row._make does, without its Python frame.
_make_row = functools.partial(tuple.__new__, Row)


async def read_batch(
    conn: psycopg.AsyncConnection[Any], cursor: Cursor, limit: int = 1000
) -> Batch:
    """Read the next batch after ``cursor`` (at most ``limit`` page rows).

    One statement, so one snapshot and one round trip (``feed_read`` in
    sql/feed.sql). ``conn`` must be idle; on an autocommit connection the
    statement is its own transaction, otherwise it is wrapped in one.
    """
    params = {**sql_params(cursor), "limit": limit, "walk_max": RANGE_WALK_MAX}
    rows: list[Row]
    cur = conn.cursor(row_factory=_feed_rows)
    statement = bare_query("feed_read", _SQL)
    # Prepared on the server from the first read: the statement is planned
    # far less often (planning it cost more than running it, issue 22).
    if conn.autocommit:
        await cur.execute(statement, params, prepare=True)
        rows = await cur.fetchall()
    else:
        async with conn.transaction():
            await cur.execute(statement, params, prepare=True)
            rows = await cur.fetchall()
    page = [r for r in rows if r.kind == "p"]
    late = [r for r in rows if r.kind == "l"]
    beyond = {r.xid for r in rows if r.kind == "c"}
    snapshot = next(r.event_type for r in rows if r.kind == "s")
    if len(late) >= limit:
        late_more = {r.xid for r in rows if r.kind == "m"}
        return _late_page(late, late_more, cursor)
    _, xmax, xip = parse_snapshot(snapshot)
    page.sort(key=_row_id)
    full = len(page) >= limit
    held: set[int] = set()
    if beyond:
        keep = _cut(page, beyond)
        paged = {r.xid for r in page}
        page = page[:keep]
        kept = {r.xid for r in page}
        # A late transaction none of whose rows are kept but that continues
        # past the cut stays pending, held back whole: the read that reaches
        # its last row emits all of it.
        held = {r.xid for r in late if r.xid not in kept and (r.xid in beyond or r.xid in paged)}
        if held:
            late = [r for r in late if r.xid not in held]
    new_after = page[-1].id if page else cursor.after
    was = dict(cursor.done)
    # A held transaction keeps the position it had (its rows up to it are passed).
    done = tuple((x, was[x]) for x in sorted(held) if was.get(x))
    end = Cursor(new_after, xmax, tuple(sorted(held.union(xip))), done)
    return Batch(_order(late + page, cursor, end), cursor, end, full)


def _late_page(late: list[Row], more: set[int], cursor: Cursor) -> Batch:
    """A full page of late rows (the statement then read no page above ``after``).

    Cut like a page (:func:`_cut`): whole transactions, or the first one's
    part when it alone goes on past the page. The cursor stays at ``after``
    and its xmax; each emitted transaction's position moves to its largest
    emitted id, so the next read goes on from there (bounded memory however
    large the transaction). A transaction wholly emitted leaves ``pending``;
    one at or above xmax (not listed) is listed as passed up to ``after``, as
    its xid still matches ``xid >= xmax``.
    """
    late.sort(key=_row_id)
    late = late[: _cut(late, more)]
    pos = {x: cursor.position(x) for x in cursor.pending}
    listed = set(cursor.pending)  # the others match ``xid >= xmax``
    top: dict[int, int] = {}
    for r in late:
        top[r.xid] = r.id
    for xid, high in top.items():
        if xid in more:
            pos[xid] = high
        elif xid in listed and xid < cursor.xmax:
            del pos[xid]
        else:
            pos[xid] = cursor.after
    end = Cursor(
        cursor.after,
        cursor.xmax,
        tuple(sorted(pos)),
        tuple((x, k) for x, k in sorted(pos.items()) if k),
    )
    return Batch(_order(late, cursor, end), cursor, end, True)


def _row_id(row: Row) -> int:
    return row.id


def _cut(page: list[Row], beyond: set[int]) -> int:
    """How many rows of a full, id-ordered page to keep.

    The largest ``k`` such that no transaction with a row in ``page[:k]`` has
    a row after it (in ``page[k:]`` or past the page: ``beyond``), so every
    kept transaction comes out whole. When even the first transaction goes on
    past the page there is no such ``k``: the whole page is kept and that
    transaction is emitted across batches, in id order.
    """
    if not page or page[0].xid in beyond:
        return len(page)
    last: dict[int, int] = {}
    for i, r in enumerate(page):
        last[r.xid] = i
    past = len(page)
    reach = -1
    keep = 0
    for i, r in enumerate(page):
        xid = r.xid
        reach = max(reach, past if xid in beyond else last[xid])
        if reach == i:
            keep = i + 1
    return keep or len(page)


def _order(rows: list[Row], start: Cursor, end: Cursor) -> list[Event]:
    """Transactions by their largest id, each transaction's events by id."""
    if not rows:
        return []
    top: dict[int, int] = {}
    low: dict[int, int] = {}
    for r in rows:
        xid, rid = r.xid, r.id
        t = top.get(xid)
        if t is None:
            top[xid] = low[xid] = rid
        elif rid > t:
            top[xid] = rid
        elif rid < low[xid]:
            low[xid] = rid
    if len(top) == len(rows):
        rows.sort(key=_row_id)  # one row per transaction: its id is its largest
    else:
        rows.sort(key=lambda r: (top[r.xid], r.id))
    # Filled below, before any event's cursor can be asked for.
    txns: list[tuple[int, int, int]] = []
    cursors = _TxnCursors(txns, start, end)
    events: list[Event] = []
    last = len(rows) - 1
    j = 0  # index of the transaction the current event belongs to
    for i, r in enumerate(rows):
        xid = r.xid
        e = Event(
            r.id, xid, r.event_type, r.payload, r.created_at, "", r.key, r.traceparent, r.tracestate
        )
        e._cursors = cursors
        if i == last or rows[i + 1].xid != xid:  # the transaction's last event
            e._pos = j
            txns.append((xid, low[xid], top[xid]))
            j += 1
        else:
            e._pos = j - 1
        events.append(e)
    return events


class _TxnCursors:
    """The resume cursor after each transaction of a batch, built on first use.

    After transaction ``j`` (in emit order) the cursor is ``(after_j, xmax,
    pending_j)``: ``after_j`` the largest id emitted so far (or the start's),
    ``xmax`` the read snapshot's, and ``pending_j`` the snapshot's xip, the
    transactions held back, and every transaction of this batch not yet
    emitted that has a row at or below ``after_j``. Every row at or below
    ``after_j`` is then emitted, or owned by a transaction the cursor names
    (see the module docstring), so resuming from it repeats at most the
    transaction being processed. An event in the middle of a transaction
    carries the cursor from before that transaction's part in this batch. A
    transaction too big for one page is emitted across batches, and the
    cursors between them point inside it (above ``after`` by ``after``
    itself, late rows by a position): resuming re-sends at most one page.
    Until a transaction is emitted here its position is the start's; once
    emitted, the end's.
    """

    __slots__ = ("_end", "_start", "_txns", "_values")

    def __init__(self, txns: list[tuple[int, int, int]], start: Cursor, end: Cursor) -> None:
        self._txns = txns  # (xid, smallest id, largest id) in emit order
        self._start = start
        self._end = end
        self._values: list[str] | None = None

    def get(self, pos: int) -> str:
        if pos < 0:
            return self._start.encode()
        if self._values is None:
            self._values = self._build()
        return self._values[pos]

    def _build(self) -> list[str]:
        txns, start, end = self._txns, self._start, self._end
        start_pos, end_pos = dict(start.done), dict(end.done)
        in_batch = {t[0] for t in txns}
        # Snapshot xip and held-back (or untouched late) transactions.
        base = {x: end_pos.get(x, 0) for x in end.pending if x not in in_batch}
        ends_pending = set(end.pending)
        by_low = sorted(range(len(txns)), key=lambda k: txns[k][1])
        after = start.after
        waiting: set[int] = set()  # not yet emitted, with a row <= after
        done: set[int] = set()
        values: list[str] = []
        ptr = 0
        text = pending_csv(list(base), base)
        changed = False
        for j, (xid, _low, high) in enumerate(txns):
            done.add(xid)
            if xid in waiting:
                waiting.discard(xid)
                changed = True
            if xid in ends_pending:  # emitted in part: its position from now on
                base[xid] = end_pos.get(xid, 0)
                changed = True
            after = max(after, high)
            while ptr < len(by_low) and txns[by_low[ptr]][1] <= after:
                other = txns[by_low[ptr]][0]
                if other not in done:
                    waiting.add(other)
                    changed = True
                ptr += 1
            if j + 1 == len(txns):
                values.append(end.encode())
                continue
            if changed:  # most transactions leave the pending list as it was
                entries = {**base, **{x: start_pos.get(x, 0) for x in waiting}}
                text = pending_csv(list(entries), entries)
                changed = False
            values.append(encode_parts(after, end.xmax, text))
        return values


async def head(conn: psycopg.AsyncConnection[Any]) -> Cursor:
    """The cursor of "now": resuming from it yields only events not yet visible."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=record_row(_Head))
        await cur.execute(query("feed_head", _SQL))
        row = await cur.fetchone()
    assert row is not None
    _, xmax, xip = parse_snapshot(row.snapshot)
    return Cursor(int(row.max_id), xmax, xip)


# Counting unread events stops here: a huge backlog costs a bounded scan.
LAG_CAP = 100_000


@dataclass(frozen=True, slots=True)
class Lag:
    """Events committed and not yet read after a cursor, and the oldest one's age."""

    events: int
    oldest_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "oldest_seconds": round(self.oldest_seconds, 3),
            "capped": self.events >= LAG_CAP,
        }


async def measure_lag(conn: psycopg.AsyncConnection[Any], cursor: Cursor) -> Lag:
    """How far ``cursor`` is behind (``feed_lag``: a bounded count, one round trip)."""
    cur = conn.cursor(row_factory=record_row(_LagRow))
    await cur.execute(query("feed_lag", _SQL), {**sql_params(cursor), "cap": LAG_CAP})
    row = await cur.fetchone()
    assert row is not None
    return Lag(int(row.events), float(row.oldest_seconds) if row.events else 0.0)
