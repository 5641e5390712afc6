"""Where ``outbox demo`` puts things, and ``outbox demo --reset`` taking them away.

The demo never writes into a database it was not pointed at:

* a database named for it (``--database-url`` or ``OUTBOX_DATABASE_URL``)
  is used as named (created when the server answers and it is missing);
* otherwise (``DATABASE_URL``, libpq ``PG*`` variables, or nothing: the
  ambient defaults, which are usually an application's own database) only
  the *server* is taken from them and the demo works in a database of its
  own there, ``outbox_demo`` (``OUTBOX_DEMO_DATABASE`` to name it
  otherwise), created when missing;
* with no server answering, in its private embedded cluster (cli/embedded.py).

What the demo creates is marked, so ``--reset`` removes exactly that: a
database it created carries a COMMENT saying so and is dropped whole; in a
database it did not create, it removes schema ``demo``, the demo's capture
rules and webhooks, and schema ``outbox`` only if the demo created it (also
marked by a COMMENT) and nothing else is tracked into it. The embedded
cluster's directory is removed with the cluster.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from outbox.errors import DatabaseUnavailable, OutboxError
from outbox.sqlfiles import query


def _q(name: str) -> str:
    return query(name, "database.sql")


DEMO_DB = "outbox_demo"
# The name of the demo's own database (when nothing is named for it).
ENV_DEMO_DB = "OUTBOX_DEMO_DATABASE"


def demo_db_name(env: Mapping[str, str]) -> str:
    return env.get(ENV_DEMO_DB) or DEMO_DB


MARK = "created by outbox demo; `outbox demo --reset` removes it"
Say = Callable[[str], None]


@dataclass
class Target:
    """The database the demo uses and how it came to be."""

    url: str
    where: str  # for people: "database outbox_demo on localhost:5432"
    named: bool  # the user pointed the demo at it
    created: bool  # this run created the database
    cluster: Any = None  # the embedded cluster, when the demo runs in it


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _server(url: str) -> str:
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the configured server"
    host = info.get("host") or "the local server"
    port = info.get("port") or "5432"
    return f"{host}:{port}" if info.get("host") else f"{host} (port {port})"


def _dbname(url: str) -> str | None:
    try:
        name = psycopg.conninfo.conninfo_to_dict(url).get("dbname")
    except psycopg.ProgrammingError:
        return None
    return str(name) if name else None


def _admin(url: str) -> psycopg.Connection[Any]:
    """A connection to the server's maintenance database (postgres, else template1)."""
    last: psycopg.Error | None = None
    for db in ("postgres", "template1"):
        try:
            return psycopg.connect(
                psycopg.conninfo.make_conninfo(url, dbname=db), autocommit=True, connect_timeout=3
            )
        except psycopg.Error as exc:
            last = exc
    assert last is not None
    raise last


def _ensure_database(url: str, say: Say) -> bool:
    """Create the database ``url`` names when missing (marked as the demo's); True if created."""
    name = _dbname(url)
    assert name
    with _admin(url) as conn:
        row = conn.execute(_q("database_exists"), {"dbname": name}).fetchone()
        if row and row[0]:
            return False
        try:
            ident = sql.Identifier(name)
            conn.execute(sql.SQL(_q("create_database")).format(dbname=ident))
            conn.execute(sql.SQL(_q("mark_database")).format(dbname=ident, mark=sql.Literal(MARK)))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise OutboxError(
                f"cannot create database {name} on {_server(url)}: {_first_line(exc)}; "
                "point the demo at a database with --database-url (it adds schemas outbox "
                "and demo there)"
            ) from None
    say(f"created database {name} on {_server(url)} (`outbox demo --reset` drops it)")
    return True


def _answers(url: str) -> str | None:
    """None when the server answers (any database), else why not in one line."""
    try:
        _admin(url).close()
        return None
    except psycopg.Error as exc:
        return _first_line(exc)


def choose(
    *,
    named_url: str | None,
    ambient_url: str,
    ambient_set: bool,
    embedded: bool,
    data_dir: Path | None,
    env: Mapping[str, str],
    say: Say,
) -> Target:
    """The demo's database: named, its own on the ambient server, or the embedded cluster.

    ``named_url``: from ``--database-url``/``OUTBOX_DATABASE_URL``.
    ``ambient_url``: ``DATABASE_URL`` or "" (libpq defaults); ``ambient_set``:
    whether the user set it or ``PG*`` variables (then the server must answer:
    a typo is an error, not a silent switch to a private cluster).
    """
    from outbox.cli.embedded import NOTHING_TO_RUN, locate

    if not embedded and named_url:
        why = _answers(named_url)
        if why is not None:
            raise DatabaseUnavailable(
                f"cannot connect to the configured database: {why} "
                "(check --database-url / OUTBOX_DATABASE_URL)"
            )
        created = bool(_dbname(named_url)) and _ensure_database(named_url, say)
        where = f"database {_dbname(named_url) or '(default)'} on {_server(named_url)}"
        say(f"database: {where} (named by --database-url / OUTBOX_DATABASE_URL)")
        return Target(named_url, where, named=True, created=created)
    if not embedded:
        name = demo_db_name(env)
        url = psycopg.conninfo.make_conninfo(ambient_url, dbname=name)
        why = _answers(url)
        if why is None:
            created = _ensure_database(url, say)
            where = f"database {name} on {_server(url)}"
            note = "" if created else " (the demo's own, from an earlier run)"
            say(f"database: {where}{note}; your default database is not touched")
            return Target(url, where, named=False, created=created)
        if ambient_set:
            raise DatabaseUnavailable(
                f"cannot connect to the server named by DATABASE_URL / PG* variables: {why}"
            )
        say(f"no PostgreSQL answers at the local server ({why})")
    cluster = locate(env, data_dir, log=say)
    if cluster is None:
        raise OutboxError(NOTHING_TO_RUN)
    url = cluster.start()
    where = f"the embedded PostgreSQL in {cluster.root}"
    say(f"database: embedded PostgreSQL in {cluster.data} (connect: {cluster.psql_hint()})")
    return Target(url, where, named=False, created=False, cluster=cluster)


def outbox_schema_exists(conn: psycopg.Connection[Any]) -> bool:
    return _schema_exists(conn, "outbox")


def _schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute(_q("schema_exists"), {"schema": schema}).fetchone()
    return bool(row and row[0])


def mark_outbox_schema(conn: psycopg.Connection[Any]) -> None:
    """Schema outbox was created by this demo run: say so where --reset will look."""
    with conn.transaction():
        conn.execute(sql.SQL(_q("mark_outbox_schema")).format(mark=sql.Literal(MARK)))


def where_things_are(target: Target) -> str:
    """The closing line: what the demo left, and how to remove it."""
    if target.cluster is not None:
        return (
            f"left in place: {target.where} (schemas outbox and demo); "
            "`outbox demo --reset` removes the cluster"
        )
    return (
        f"left in place: schemas outbox and demo in {target.where}; "
        "`outbox demo --reset` removes what the demo created"
    )


# --- --reset ------------------------------------------------------------------------------


def reset(
    *,
    named_url: str | None,
    ambient_url: str,
    data_dir: Path | None,
    env: Mapping[str, str],
    say: Say,
) -> bool:
    """Remove what the demo created; True if anything was removed."""
    from outbox.cli.embedded import EmbeddedCluster, default_dir, find_bindir

    removed = False
    url = named_url or psycopg.conninfo.make_conninfo(ambient_url, dbname=demo_db_name(env))
    if _answers(url) is None:
        removed |= _reset_database(url, say)
    else:
        say(f"no server answers for {_server(url)}: nothing to remove there")
    root = data_dir or default_dir(env)
    if (root / "data" / "PG_VERSION").is_file():
        bindir = find_bindir(env)
        if bindir is not None or (root / "pginstall" / "bin").is_dir():
            cluster = EmbeddedCluster(bindir or root / "pginstall" / "bin", root, log=say)
            cluster.stop_any()
        shutil.rmtree(root)
        say(f"removed the embedded cluster in {root}")
        removed = True
    if not removed:
        say("nothing to remove: the demo has left nothing behind")
    return removed


def _reset_database(url: str, say: Say) -> bool:
    name = _dbname(url)
    if name:
        with _admin(url) as admin:
            row = admin.execute(_q("database_comment"), {"dbname": name}).fetchone()
            if row is None:
                return False
            if row[0] == MARK:
                admin.execute(sql.SQL(_q("drop_database")).format(dbname=sql.Identifier(name)))
                say(f"dropped database {name} on {_server(url)} (created by outbox demo)")
                return True
    return _clean_inside(url, name or "(default)", say)


def _clean_inside(url: str, name: str, say: Say) -> bool:
    """A database the demo did not create: remove only the demo's own objects."""
    from outbox.capture import untrack
    from outbox.cli.demo_domain import FLAKY_WEBHOOK, MAIN_WEBHOOK, RULES
    from outbox.errors import CaptureError

    removed: list[str] = []
    with psycopg.connect(url, connect_timeout=5) as conn:
        has_outbox = outbox_schema_exists(conn)
        demo = _schema_exists(conn, "demo")
        if has_outbox:
            for table in sorted({r.table for r in RULES}):
                with contextlib.suppress(CaptureError):  # not tracked (any more)
                    untrack(conn, table)
            cur = conn.execute(_q("delete_demo_webhooks"), {"names": [MAIN_WEBHOOK, FLAKY_WEBHOOK]})
            if cur.rowcount:
                removed.append(f"{cur.rowcount} demo webhooks")
        if demo:
            conn.execute(_q("drop_demo_schema"))
            removed.append("schema demo")
        conn.commit()
        if has_outbox:
            mark = conn.execute(_q("schema_comment"), {"schema": "outbox"}).fetchone()
            others = conn.execute(_q("capture_rule_count")).fetchone()
            if mark and mark[0] == MARK and others and others[0] == 0:
                conn.execute(_q("drop_outbox_schema"))
                conn.commit()
                removed.append("schema outbox (created by the demo)")
            elif mark and mark[0] == MARK:
                say("kept schema outbox: tables other than the demo's are tracked into it")
    if removed:
        say(f"removed from database {name} on {_server(url)}: {', '.join(removed)}")
    return bool(removed)
