"""Locate and load the SQL in ``sql/``: numbered migrations and named queries.

``sql/`` at the repository root is the single source of truth for the schema;
``outbox/sql`` is a symlink to it, so a built wheel carries the same files as
package data and a non-editable install finds them too.
Every other ``.sql`` file holds the named statements of one consumer (for
example ``feed.sql`` for relay/feed.py): blocks that start with
``-- name: query_name``, each a whole statement. Comments above a block's
SQL stay part of it; they say why the statement is written as it is.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

_SQL_DIR = Path(__file__).parent / "sql"
_MIGRATION_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_NAME_RE = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    if not _SQL_DIR.is_dir():  # pragma: no cover - broken install
        raise FileNotFoundError(f"SQL directory not found: {_SQL_DIR}")
    return _SQL_DIR


def migrations() -> list[tuple[int, str, str]]:
    """Return ``(version, name, sql)`` for every ``NNN_name.sql``, in order."""
    found = []
    for path in sorted(sql_dir().iterdir()):
        m = _MIGRATION_RE.match(path.name)
        if m:
            found.append((int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 001.. without gaps, got {versions}")
    return found


@functools.cache
def queries(filename: str) -> dict[str, str]:
    """Parse a named-query file into ``{name: sql}`` (once per process)."""
    text = (sql_dir() / filename).read_text(encoding="utf-8")
    parts = _NAME_RE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise RuntimeError(f"sql/{filename}: two statements named {name!r}")
        out[name] = body.strip().rstrip(";")
    return out


def query(name: str, filename: str) -> str:
    """The statement ``name`` of ``sql/<filename>``; KeyError if there is none."""
    return queries(filename)[name]


@functools.cache
def bare_query(name: str, filename: str) -> str:
    """:func:`query` without its comment lines (the reasons stay in the file).

    For statements run many times a second: psycopg converts a query's
    ``%(name)s`` placeholders on every execute and caches the conversion only
    for texts up to 4,096 characters, and the comments can take a statement
    past that (the feed read was re-parsed on every read: ~10% of an idle
    relay's CPU, issue 22). Lines are kept, blank, so error positions still
    point into the statement.
    """
    lines = query(name, filename).split("\n")
    return "\n".join("" if line.lstrip().startswith("--") else line for line in lines)
