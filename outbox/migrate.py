"""Apply the numbered migrations in ``sql/``.

All pending steps run in one transaction under a transaction-scoped advisory
lock, so two processes migrating at once serialize: the second sees the
first one's versions and applies nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import psycopg

from outbox.errors import MigrationError
from outbox.sqlfiles import migrations

# Arbitrary, fixed: "outbox migrate" as a 64-bit key.
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"outbox migrate").digest()[:8], "big", signed=True
)

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS outbox;
CREATE TABLE IF NOT EXISTS outbox.schema_migrations (
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
)
"""


def migrate(conn: psycopg.Connection, *, log: Callable[[str], None] | None = None) -> list[int]:
    """Apply pending migrations; return the versions applied (empty if none).

    ``conn`` must not be inside a transaction; it is committed on success and
    rolled back on failure (nothing is half-applied).
    """
    steps = migrations()
    applied: list[int] = []
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(_BOOTSTRAP)
            rows = conn.execute("SELECT version, checksum FROM outbox.schema_migrations").fetchall()
            done = {v: c for v, c in rows}
            for version, name, sql in steps:
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum and log:
                        log(f"warning: migration {version:03d}_{name} changed since it was applied")
                    continue
                if log:
                    log(f"applying {version:03d}_{name}")
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO outbox.schema_migrations (version, name, checksum) "
                    "VALUES (%s, %s, %s)",
                    (version, name, checksum),
                )
                applied.append(version)
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {str(exc).strip().splitlines()[0]}") from exc
    return applied


def current_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT to_regclass('outbox.schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    r = conn.execute("SELECT coalesce(max(version), 0) FROM outbox.schema_migrations").fetchone()
    return int(r[0]) if r else 0
