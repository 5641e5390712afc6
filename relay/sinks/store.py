"""The publisher's side of ``outbox.sinks`` (statements in sql/sinks.sql)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from outbox.cursor import Cursor
from outbox.errors import CursorError
from outbox.names import SINK_LOCK_CLASS
from outbox.relay.sinks.base import SinkConfig
from outbox.sqlfiles import query

AsyncConn = psycopg.AsyncConnection[Any]


def sql(name: str) -> str:
    return query(name, "sinks.sql")


async def claimable(conn: AsyncConn) -> list[tuple[int, datetime, bool]]:
    """Every active sink: (id, version, whether a publisher holds its lock)."""
    cur = await conn.execute(sql("sink_claimable"), {"lock_class": SINK_LOCK_CLASS})
    return [(int(r[0]), r[1], bool(r[2])) for r in await cur.fetchall()]


async def try_lock(conn: AsyncConn, sink_id: int) -> bool:
    cur = await conn.execute(sql("sink_try_lock"), {"id": sink_id, "lock_class": SINK_LOCK_CLASS})
    row = await cur.fetchone()
    return bool(row and row[0])


async def load(conn: AsyncConn, sink_id: int) -> tuple[SinkConfig, str] | None:
    """The sink's settings and its stored cursor (raw), None if gone or inactive."""
    cur = await conn.execute(sql("sink_load"), {"id": sink_id})
    row = await cur.fetchone()
    if row is None:
        return None
    config = SinkConfig(
        id=int(row[0]),
        name=row[1],
        kind=row[2],
        url=row[3],
        event_types=tuple(row[4]),
        subject=row[5],
        stream=row[6],
        exchange=row[7],
        routing_key=row[8],
        version=row[10],
    )
    return config, str(row[9])


async def store(
    conn: AsyncConn,
    sink_id: int,
    *,
    old: str,
    new: str,
    published: int,
    rate: float,
    owner: str,
) -> bool:
    """Move the cursor ``old`` -> ``new``; False when it no longer was ``old``."""
    cur = await conn.execute(
        sql("sink_store"),
        {
            "id": sink_id,
            "old": old,
            "new": new,
            "published": published,
            "rate": rate,
            "owner": owner,
        },
    )
    return cur.rowcount == 1


async def heartbeat(conn: AsyncConn, sink_id: int, *, old: str, rate: float, owner: str) -> bool:
    cur = await conn.execute(
        sql("sink_heartbeat"), {"id": sink_id, "old": old, "rate": rate, "owner": owner}
    )
    return cur.rowcount == 1


async def record_error(conn: AsyncConn, sink_id: int, *, error: str, owner: str) -> None:
    await conn.execute(sql("sink_error"), {"id": sink_id, "error": error[:2000], "owner": owner})


async def release(conn: AsyncConn, sink_id: int, *, owner: str) -> None:
    await conn.execute(sql("sink_release"), {"id": sink_id, "owner": owner})


async def oldest_cursors(conn: AsyncConn) -> list[Cursor]:
    """Every sink's stored cursor (what retention must keep)."""
    cur = await conn.execute(sql("sink_cursors"))
    out = []
    for (text,) in await cur.fetchall():
        try:
            out.append(Cursor.decode(text))
        except CursorError:
            # An unreadable cursor protects everything.
            out.append(Cursor(0))
    return out


def protective(cursors: list[Cursor]) -> Cursor | None:
    """One cursor that keeps every event any of ``cursors`` has not passed:
    the smallest ``after`` and ``xmax``, every pending xid (see relay/feed.py
    for what a cursor promises)."""
    if not cursors:
        return None
    pending: set[int] = set()
    for c in cursors:
        pending.update(c.pending)
    return Cursor(
        min(c.after for c in cursors), min(c.xmax for c in cursors), tuple(sorted(pending))
    )
