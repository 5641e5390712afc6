"""Apply the numbered migrations in ``sql/``.

All pending steps run in one transaction under a transaction-scoped advisory
lock, so two processes migrating at once serialize: the second sees the
first one's versions and applies nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple

import psycopg
from psycopg.rows import scalar_row

from outbox.errors import MigrationError
from outbox.names import MIGRATION_KEY
from outbox.rows import record_row
from outbox.sqlfiles import migrations, query

_SQL = "migrate.sql"


class _Applied(NamedTuple):
    version: int
    checksum: str


def migrate(conn: psycopg.Connection, *, log: Callable[[str], None] | None = None) -> list[int]:
    """Apply pending migrations; return the versions applied (empty if none).

    ``conn`` must not be inside a transaction; it is committed on success and
    rolled back on failure (nothing is half-applied).
    """
    steps = migrations()
    applied: list[int] = []
    try:
        with conn.transaction():
            conn.execute(query("migrate_lock", _SQL), {"key": MIGRATION_KEY})
            conn.execute(query("migrate_schema", _SQL))
            conn.execute(query("migrate_versions_table", _SQL))
            with conn.cursor(row_factory=record_row(_Applied)) as cur:
                done = {r.version: r.checksum for r in cur.execute(query("migrate_applied", _SQL))}
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
                    query("migrate_record", _SQL),
                    {"version": version, "name": name, "checksum": checksum},
                )
                applied.append(version)
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {str(exc).strip().splitlines()[0]}") from exc
    _ddl_guard(conn, log)
    return applied


def _ddl_guard(conn: psycopg.Connection, log: Callable[[str], None] | None) -> None:
    """The DDL event triggers of schema-aware capture need a superuser (or a
    managed provider's admin role); without them, migrate says so in one
    line and carries on: outbox serve's rule check protects that database."""
    from outbox.capture import install_ddl_guard, reanchor

    try:
        installed = install_ddl_guard(conn)
        moved = reanchor(conn)
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {str(exc).strip().splitlines()[0]}") from exc
    if moved and log:
        log(f"capture: {moved} tracked table(s) found again by their triggers (a restore?)")
    if not installed and log:
        log(
            "note: the DDL event trigger was not installed (it needs a superuser): capture "
            "rules are not re-checked on ALTER/DROP; outbox serve and outbox tracked report "
            "stale rules instead (docs/capture.md)"
        )


def current_version(conn: psycopg.Connection) -> int:
    with conn.cursor(row_factory=scalar_row) as cur:
        if not cur.execute(query("migrate_has_versions", _SQL)).fetchone():
            return 0
        version = cur.execute(query("migrate_current_version", _SQL)).fetchone()
    return int(version) if version is not None else 0
