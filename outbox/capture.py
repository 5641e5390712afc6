"""Capture rules: compile ``outbox track`` into triggers.

One rule = (table, operation, event type) with options. Each rule owns one
AFTER trigger and one version-suffixed trigger function
(``outbox.capture_..._v1``) whose body is a single INSERT into
``outbox.events`` plus the no-data NOTIFY doorbell, rung only when a relay is
asleep (sql/003_doorbell.sql); nothing else runs per row. Insert and delete
rules fire once per statement over its transition table; update rules fire
per row (with ``UPDATE OF`` and a ``WHEN`` that skips unchanged columns).

Every change is one transaction under an advisory lock: a bad ``--when`` or
an unknown column leaves nothing behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from outbox.errors import CaptureError
from outbox.events import EVENT_TYPE_RE

FUNCTION_VERSION = "v1"
NOTIFY_CHANNEL = "outbox_events"
# The doorbell advisory lock (sql/003_doorbell.sql, relay/doorbell.py):
# writers ring only when a relay holds or waits for it exclusively, i.e. is
# asleep; otherwise the shared lock they take keeps relays awake until they
# commit.
DOORBELL_KEY = 9202151523130794729
RING = (
    f"IF NOT pg_try_advisory_xact_lock_shared({DOORBELL_KEY}) THEN\n"
    f"        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');\n"
    "    END IF;"
)
# The writer's trace context (sql/005_event_key_trace.sql): one
# current_setting() per trigger call; only a set value is checked (by
# outbox.trace_context, which drops an invalid one with a WARNING). The
# variables are qualified by the block label so that no column of the
# tracked table can shadow them.
TRACE_DECLARE = (
    "    tp text := nullif(current_setting('outbox.traceparent', true), '');\n    ts text;"
)
TRACE_READ = (
    "    IF outbox_capture.tp IS NOT NULL THEN\n"
    "        SELECT c.traceparent, c.tracestate INTO outbox_capture.tp, outbox_capture.ts\n"
    "        FROM outbox.trace_context(outbox_capture.tp,"
    " current_setting('outbox.tracestate', true), true) AS c;\n"
    "    END IF;"
)
OPERATIONS = ("insert", "update", "delete")
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"outbox capture").digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class Rule:
    """A capture rule as the user states it."""

    table: str
    operation: str
    event_type: str
    of: tuple[str, ...] = ()
    when: str | None = None
    columns: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    level: str | None = None  # "row" | "statement"; None: statement for insert/delete
    key: tuple[str, ...] = ()  # --key: the row's value(s), joined with ':'


@dataclass(frozen=True)
class TrackedRule(Rule):
    """A rule as stored in ``outbox.capture_rules`` (``table`` schema-qualified)."""

    trigger_name: str = ""
    function_name: str = ""
    changed: bool = field(default=False, compare=False)


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:10]


def _ident(name: str, limit: int = 63) -> str:
    """Trim a generated identifier to Postgres' 63-byte limit, keeping it unique."""
    if len(name) <= limit:
        return name
    return name[: limit - 11] + "_" + _short_hash(name)


def _lookup_table(conn: psycopg.Connection, table: str) -> tuple[str, str, str] | None:
    """(schema, name, relkind) of ``table`` as to_regclass resolves it, or None."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                (table,),
            ).fetchone()
    except psycopg.Error as exc:
        raise CaptureError(f"invalid table name {table!r}: {exc.diag.message_primary}") from exc
    return (str(row[0]), str(row[1]), str(row[2])) if row else None


def _resolve_table(conn: psycopg.Connection, table: str) -> tuple[str, str, dict[str, str]]:
    """Return (schema, name, {column: type}) or raise CaptureError naming the table."""
    row = _lookup_table(conn, table)
    if row is None:
        raise CaptureError(f"unknown table {table!r}")
    schema, name, kind = row
    if kind not in ("r", "p"):
        raise CaptureError(f"{table!r} is not a table")
    if schema == "outbox":
        raise CaptureError(f"cannot track the outbox's own table {table!r}")
    cols = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (f"{sql.Identifier(schema, name).as_string(conn)}",),
    ).fetchall()
    return schema, name, {c: t for c, t in cols}


def _check_columns(flag: str, cols: Sequence[str], known: dict[str, str], table: str) -> None:
    for c in cols:
        if c not in known:
            raise CaptureError(f"{flag}: unknown column {c!r} in table {table!r}")


def compile_rule(
    conn: psycopg.Connection, rule: Rule, schema: str, table: str, known: dict[str, str]
) -> tuple[str, str, str]:
    """Return (trigger_name, function_name, ddl) for ``rule``; ddl creates both."""
    if rule.operation not in OPERATIONS:
        raise CaptureError(f"unknown operation {rule.operation!r} (insert, update or delete)")
    if not EVENT_TYPE_RE.match(rule.event_type):
        raise CaptureError(
            f"--{rule.operation}: invalid event type {rule.event_type!r} "
            "(lowercase dotted names such as ticket.created)"
        )
    if rule.of and rule.operation != "update":
        raise CaptureError("--of applies to --update rules only")
    if rule.columns is not None and rule.exclude:
        raise CaptureError("--columns and --exclude cannot be combined")
    if rule.columns is not None and not rule.columns:
        raise CaptureError("--columns: give at least one column")
    _check_columns("--of", rule.of, known, table)
    _check_columns("--columns", rule.columns or (), known, table)
    _check_columns("--exclude", rule.exclude, known, table)
    _check_columns("--key", rule.key, known, table)
    for c in rule.key:
        if c in rule.exclude or (rule.columns is not None and c not in rule.columns):
            raise CaptureError(
                f"--key: column {c!r} is kept out of the payload; a key would publish its value"
            )

    def q(name: str) -> str:
        return sql.Identifier(name).as_string(conn)

    row = "OLD" if rule.operation == "delete" else "NEW"
    if rule.columns is not None:
        payload = (
            "jsonb_build_object("
            + ", ".join(f"{sql.Literal(c).as_string(conn)}, {row}.{q(c)}" for c in rule.columns)
            + ")"
        )
    elif rule.exclude:
        arr = "ARRAY[" + ", ".join(sql.Literal(c).as_string(conn) for c in rule.exclude) + "]"
        payload = f"(to_jsonb({row}) - {arr}::text[])"
    else:
        payload = f"to_jsonb({row})"
    if rule.of:
        visible = [
            c
            for c in rule.of
            if c not in rule.exclude and (rule.columns is None or c in rule.columns)
        ]
        if visible:
            prev = (
                "jsonb_build_object("
                + ", ".join(f"{sql.Literal(c).as_string(conn)}, OLD.{q(c)}" for c in visible)
                + ")"
            )
            payload = f"{payload} || jsonb_build_object('previous', {prev})"

    conditions = []
    if rule.of:
        conditions.append(
            "(" + " OR ".join(f"OLD.{q(c)} IS DISTINCT FROM NEW.{q(c)}" for c in rule.of) + ")"
        )
    if rule.when:
        conditions.append(f"({rule.when})")

    key_expr = _key_expr(conn, row, rule.key)
    key = _short_hash(schema, table, rule.operation, rule.event_type)
    trigger_name = _ident(f"outbox_{rule.operation}_{rule.event_type.replace('.', '_')}")
    function_name = _ident(f"capture_{table}_{rule.operation}_{key}_{FUNCTION_VERSION}")
    qualified = f"outbox.{q(function_name)}"
    event_lit = sql.Literal(rule.event_type).as_string(conn)
    target = f"{q(schema)}.{q(table)}"
    if _level(rule) == "statement":
        # One INSERT ... SELECT over the transition table per statement: a
        # 100-row INSERT costs one trigger call, not a hundred. The rows come
        # out in the statement's order, with the same payloads as the row
        # form. The alias is the row variable's name, and use_column makes
        # NEW.col / OLD.col in --when and the payload refer to the alias.
        alias = row.lower()
        where = f"\n    WHERE ({' AND '.join(conditions)})" if conditions else ""
        select = (
            f"SELECT {event_lit}, {payload}, {key_expr}, outbox_capture.tp, outbox_capture.ts"
            f"\n    FROM outbox_rows AS {alias}{where}"
        )
        _check_select(
            conn,
            select.replace("outbox_rows", target).replace(
                "outbox_capture.tp, outbox_capture.ts", "NULL::text, NULL::text"
            ),
            rule,
        )
        transition = "OLD" if rule.operation == "delete" else "NEW"
        ddl = f"""
CREATE OR REPLACE FUNCTION {qualified}() RETURNS trigger
LANGUAGE plpgsql AS $outbox$
#variable_conflict use_column
<<outbox_capture>>
DECLARE
{TRACE_DECLARE}
BEGIN
{TRACE_READ}
    INSERT INTO outbox.events (event_type, payload, key, traceparent, tracestate)
    {select};
    IF FOUND THEN
        {RING}
    END IF;
    RETURN NULL;
END
$outbox$;
CREATE TRIGGER {q(trigger_name)}
    AFTER {rule.operation.upper()} ON {target}
    REFERENCING {transition} TABLE AS outbox_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION {qualified}();
"""
        return trigger_name, function_name, ddl

    of_clause = (" OF " + ", ".join(q(c) for c in rule.of)) if rule.of else ""
    when_clause = f"\n    WHEN ({' AND '.join(conditions)})" if conditions else ""
    ddl = f"""
CREATE OR REPLACE FUNCTION {qualified}() RETURNS trigger
LANGUAGE plpgsql AS $outbox$
<<outbox_capture>>
DECLARE
{TRACE_DECLARE}
BEGIN
{TRACE_READ}
    INSERT INTO outbox.events (event_type, payload, key, traceparent, tracestate)
    VALUES ({event_lit}, {payload}, {key_expr}, outbox_capture.tp, outbox_capture.ts);
    {RING}
    RETURN NULL;
END
$outbox$;
CREATE TRIGGER {q(trigger_name)}
    AFTER {rule.operation.upper()}{of_clause} ON {target}
    FOR EACH ROW{when_clause}
    EXECUTE FUNCTION {qualified}();
"""
    return trigger_name, function_name, ddl


def _key_expr(conn: psycopg.Connection, row: str, cols: Sequence[str]) -> str:
    """The event key: one column as text, or several joined with ':' (a NULL
    part is empty); NULL when every part is NULL."""
    if not cols:
        return "NULL::text"
    parts = [f"({row}.{sql.Identifier(c).as_string(conn)})::text" for c in cols]
    if len(parts) == 1:
        return parts[0]
    joined = ", ':', ".join(parts)
    return f"CASE WHEN num_nonnulls({', '.join(parts)}) > 0 THEN concat({joined}) END"


def _level(rule: Rule) -> str:
    """Insert and delete rules fire per statement (transition table); update
    rules per row, since Postgres cannot pair old and new rows of a
    transition table without a key, nor combine transition tables with
    UPDATE OF column lists."""
    if rule.level is not None:
        if rule.level == "statement" and rule.operation == "update":
            raise CaptureError("statement-level capture is for insert and delete rules")
        return rule.level
    return "row" if rule.operation == "update" else "statement"


def _check_select(conn: psycopg.Connection, select: str, rule: Rule) -> None:
    """A statement trigger's body is only planned at its first firing: plan
    the same query over the table now, so a bad --when fails at track time
    instead of breaking the application's writes."""
    try:
        with conn.transaction():
            conn.execute(f"EXPLAIN {select}".encode())
    except psycopg.Error as exc:
        msg = (exc.diag.message_primary or str(exc)).strip()
        if rule.when:
            raise CaptureError(f"--when does not compile: {msg}") from exc
        raise CaptureError(f"cannot compile capture rule: {msg}") from exc


def _drop_sql(conn: psycopg.Connection, schema: str, table: str, trig: str, func: str) -> str:
    q = sql.Identifier
    return (
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}.{}; DROP FUNCTION IF EXISTS outbox.{}();")
        .format(q(trig), q(schema), q(table), q(func))
        .as_string(conn)
    )


def _table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    r = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchone()
    return bool(r and r[0])


def track(conn: psycopg.Connection, rules: Sequence[Rule]) -> list[TrackedRule]:
    """Create or update capture rules in one transaction.

    A rule identical to the stored one changes nothing (``changed=False``);
    a changed rule replaces its trigger atomically.
    """
    if not rules:
        raise CaptureError("nothing to track: give --insert, --update or --delete")
    out: list[TrackedRule] = []
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            for rule in rules:
                schema, table, known = _resolve_table(conn, rule.table)
                trig, func, ddl = compile_rule(conn, rule, schema, table, known)
                digest = hashlib.sha256(ddl.encode()).hexdigest()
                existing = conn.execute(
                    "SELECT definition_hash, trigger_name, function_name FROM outbox.capture_rules"
                    " WHERE table_schema = %s AND table_name = %s AND operation = %s"
                    " AND event_type = %s",
                    (schema, table, rule.operation, rule.event_type),
                ).fetchone()
                changed = True
                if existing and existing[0] == digest:
                    changed = False
                else:
                    if existing:
                        conn.execute(_drop_sql(conn, schema, table, existing[1], existing[2]))
                    try:
                        with conn.transaction():
                            conn.execute(ddl.encode())
                    except psycopg.Error as exc:
                        msg = (exc.diag.message_primary or str(exc)).strip()
                        if rule.when:
                            raise CaptureError(f"--when does not compile: {msg}") from exc
                        raise CaptureError(f"cannot create trigger on {table!r}: {msg}") from exc
                    conn.execute(
                        """
                        INSERT INTO outbox.capture_rules
                            (table_schema, table_name, operation, event_type, of_columns,
                             when_sql, columns, exclude_columns, key_columns, trigger_name,
                             function_name, definition_hash)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                        ON CONFLICT ON CONSTRAINT capture_rules_table_op_event_key DO UPDATE SET
                            of_columns = EXCLUDED.of_columns, when_sql = EXCLUDED.when_sql,
                            columns = EXCLUDED.columns,
                            exclude_columns = EXCLUDED.exclude_columns,
                            key_columns = EXCLUDED.key_columns,
                            trigger_name = EXCLUDED.trigger_name,
                            function_name = EXCLUDED.function_name,
                            definition_hash = EXCLUDED.definition_hash
                        """,
                        (
                            schema,
                            table,
                            rule.operation,
                            rule.event_type,
                            list(rule.of),
                            rule.when,
                            list(rule.columns) if rule.columns is not None else None,
                            list(rule.exclude),
                            list(rule.key),
                            trig,
                            func,
                            digest,
                        ),
                    )
                out.append(
                    TrackedRule(
                        table=f"{schema}.{table}",
                        operation=rule.operation,
                        event_type=rule.event_type,
                        of=rule.of,
                        when=rule.when,
                        columns=rule.columns,
                        exclude=rule.exclude,
                        key=rule.key,
                        trigger_name=trig,
                        function_name=func,
                        changed=changed,
                    )
                )
    except psycopg.errors.UndefinedTable as exc:
        raise CaptureError("the outbox schema is missing: run `outbox migrate` first") from exc
    return out


def untrack(
    conn: psycopg.Connection, table: str, event_type: str | None = None
) -> list[TrackedRule]:
    """Remove the rules of ``table`` (only ``event_type`` if given); return them."""
    removed: list[TrackedRule] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        schema, name = _split_table(conn, table)
        rows = conn.execute(
            "SELECT id, operation, event_type, trigger_name, function_name"
            " FROM outbox.capture_rules WHERE table_schema = %s AND table_name = %s"
            " AND (%s::text IS NULL OR event_type = %s) ORDER BY id",
            (schema, name, event_type, event_type),
        ).fetchall()
        if not rows:
            what = f"event {event_type!r} of table {table!r}" if event_type else f"table {table!r}"
            raise CaptureError(f"no capture rule for {what}")
        exists = _table_exists(conn, schema, name)
        for rid, op, ev, trig, func in rows:
            if exists:
                conn.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {} ON {}.{}").format(
                        sql.Identifier(trig), sql.Identifier(schema), sql.Identifier(name)
                    )
                )
            conn.execute(
                sql.SQL("DROP FUNCTION IF EXISTS outbox.{}()").format(sql.Identifier(func))
            )
            conn.execute("DELETE FROM outbox.capture_rules WHERE id = %s", (rid,))
            removed.append(
                TrackedRule(
                    table=f"{schema}.{name}",
                    operation=op,
                    event_type=ev,
                    trigger_name=trig,
                    function_name=func,
                    changed=True,
                )
            )
    return removed


def _split_table(conn: psycopg.Connection, table: str) -> tuple[str, str]:
    """Resolve ``table`` like to_regclass would, even if it no longer exists."""
    row = _lookup_table(conn, table)
    if row:
        return row[0], row[1]
    if "." in table:
        s, _, t = table.partition(".")
        return s, t
    return "public", table


def tracked(conn: psycopg.Connection) -> list[TrackedRule]:
    rows = conn.execute(
        "SELECT table_schema, table_name, operation, event_type, of_columns, when_sql,"
        " columns, exclude_columns, trigger_name, function_name, key_columns"
        " FROM outbox.capture_rules ORDER BY table_schema, table_name, operation, event_type"
    ).fetchall()
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    return [
        TrackedRule(
            table=f"{r[0]}.{r[1]}",
            operation=r[2],
            event_type=r[3],
            of=tuple(r[4]),
            when=r[5],
            columns=tuple(r[6]) if r[6] is not None else None,
            exclude=tuple(r[7]),
            trigger_name=r[8],
            function_name=r[9],
            key=tuple(r[10]),
        )
        for r in rows
    ]
