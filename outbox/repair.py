"""``outbox repair``: put the event id sequence back above every id used.

After ``TRUNCATE outbox.events RESTART IDENTITY`` (migration 009 now undoes
that one by itself), ``ALTER SEQUENCE outbox.events_id_seq RESTART`` or a
``setval`` to a lower value, new events draw ids that receivers have already
seen as ``webhook-id: evt_N``; the dispatcher refuses to dispatch them and
``/health`` says so. :func:`diagnose` tells what happened; :func:`fix_sequence`
moves the sequence to the largest id known to be used (the dispatcher's
cursor, the retention watermark, the delivery rows, the log itself) and gives
the events written since the reset fresh ids above it, in one transaction,
with writers held off. The dispatcher then goes on by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from outbox.cursor import Cursor, sql_params
from outbox.names import DISPATCHER_STATE, RETENTION_WATERMARK
from outbox.sqlfiles import query


def _sql(name: str) -> str:
    return query(name, "progress.sql")


@dataclass(frozen=True)
class Diagnosis:
    sequence: int  # the largest id the sequence has handed out
    used: int  # the largest id known to be used
    cursor: Cursor  # the dispatcher's stored cursor
    renumbered: list[tuple[int, int]] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return self.sequence < self.used

    def describe(self) -> str:
        if not self.broken:
            return (
                f"ok: the event id sequence is at {self.sequence}, not below any id used"
                f" (up to {self.used})"
            )
        return (
            f"event ids went backwards: the sequence is at {self.sequence} but ids up to"
            f" {self.used} were used already (dispatcher cursor after {self.cursor.after});"
            " new events reuse webhook-ids receivers have seen, so nothing is dispatched"
        )


def _stored_cursor(conn: psycopg.Connection[Any]) -> Cursor:
    row = conn.execute(
        query("relay_state_get", "relay_state.sql"), {"name": DISPATCHER_STATE}
    ).fetchone()
    return Cursor.decode(row[0]) if row else Cursor(0)


def diagnose(conn: psycopg.Connection[Any]) -> Diagnosis:
    cursor = _stored_cursor(conn)
    row = conn.execute(_sql("event_id_high")).fetchone()
    high = int(row[0]) if row and row[0] is not None else 0
    row = conn.execute(
        _sql("ids_used"), {"after": cursor.after, "watermark": RETENTION_WATERMARK}
    ).fetchone()
    used = int(row[0]) if row and row[0] is not None else 0
    return Diagnosis(high, used, cursor)


def fix_sequence(conn: psycopg.Connection[Any]) -> Diagnosis:
    """Repair in one transaction; returns what was found and the renumbering."""
    with conn.transaction():
        conn.execute(_sql("repair_lock"))
        found = diagnose(conn)
        if not found.broken:
            return found
        conn.execute(_sql("repair_setval"), {"floor": found.used})
        rows = conn.execute(
            _sql("repair_renumber"), {"floor": found.used, **sql_params(found.cursor)}
        ).fetchall()
        moved = sorted((int(r[0]), int(r[1])) for r in rows)
    return Diagnosis(found.sequence, found.used, found.cursor, moved)
