"""Publish events from application code, inside the caller's transaction.

The event commits or rolls back with that transaction. All three helpers
call the SQL function ``outbox.publish(event_type, payload, key,
traceparent)``, which draws the transaction id before the event id and
rings the NOTIFY doorbell. ``key`` orders per-key delivery; ``traceparent``
(W3C) overrides the transaction's ``outbox.traceparent`` setting (see
:mod:`outbox.tracing`). An invalid traceparent is dropped with a warning,
never fails the write.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, overload

import psycopg
from psycopg.rows import scalar_row
from psycopg.types.json import Jsonb

from outbox.events import check_event_type
from outbox.sqlfiles import query
from outbox.tracing import checked_traceparent

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_SQL = "publish.sql"


def _args(
    event_type: str, key: str | None, traceparent: str | None
) -> tuple[str | None, str | None]:
    check_event_type(event_type)
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str or None, not {type(key).__name__}")
    return key, checked_traceparent(traceparent) if traceparent is not None else None


@overload
def publish(
    conn: psycopg.AsyncConnection[Any],
    event_type: str,
    payload: Any,
    *,
    key: str | None = None,
    traceparent: str | None = None,
) -> Coroutine[Any, Any, int]: ...
@overload
def publish(
    conn: psycopg.Connection[Any] | Session,
    event_type: str,
    payload: Any,
    *,
    key: str | None = None,
    traceparent: str | None = None,
) -> int: ...
def publish(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | Session,
    event_type: str,
    payload: Any,
    *,
    key: str | None = None,
    traceparent: str | None = None,
) -> int | Coroutine[Any, Any, int]:
    """Publish ``payload`` as ``event_type`` in the caller's transaction.

    Works with a sync psycopg connection (returns the id), an async psycopg
    connection (returns an awaitable) and a SQLModel/SQLAlchemy session.
    """
    if isinstance(conn, psycopg.AsyncConnection):
        return apublish(conn, event_type, payload, key=key, traceparent=traceparent)
    if not isinstance(conn, psycopg.Connection):
        return publish_session(conn, event_type, payload, key=key, traceparent=traceparent)
    return publish_sync(conn, event_type, payload, key=key, traceparent=traceparent)


def publish_sync(
    conn: psycopg.Connection[Any],
    event_type: str,
    payload: Any,
    *,
    key: str | None = None,
    traceparent: str | None = None,
) -> int:
    """Publish on a sync psycopg connection; returns the event id."""
    key, tp = _args(event_type, key, traceparent)
    params = {"event_type": event_type, "payload": Jsonb(payload), "key": key, "traceparent": tp}
    with conn.cursor(row_factory=scalar_row) as cur:
        event_id = cur.execute(query("publish", _SQL), params).fetchone()
    assert event_id is not None
    return int(event_id)


async def apublish(
    conn: psycopg.AsyncConnection[Any],
    event_type: str,
    payload: Any,
    *,
    key: str | None = None,
    traceparent: str | None = None,
) -> int:
    """Publish on an async psycopg connection; returns the event id."""
    key, tp = _args(event_type, key, traceparent)
    params = {"event_type": event_type, "payload": Jsonb(payload), "key": key, "traceparent": tp}
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(query("publish", _SQL), params)
        event_id = await cur.fetchone()
    assert event_id is not None
    return int(event_id)


def publish_session(
    session: Session,
    event_type: str,
    payload: Any,
    *,
    key: str | None = None,
    traceparent: str | None = None,
) -> int:
    """Publish through a SQLModel/SQLAlchemy session; returns the event id."""
    from sqlalchemy import text

    key, tp = _args(event_type, key, traceparent)
    result = session.execute(
        text(query("publish_session", _SQL)),
        {"event_type": event_type, "payload": json.dumps(payload), "key": key, "traceparent": tp},
    )
    return int(result.scalar_one())
