"""The event payloads every scenario writes, in SQL and in Python.

One shape everywhere (a ticket-like row of ~120 bytes), so B2..B5 and their
baselines move the same bytes. ``marker`` goes into the last event of a run:
the cheap clients stop when they see it.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

SUBJECT = "Printer on fire in room 101"

# jsonb_build_object over a generate_series column ``g``; the last event
# (g = %(n)s) carries %(marker)s.
SQL_PAYLOAD = sql.SQL(
    "jsonb_build_object('seq', g, 'ticket_id', 100000 + g, 'status', 'open', "
    "'priority', g %% 5, 'subject', {subject}, 'end', "
    "CASE WHEN g = %(n)s THEN %(marker)s ELSE '' END)"
).format(subject=sql.Literal(SUBJECT))


def payload(seq: int, marker: str = "", run: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {
        "seq": seq,
        "ticket_id": 100000 + seq,
        "status": "open",
        "priority": seq % 5,
        "subject": SUBJECT,
        "end": marker,
    }
    if run:
        p["run"] = run
    return p


def payload_json(seq: int, marker: str = "") -> str:
    """As Postgres renders jsonb: ``", "`` and ``": "`` separators."""
    return json.dumps(payload(seq, marker))


def publish_events_sql(event_type: str) -> sql.Composed:
    """``%(n)s`` events numbered 1..n through ``outbox.publish``, in one statement.

    Through publish, not a raw INSERT, so the relay is woken the way an
    application's writes wake it. Event n carries ``%(marker)s``. Returns one
    row: (first id, last id, count).
    """
    return sql.SQL(
        "SELECT min(id), max(id), count(*) FROM (SELECT outbox.publish({event_type}, {payload})"
        " AS id FROM generate_series(1, %(n)s::bigint) AS g) AS published"
    ).format(event_type=sql.Literal(event_type), payload=SQL_PAYLOAD)


def insert_events_sql(event_type: str) -> sql.Composed:
    """A raw INSERT of ``%(n)s`` events (no wake-up): for pre-loading a backlog fast."""
    return sql.SQL(
        "INSERT INTO outbox.events (event_type, payload) SELECT {event_type}, {payload}"
        " FROM generate_series(1, %(n)s::bigint) AS g"
    ).format(event_type=sql.Literal(event_type), payload=SQL_PAYLOAD)
