"""The SQLModel classes agree with the live schema built by the SQL migrations.

The SQL is the source of truth; these tests fail when a migration changes a
table and outbox/models.py was not updated with it (or the other way round).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, SQLModel, select

from outbox.models import (
    TABLE_MODELS,
    Delivery,
    DeliveryAttempt,
    Event,
    Webhook,
)

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _live_tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'outbox' AND c.relkind = 'r'"
    ).fetchall()
    return {r[0] for r in rows}


def _live_columns(conn: psycopg.Connection[Any], table: str) -> dict[str, tuple[str, bool, str]]:
    """``{column: (type, not_null, identity)}`` as Postgres reports them."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attidentity"
        " FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        (f"outbox.{table}",),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _live_primary_key(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY a.attnum",
        (f"outbox.{table}",),
    ).fetchall()
    return [r[0] for r in rows]


def _live_foreign_keys(conn: psycopg.Connection[Any], table: str) -> set[tuple[str, str, str]]:
    """``{(column, referenced table.column, on delete)}``."""
    rows = conn.execute(
        "SELECT a.attname, cl.relname || '.' || fa.attname, c.confdeltype"
        " FROM pg_constraint c"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1]"
        " JOIN pg_class cl ON cl.oid = c.confrelid"
        " WHERE c.conrelid = %s::regclass AND c.contype = 'f'",
        (f"outbox.{table}",),
    ).fetchall()
    actions = {"c": "CASCADE", "a": "NO ACTION", "r": "RESTRICT", "n": "SET NULL"}
    return {(r[0], r[1], actions[r[2]]) for r in rows}


def test_every_table_has_a_model(conn: psycopg.Connection[Any]) -> None:
    modelled = {m.__table__.name for m in TABLE_MODELS}  # type: ignore[attr-defined]
    # The migrator's own bookkeeping table is not part of the data model.
    assert modelled == _live_tables(conn) - {"schema_migrations"}


@pytest.mark.parametrize("model", TABLE_MODELS, ids=lambda m: m.__name__)
def test_columns_types_nullability_and_keys_match(
    conn: psycopg.Connection[Any], model: type[SQLModel]
) -> None:
    table = model.__table__  # type: ignore[attr-defined]
    assert table.schema == "outbox"
    live = _live_columns(conn, table.name)
    declared = {c.name: c for c in table.columns}
    assert list(declared) == list(live), "column names or order differ"
    for name, (live_type, not_null, identity) in live.items():
        col = declared[name]
        assert col.type.compile(dialect=_DIALECT).lower() == live_type, name
        assert col.nullable is (not not_null), f"{name}: nullability differs"
        want_identity = {"a": True, "d": False}.get(identity)
        got_identity = None if col.identity is None else bool(col.identity.always)
        assert got_identity == want_identity, f"{name}: identity differs"
    assert [c.name for c in table.primary_key.columns] == _live_primary_key(conn, table.name)
    declared_fks = {
        (fk.parent.name, f"{fk.column.table.name}.{fk.column.name}", fk.ondelete or "NO ACTION")
        for fk in table.foreign_keys
    }
    assert declared_fks == _live_foreign_keys(conn, table.name)


def test_models_round_trip_through_a_session(db_url: str) -> None:
    """Database defaults are left to Postgres: ids, timestamps, the event's xid."""
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(db_url))
    try:
        with Session(engine) as session:
            hook = Webhook(
                name="orm", url="https://example.com/h", event_types=["user.*"], secret="s"
            )
            event = Event(event_type="user.created", payload={"user_id": 1})
            session.add(hook)
            session.add(event)
            session.commit()
            assert hook.id is not None and event.id is not None
            delivery = Delivery(webhook_id=hook.id, event_id=event.id, event_type="user.created")
            session.add(delivery)
            session.commit()
            assert delivery.id is not None
            session.add(
                DeliveryAttempt(
                    delivery_id=delivery.id,
                    attempt_number=1,
                    started_at=datetime.now(UTC),
                    duration_ms=1.5,
                    outcome="retry",
                    response_status=500,
                )
            )
            session.commit()

        with Session(engine) as session:
            got = session.exec(select(Webhook)).one()
            assert (got.is_active, got.payload_format, got.success_count) == (True, "raw", 0)
            assert got.created_at is not None and got.created_at.tzinfo is not None
            ev = session.exec(select(Event)).one()
            assert ev.payload == {"user_id": 1} and isinstance(ev.xid, int)
            d = session.exec(select(Delivery)).one()
            assert (d.status, d.attempt_number) == ("pending", 0)
            # The schema cascades: deleting the webhook removes its history.
            session.delete(got)
            session.commit()
            assert session.exec(select(DeliveryAttempt)).all() == []
    finally:
        engine.dispose()
