"""Publish events from application code, inside the caller's transaction.

The event commits or rolls back with that transaction. All three helpers
call the SQL function ``outbox.publish(event_type, payload)``, which draws
the transaction id before the event id and rings the NOTIFY doorbell.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, overload

import psycopg
from psycopg.types.json import Jsonb

from outbox.events import check_event_type

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_SQL = "SELECT outbox.publish(%s, %s)"


@overload
def publish(
    conn: psycopg.AsyncConnection[Any], event_type: str, payload: Any
) -> Coroutine[Any, Any, int]: ...
@overload
def publish(conn: psycopg.Connection[Any] | Session, event_type: str, payload: Any) -> int: ...
def publish(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | Session,
    event_type: str,
    payload: Any,
) -> int | Coroutine[Any, Any, int]:
    """Publish ``payload`` as ``event_type`` in the caller's transaction.

    Works with a sync psycopg connection (returns the id), an async psycopg
    connection (returns an awaitable) and a SQLModel/SQLAlchemy session.
    """
    if isinstance(conn, psycopg.AsyncConnection):
        return apublish(conn, event_type, payload)
    if not isinstance(conn, psycopg.Connection):
        return publish_session(conn, event_type, payload)
    return publish_sync(conn, event_type, payload)


def publish_sync(conn: psycopg.Connection[Any], event_type: str, payload: Any) -> int:
    """Publish on a sync psycopg connection; returns the event id."""
    check_event_type(event_type)
    row = conn.execute(_SQL, (event_type, Jsonb(payload))).fetchone()
    assert row is not None
    return int(row[0])


async def apublish(conn: psycopg.AsyncConnection[Any], event_type: str, payload: Any) -> int:
    """Publish on an async psycopg connection; returns the event id."""
    check_event_type(event_type)
    cur = await conn.execute(_SQL, (event_type, Jsonb(payload)))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def publish_session(session: Session, event_type: str, payload: Any) -> int:
    """Publish through a SQLModel/SQLAlchemy session; returns the event id."""
    from sqlalchemy import text

    check_event_type(event_type)
    result = session.execute(
        text("SELECT outbox.publish(:t, CAST(:p AS jsonb))"),
        {"t": event_type, "p": json.dumps(payload)},
    )
    return int(result.scalar_one())
