"""Migrations: from empty, re-run, two concurrent runs."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from outbox.migrate import current_version, migrate
from outbox.sqlfiles import migrations


def test_migrate_from_empty_creates_schema(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        assert current_version(conn) == 0
        applied = migrate(conn)
        assert applied == [v for v, _, _ in migrations()]
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'outbox'"
            )
        }
    assert {
        "events",
        "webhooks",
        "deliveries",
        "delivery_attempts",
        "api_tokens",
        "relay_state",
        "capture_rules",
        "schema_migrations",
    } <= tables


def test_migrate_is_idempotent(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        first = migrate(conn)
        assert first
        assert migrate(conn) == []
        assert current_version(conn) == max(first)
        n = conn.execute("SELECT count(*) FROM outbox.schema_migrations").fetchone()
        assert n is not None and n[0] == len(first)


def test_two_concurrent_migrations_serialize(empty_db_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with psycopg.connect(empty_db_url) as conn:
                barrier.wait(timeout=10)
                results.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(len(r) for r in results) == [0, len(migrations())]


def test_failed_migration_leaves_nothing(empty_db_url: str, monkeypatch: Any) -> None:
    import importlib

    from outbox.errors import MigrationError

    m = importlib.import_module("outbox.migrate")
    good = migrations()
    monkeypatch.setattr(m, "migrations", lambda: [*good, (len(good) + 1, "broken", "SELEC 1")])
    with psycopg.connect(empty_db_url) as conn:
        with pytest.raises(MigrationError, match="migration failed"):
            m.migrate(conn)
        row = conn.execute("SELECT to_regclass('outbox.events')").fetchone()
        assert row is not None and row[0] is None
