"""Connections: one place that turns settings into psycopg connections and
turns "cannot connect" into a clear error."""

from __future__ import annotations

import psycopg

from outbox.errors import DatabaseUnavailable


def _describe(url: str) -> str:
    if not url:
        return "the local server (libpq PG* defaults)"
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the configured database"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    db = info.get("dbname") or ""
    return f"{host}:{port}/{db}"


def connect(url: str, *, autocommit: bool = False, connect_timeout: int = 5) -> psycopg.Connection:
    """Open a sync connection or raise :class:`DatabaseUnavailable`."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {_describe(url)}: {str(exc).strip().splitlines()[0]} "
            "(set OUTBOX_DATABASE_URL)"
        ) from exc
    except psycopg.ProgrammingError as exc:
        raise DatabaseUnavailable(f"invalid OUTBOX_DATABASE_URL: {exc}") from exc
