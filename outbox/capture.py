"""Capture rules: compile ``outbox track`` into triggers that follow the table.

One rule = (table, operation, event type) with options (``--of``,
``--when``, ``--key``). The column policy (``--columns`` / ``--exclude``)
belongs to the table and applies to every rule on it. Tables and columns
are held by identity (pg_class oid, attnum), so renames keep capture,
exclusions, ``--of`` and ``--key`` working.

Each rule owns one AFTER trigger and one trigger function in schema
``outbox`` whose body is a single INSERT into ``outbox.events`` (with the
row's key and the transaction's trace context) plus the no-data NOTIFY
doorbell, rung only when a relay is asleep (sql/003_doorbell.sql). Insert
and delete rules fire once per statement over its transition table; update
rules fire per row (with ``UPDATE OF`` and a ``WHEN`` that skips unchanged
columns).

The compiler is in the database (sql/010_capture_identity.sql), because the
DDL event trigger regenerates rules inside the transaction that altered
their table; this module validates what the user asked for, stores it and
calls that compiler, so there is one. Every change is one transaction under
an advisory lock: a bad ``--when`` or an unknown column leaves nothing
behind. docs/capture.md lists what each kind of DDL does to a rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outbox.errors import CaptureError
from outbox.events import EVENT_TYPE_RE
from outbox.names import CAPTURE_KEY, DOORBELL_KEY, EVENTS_CHANNEL
from outbox.sqlfiles import query

FUNCTION_VERSION = "v2"
NOTIFY_CHANNEL = EVENTS_CHANNEL
# The doorbell advisory lock (sql/003_doorbell.sql, relay/doorbell.py):
# writers ring only when a relay holds or waits for it exclusively, i.e. is
# asleep; otherwise the shared lock they take keeps relays awake until they
# commit. The compiled triggers carry exactly this text (bench/b1_write.py
# takes it out for its wake-up-off variant).
RING = (
    f"IF NOT pg_try_advisory_xact_lock_shared({DOORBELL_KEY}) THEN\n"
    f"        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');\n"
    "    END IF;"
)
OPERATIONS = ("insert", "update", "delete")
POLICIES = ("all", "columns", "exclude")
# SQLSTATEs raised by the compiler: a rule that cannot be compiled, and a
# DDL statement refused because it would leak a column or end a rule.
COMPILE_ERROR = "OB001"
DDL_REFUSED = "OB002"
_LOCK_KEY = CAPTURE_KEY
_SQL_FILE = "capture.sql"


def _q(name: str) -> str:
    return query(name, _SQL_FILE)


@dataclass(frozen=True)
class Rule:
    """A capture rule as the user states it.

    ``columns``/``exclude`` set the table's column policy (shared by all of
    its rules); leaving both unset keeps the policy the table has.
    """

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
    """A rule as stored (``table`` schema-qualified; ``columns``/``exclude``
    are the table's policy).

    ``status`` says what ``track`` did: ``tracked`` (new), ``unchanged``,
    ``updated`` (the rule or the table changed) or ``restored`` (its
    trigger or function was missing); ``untracked`` for ``untrack``.
    ``state`` is what verification found: ``ok``, ``missing``, ``stale``,
    ``disabled``, ``detached`` (the table is gone) or ``broken``.
    """

    trigger_name: str = ""
    function_name: str = ""
    changed: bool = field(default=False, compare=False)
    status: str = field(default="", compare=False)
    state: str = field(default="ok", compare=False)
    detail: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Policy:
    """A table's column policy: ``all`` columns, only ``columns``, or all but ``exclude``."""

    kind: str = "all"
    columns: tuple[str, ...] = ()

    @classmethod
    def of(cls, columns: Sequence[str] | None, exclude: Sequence[str]) -> Policy | None:
        """The policy a command asks for, or None when it names none."""
        if columns is not None and exclude:
            raise CaptureError(
                "cannot be combined with {exclude}", field="columns", related=("exclude",)
            )
        if columns is not None:
            if not columns:
                raise CaptureError("give at least one column", field="columns")
            return cls("columns", tuple(columns))
        if exclude:
            return cls("exclude", tuple(exclude))
        return None

    def describe(self) -> str:
        if self.kind == "all":
            return "all columns"
        return f"{self.kind} {','.join(self.columns)}"

    def same_as(self, other: Policy) -> bool:
        # Order does not matter: jsonb keeps an object's keys in its own order.
        return self.kind == other.kind and set(self.columns) == set(other.columns)


@dataclass(frozen=True)
class _Table:
    relid: int
    schema: str
    name: str
    columns: dict[str, int]  # name -> attnum

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:10]


def _ident(name: str, limit: int = 63) -> str:
    """Trim a generated identifier to Postgres' 63-byte limit, keeping it unique."""
    if len(name.encode()) <= limit:
        return name
    return name[: limit - 11] + "_" + _short_hash(name)


def _message(exc: psycopg.Error) -> str:
    msg = (exc.diag.message_primary or str(exc)).strip()
    return msg.removeprefix("outbox: ")


def _lookup(conn: psycopg.Connection, table: str) -> dict[str, Any] | None:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(_q("table_lookup"), {"name": table}).fetchone()
    except psycopg.Error as exc:
        raise CaptureError(f"invalid table name {table!r}: {_message(exc)}") from exc


def _resolve(conn: psycopg.Connection, table: str) -> _Table:
    row = _lookup(conn, table)
    if row is None:
        raise CaptureError(f"unknown table {table!r}")
    if row["kind"] not in ("r", "p"):
        raise CaptureError(f"{table!r} is not a table")
    if row["schema"] == "outbox":
        raise CaptureError(f"cannot track the outbox's own table {table!r}")
    cols = conn.execute(_q("table_columns"), {"relid": row["relid"]}).fetchall()
    return _Table(int(row["relid"]), row["schema"], row["name"], {n: int(a) for a, n in cols})


def _attnums(field: str, cols: Sequence[str], t: _Table) -> list[int]:
    for c in cols:
        if c not in t.columns:
            raise CaptureError(f"unknown column {c!r} in table {t.name!r}", field=field)
    return [t.columns[c] for c in cols]


def _level(rule: Rule) -> str:
    """Insert and delete rules fire per statement (transition table); update
    rules per row, since Postgres cannot pair old and new rows of a
    transition table without a key, nor combine transition tables with
    UPDATE OF column lists."""
    if rule.level is not None:
        if rule.level not in ("row", "statement"):
            raise CaptureError(f"unknown level {rule.level!r} (row or statement)")
        if rule.level == "statement" and rule.operation == "update":
            raise CaptureError("statement-level capture is for insert and delete rules")
        return rule.level
    return "row" if rule.operation == "update" else "statement"


def _check_rule(rule: Rule) -> None:
    if rule.operation not in OPERATIONS:
        raise CaptureError(f"unknown operation {rule.operation!r} (insert, update or delete)")
    if not EVENT_TYPE_RE.match(rule.event_type):
        raise CaptureError(
            f"invalid event type {rule.event_type!r} "
            "(lowercase dotted names such as ticket.created)",
            field=rule.operation,
        )
    if rule.of and rule.operation != "update":
        raise CaptureError("applies to {update} rules only", field="of", related=("update",))
    _level(rule)


def _check_key(rule: Rule, policy: Policy) -> None:
    for c in rule.key:
        hidden = (policy.kind == "exclude" and c in policy.columns) or (
            policy.kind == "columns" and c not in policy.columns
        )
        if hidden:
            raise CaptureError(
                f"column {c!r} is kept out of the payload; a key would publish its value",
                field="key",
            )


def _table_row(conn: psycopg.Connection, t: _Table) -> tuple[int, Policy, bool]:
    """The table's capture row (created, attached or synced); (id, policy, new)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_q("capture_table_by_relid"), {"relid": t.relid}).fetchone()
        new = False
        if row is None:
            waiting = conn.execute(_q("capture_table_waiting"), {"relid": t.relid}).fetchone()
            if waiting and waiting[0] is not None:
                conn.execute(_q("capture_table_attach"), {"id": waiting[0], "relid": t.relid})
            else:
                conn.execute(
                    _q("capture_table_insert"),
                    {"relid": t.relid, "schema": t.schema, "name": t.name},
                )
                new = True
            row = cur.execute(_q("capture_table_by_relid"), {"relid": t.relid}).fetchone()
        else:
            conn.execute(_q("capture_table_sync"), {"id": row["id"]})
            row = cur.execute(_q("capture_table_by_relid"), {"relid": t.relid}).fetchone()
    assert row is not None
    return int(row["id"]), Policy(row["policy"], tuple(row["policy_columns"])), new


def _set_policy(
    conn: psycopg.Connection, table_id: int, t: _Table, policy: Policy
) -> dict[int, str]:
    """Store the table's policy and regenerate every rule; {rule id: install result}."""
    field = "columns" if policy.kind == "columns" else "exclude"
    conn.execute(
        _q("capture_table_set_policy"),
        {
            "id": table_id,
            "policy": policy.kind,
            "attnums": _attnums(field, policy.columns, t),
            "columns": list(policy.columns),
        },
    )
    rules = conn.execute(_q("capture_table_rules"), {"id": table_id}).fetchall()
    return {rid: _install(conn, rid) for rid, _, _, _ in rules}


def _install(conn: psycopg.Connection, rule_id: int, *, enable: bool = False) -> str:
    row = conn.execute(_q("rule_install"), {"id": rule_id, "enable": enable}).fetchone()
    assert row is not None
    return str(row[0])


def _names(t: _Table, rule: Rule) -> tuple[str, str]:
    trigger = _ident(f"outbox_{rule.operation}_{rule.event_type.replace('.', '_')}")
    key = _short_hash(t.schema, t.name, rule.operation, rule.event_type)
    function = _ident(f"capture_{t.name}_{rule.operation}_{key}_{FUNCTION_VERSION}")
    return trigger, function


def track(
    conn: psycopg.Connection, rules: Sequence[Rule], *, policy: Policy | None = None
) -> list[TrackedRule]:
    """Create or update capture rules in one transaction.

    A rule identical to the stored one, whose trigger is in place, changes
    nothing (``status="unchanged"``); a changed rule replaces its trigger
    atomically; a rule whose trigger or function went missing is restored.
    ``policy`` (or the rules' ``columns``/``exclude``) sets the table's
    column policy; a policy different from the table's is refused when the
    table has other rules (change it with :func:`set_policy`).
    """
    if not rules:
        raise CaptureError(
            "nothing to track: give {insert}, {update} or {delete}",
            related=("insert", "update", "delete"),
        )
    out: list[TrackedRule] = []
    try:
        with conn.transaction():
            conn.execute(_q("capture_lock"), {"key": _LOCK_KEY})
            for rule in rules:
                _check_rule(rule)
            tables: dict[str, tuple[_Table, list[Rule]]] = {}
            for rule in rules:
                t = _resolve(conn, rule.table)
                tables.setdefault(t.qualified, (t, []))[1].append(rule)
            for t, mine in tables.values():
                out += _track_table(conn, t, mine, policy)
    except psycopg.Error as exc:
        if exc.sqlstate in (COMPILE_ERROR, DDL_REFUSED):
            raise CaptureError(_message(exc)) from exc
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
            raise CaptureError("the outbox schema is missing: run `outbox migrate` first") from exc
        raise CaptureError(f"cannot track: {_message(exc)}") from exc
    return out


def _track_table(
    conn: psycopg.Connection, t: _Table, rules: list[Rule], policy: Policy | None
) -> list[TrackedRule]:
    asked = {Policy.of(r.columns, r.exclude) for r in rules} - {None}
    if policy is not None:
        asked.add(policy)
    if len(asked) > 1:
        raise CaptureError(
            "{columns}/{exclude} are the table's: give one policy per command",
            related=("columns", "exclude"),
        )
    wanted = asked.pop() if asked else None
    table_id, current, _ = _table_row(conn, t)
    existing = conn.execute(_q("capture_table_rules"), {"id": table_id}).fetchall()
    if wanted is not None and not wanted.same_as(current):
        field = "columns" if wanted.kind == "columns" else "exclude"
        _attnums(field, wanted.columns, t)
        named = {(r.operation, r.event_type) for r in rules}
        others = [f"{op} -> {ev}" for _, op, ev, _ in existing if (op, ev) not in named]
        if others and current.kind != "all":
            raise CaptureError(
                f"table {t.qualified} has the column policy {current.describe()}, shared by "
                f"its rules {', '.join(others)}; to change it for all of them run "
                f"`outbox track {t.qualified} --{field} {','.join(wanted.columns)}` alone"
            )
        # From "all columns" any policy only narrows what the other rules send.
        regenerated = _set_policy(conn, table_id, t, wanted)
        current = wanted
    else:
        regenerated = {}
    out = []
    named = {(r.operation, r.event_type) for r in rules}
    for rule_id, op, ev, _ in existing:
        if (op, ev) not in named and rule_id not in regenerated:
            # The table's other rules catch up too (a rename seen only now).
            _install(conn, rule_id)
    for rule in rules:
        _check_key(rule, current)
        of = _attnums("of", rule.of, t)
        key = _attnums("key", rule.key, t)
        trigger, function = _names(t, rule)
        before = conn.execute(
            _q("rule_get"),
            {"table_id": table_id, "operation": rule.operation, "event_type": rule.event_type},
        ).fetchone()
        row = conn.execute(
            _q("rule_upsert"),
            {
                "table_id": table_id,
                "schema": t.schema,
                "name": t.name,
                "operation": rule.operation,
                "event_type": rule.event_type,
                "level": _level(rule),
                "of_columns": list(rule.of),
                "of_attnums": of,
                "key_columns": list(rule.key),
                "key_attnums": key,
                "when_sql": rule.when,
                "trigger_name": trigger,
                "function_name": function,
            },
        ).fetchone()
        assert row is not None
        result = _install(conn, int(row[0]), enable=True)
        if result == "unchanged":
            result = regenerated.get(int(row[0]), result)
        status = (
            "tracked"
            if before is None
            else {"unchanged": "unchanged", "installed": "restored"}.get(result, "updated")
        )
        out.append(
            TrackedRule(
                table=t.qualified,
                operation=rule.operation,
                event_type=rule.event_type,
                of=rule.of,
                when=rule.when,
                columns=current.columns if current.kind == "columns" else None,
                exclude=current.columns if current.kind == "exclude" else (),
                level=_level(rule),
                key=rule.key,
                trigger_name=str(row[1]),
                function_name=str(row[2]),
                changed=status != "unchanged",
                status=status,
            )
        )
    return out


def set_policy(conn: psycopg.Connection, table: str, policy: Policy) -> list[TrackedRule]:
    """Change a tracked table's column policy; regenerate all its rules at once."""
    try:
        with conn.transaction():
            conn.execute(_q("capture_lock"), {"key": _LOCK_KEY})
            t = _resolve(conn, table)
            with conn.cursor() as cur:
                found = cur.execute(_q("capture_table_by_relid"), {"relid": t.relid}).fetchone()
            if found is None:
                raise CaptureError(
                    f"table {t.qualified} has no capture rules: give {{insert}}, {{update}} "
                    "or {delete} with the policy",
                    related=("insert", "update", "delete"),
                )
            table_id, _, _ = _table_row(conn, t)
            for _, op, ev, key in conn.execute(_q("capture_table_rules"), {"id": table_id}):
                _check_key(Rule(t.qualified, op, ev, key=tuple(key)), policy)
            _set_policy(conn, table_id, t, policy)
    except psycopg.Error as exc:
        if exc.sqlstate in (COMPILE_ERROR, DDL_REFUSED):
            raise CaptureError(_message(exc)) from exc
        raise CaptureError(f"cannot change the policy: {_message(exc)}") from exc
    return [r for r in tracked(conn) if r.table == t.qualified]


def untrack(
    conn: psycopg.Connection, table: str, event_type: str | None = None
) -> list[TrackedRule]:
    """Remove the rules of ``table`` (only ``event_type`` if given); return them.

    ``table`` is the table's current name, or, for a table that was dropped,
    the name its rules wait under.
    """
    removed: list[TrackedRule] = []
    with conn.transaction():
        conn.execute(_q("capture_lock"), {"key": _LOCK_KEY})
        table_id, qualified = _find_tracked(conn, table)
        rows = (
            conn.execute(
                _q("rules_of_table"), {"table_id": table_id, "event_type": event_type}
            ).fetchall()
            if table_id is not None
            else []
        )
        if not rows:
            what = f"event {event_type!r} of table {table!r}" if event_type else f"table {table!r}"
            raise CaptureError(f"no capture rule for {what}")
        for rid, op, ev, trig, func in rows:
            conn.execute(_q("rule_remove"), {"id": rid})
            removed.append(
                TrackedRule(
                    table=qualified,
                    operation=op,
                    event_type=ev,
                    trigger_name=trig,
                    function_name=func,
                    changed=True,
                    status="untracked",
                )
            )
    return removed


def _find_tracked(conn: psycopg.Connection, table: str) -> tuple[int | None, str]:
    row = _lookup(conn, table)
    if row is not None:
        found = conn.execute(_q("capture_table_by_relid"), {"relid": row["relid"]}).fetchone()
        if found is not None:
            return int(found[0]), f"{row['schema']}.{row['name']}"
        schema, name = str(row["schema"]), str(row["name"])
    elif "." in table:
        schema, _, name = table.partition(".")
    else:
        schema, name = "public", table
    by_name = conn.execute(_q("capture_table_by_name"), {"schema": schema, "name": name}).fetchone()
    if by_name is None:
        return None, f"{schema}.{name}"
    return int(by_name[0]), f"{by_name[1]}.{by_name[2]}"


def tracked(conn: psycopg.Connection) -> list[TrackedRule]:
    """Every rule, with its table's policy and its verified state."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_q("rules_list")).fetchall()
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    return [
        TrackedRule(
            table=f"{r['table_schema']}.{r['table_name']}",
            operation=r["operation"],
            event_type=r["event_type"],
            of=tuple(r["of_columns"]),
            when=r["when_sql"],
            columns=tuple(r["policy_columns"]) if r["policy"] == "columns" else None,
            exclude=tuple(r["policy_columns"]) if r["policy"] == "exclude" else (),
            level=r["level"],
            key=tuple(r["key_columns"]),
            trigger_name=r["trigger_name"],
            function_name=r["function_name"],
            state=r["state"],
            detail=r["detail"],
        )
        for r in rows
    ]


def policy_of(rule: TrackedRule) -> Policy:
    if rule.columns is not None:
        return Policy("columns", rule.columns)
    if rule.exclude:
        return Policy("exclude", rule.exclude)
    return Policy()


@dataclass(frozen=True)
class RuleProblem:
    """A rule whose trigger is not what it should be (verification)."""

    table: str
    operation: str
    event_type: str
    state: str
    detail: str | None

    @property
    def rule(self) -> str:
        return f"{self.table} {self.operation} -> {self.event_type}"


async def averify(conn: psycopg.AsyncConnection[Any]) -> tuple[int, list[RuleProblem]]:
    """Check every rule's trigger and function against the rules table:
    (number of rules, the ones that are not ``ok``). For ``outbox serve``."""
    cur = await conn.execute(_q("rules_check"))
    rows = await cur.fetchall()
    problems = [RuleProblem(f"{r[0]}.{r[1]}", r[2], r[3], r[4], r[5]) for r in rows if r[4] != "ok"]
    return len(rows), problems


def ddl_guard_installed(conn: psycopg.Connection) -> bool:
    row = conn.execute(_q("ddl_guard_installed")).fetchone()
    return bool(row and row[0])


def install_ddl_guard(conn: psycopg.Connection) -> bool:
    """Create the DDL event triggers if this role may; True when they are in place."""
    with conn.transaction():
        row = conn.execute(_q("ddl_guard_install")).fetchone()
    return bool(row and row[0])


def reanchor(conn: psycopg.Connection) -> int:
    """Re-find tracked tables whose identity changed (restored from a dump);
    how many moved. ``outbox migrate`` runs it."""
    with conn.transaction():
        conn.execute(_q("capture_lock"), {"key": _LOCK_KEY})
        row = conn.execute(_q("capture_reanchor")).fetchone()
    return int(row[0]) if row else 0
