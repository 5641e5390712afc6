"""Bench databases: one fresh, migrated database per scenario, dropped after.

A fresh database per scenario keeps one scenario's leftovers (a million
events, dead tuples, a grown sequence) out of the next one's numbers.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import conninfo, sql

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url_from_env() -> str:
    return os.environ.get("BENCH_ADMIN_URL") or DEFAULT_ADMIN_URL


def url_with(url: str, **changes: str) -> str:
    """``url`` with some connection parameters replaced (libpq key=value form)."""
    info = conninfo.conninfo_to_dict(url)
    info.update(changes)
    return conninfo.make_conninfo("", **info)


def url_for(admin_url: str, dbname: str) -> str:
    return url_with(admin_url, dbname=dbname)


@contextlib.contextmanager
def bench_database(admin_url: str, scenario: str, *, migrate: bool = True) -> Iterator[str]:
    """Create ``bench_<scenario>_<random>``, migrate it, yield its URL, drop it."""
    from outbox.migrate import migrate as apply_migrations

    name = f"bench_{scenario}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = url_for(admin_url, name)
    try:
        if migrate:
            with psycopg.connect(url) as conn:
                apply_migrations(conn)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
