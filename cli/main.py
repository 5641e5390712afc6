"""The ``outbox`` command line.

Every flag that mirrors an environment variable names it in ``--help``.
Errors are one line naming the culprit, exit status 1 (2 for usage errors);
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from outbox.errors import ConfigError, OutboxError, UsageError

Handler = Callable[[argparse.Namespace], int]


class SettingFlags:
    """Flags that set a setting: ``--lease`` sets ``lease`` (``OUTBOX_LEASE``).

    Each flag's help names its variable. The flags given are passed to the
    settings as constructor arguments (so they win over the environment),
    and a :class:`ConfigError` about a setting that a flag gave names the
    flag (:meth:`named`).
    """

    def __init__(self, variables: dict[str, str]) -> None:
        self.variables = variables
        self.flags: dict[str, str] = {}  # setting -> flag
        self.dests: dict[str, str] = {}  # setting -> argparse dest
        self.given: dict[str, Any] = {}
        self.switches: set[str] = set()  # store_true flags: False means not given
        self.kwargs: dict[str, dict[str, Any]] = {}

    def add(
        self, parser: argparse.ArgumentParser | None, flag: str, setting: str, **kw: Any
    ) -> None:
        """Declare ``flag`` (kw as for ``add_argument``); add it to ``parser`` if given."""
        self.flags[setting] = flag
        self.dests[setting] = kw.get("dest") or flag.lstrip("-").replace("-", "_")
        if kw.get("action") == "store_true":
            self.switches.add(setting)
        self.kwargs[setting] = kw
        if parser is not None:
            self.register(parser, only=setting)

    def register(self, parser: argparse.ArgumentParser, *, only: str | None = None) -> None:
        """Add the declared flags to ``parser``; each help names its variable."""
        for setting, flag in self.flags.items():
            if only is not None and setting != only:
                continue
            kw = dict(self.kwargs[setting])
            kw["help"] = f"{kw.get('help', '')} (env {self.variables[setting]})".lstrip()
            kw.setdefault("default", None)
            parser.add_argument(flag, **kw)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings the command line gave, by setting name."""
        given = {s: getattr(args, d, None) for s, d in self.dests.items()}
        self.given = {
            s: v
            for s, v in given.items()
            if v is not None and not (s in self.switches and v is False)
        }
        return dict(self.given)

    def name_of(self, setting: str) -> str | None:
        """The flag, when it is what gave ``setting``."""
        return self.flags.get(setting) if setting in self.given else None

    def named(self, exc: ConfigError, *, usage: bool = False) -> ConfigError:
        """``exc`` saying the flag where a flag gave the value; with ``usage``,
        a :class:`UsageError` (exit status 2) when a flag gave the bad value."""
        kind = UsageError if usage and exc.field and self.name_of(exc.field) else type(exc)
        out = kind(
            exc.reason, field=exc.field, value=exc.value, variable=exc.variable, related=exc.related
        )
        out.args = (exc.describe(self.name_of),)
        return out


def flag_of(field: str) -> str:
    """The flag that gives ``field`` (``of`` -> ``--of``, ``event_types`` -> ``--event-types``)."""
    return "--" + field.replace("_", "-")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="libpq URL or conninfo (env OUTBOX_DATABASE_URL, then DATABASE_URL, "
        "then libpq PG* variables)",
    )


def _db_url(args: argparse.Namespace) -> str:
    from outbox.relay.config import database_url

    return str(getattr(args, "database_url", None) or database_url())


def _say(msg: str) -> None:
    print(msg, flush=True)


# --- migrate -----------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from outbox.db import connect
    from outbox.migrate import current_version, migrate

    with connect(_db_url(args)) as conn:
        applied = migrate(conn, log=_say)
        version = current_version(conn)
    if applied:
        _say(f"schema outbox at version {version} (applied {len(applied)})")
    else:
        _say(f"schema outbox at version {version}: up to date")
    return 0


# --- track / untrack / tracked ---------------------------------------------------


def cmd_track(args: argparse.Namespace) -> int:
    from outbox.capture import Policy, Rule, set_policy, track
    from outbox.db import connect

    ops = [(op, getattr(args, op)) for op in ("insert", "update", "delete")]
    ops = [(op, ev) for op, ev in ops if ev]
    if args.all_columns and (args.columns is not None or args.exclude):
        raise OutboxError("--all-columns cannot be combined with --columns or --exclude")
    policy = Policy() if args.all_columns else Policy.of(args.columns, args.exclude or ())
    if not ops:
        if policy is None:
            raise OutboxError(
                "give at least one of --insert, --update, --delete "
                "(or only --columns/--exclude/--all-columns to change the table's policy)"
            )
        if args.of or args.when or args.key:
            raise OutboxError("--of, --when and --key belong to a rule: give --insert/--update")
        with connect(_db_url(args)) as conn:
            result = set_policy(conn, args.table, policy)
        _say(f"policy of {result[0].table}: {policy.describe()}")
        for r in result:
            _say(f"  regenerated: {r.operation} -> {r.event_type} (trigger {r.trigger_name})")
        return 0
    if args.of and not args.update:
        raise OutboxError("--of applies to --update rules only")
    rules = []
    for op, ev in ops:
        # --when goes with --update when there is one (as --of does);
        # otherwise with every rule of this command.
        when = args.when if (op == "update" or not args.update) else None
        rules.append(
            Rule(
                table=args.table,
                operation=op,
                event_type=ev,
                of=args.of if op == "update" else (),
                when=when,
                key=args.key or (),
            )
        )
    with connect(_db_url(args)) as conn:
        result = track(conn, rules, policy=policy)
    for r in result:
        _say(f"{r.status}: {r.table} {r.operation} -> {r.event_type} (trigger {r.trigger_name})")
    if result and policy is not None:
        _say(f"policy of {result[0].table}: {policy.describe()} (every rule of the table)")
    return 0


def cmd_untrack(args: argparse.Namespace) -> int:
    from outbox.capture import untrack
    from outbox.db import connect

    with connect(_db_url(args)) as conn:
        removed = untrack(conn, args.table, args.event)
    for r in removed:
        _say(f"untracked: {r.table} {r.operation} -> {r.event_type}")
    return 0


def cmd_tracked(args: argparse.Namespace) -> int:
    import json

    from outbox.capture import ddl_guard_installed, policy_of, tracked
    from outbox.db import connect

    with connect(_db_url(args)) as conn:
        rules = tracked(conn)
        guard = ddl_guard_installed(conn)
    tables: dict[str, list[Any]] = {}
    for r in rules:
        tables.setdefault(r.table, []).append(r)
    if args.json:
        doc = {
            "ddl_event_trigger": guard,
            "tables": [
                {
                    "table": name,
                    "policy": {"kind": policy_of(rs[0]).kind, "columns": policy_of(rs[0]).columns},
                    "rules": [
                        {
                            "operation": r.operation,
                            "event_type": r.event_type,
                            "of": r.of,
                            "when": r.when,
                            "key": r.key,
                            "level": r.level,
                            "trigger_name": r.trigger_name,
                            "function_name": r.function_name,
                            "state": r.state,
                            "detail": r.detail,
                        }
                        for r in rs
                    ],
                }
                for name, rs in tables.items()
            ],
        }
        _say(json.dumps(doc, default=list, indent=2))
        return 0
    if not rules:
        _say("no capture rules (add one with `outbox track TABLE --insert EVENT`)")
        return 0
    for name, rs in tables.items():
        _say(f"{name}  [policy: {policy_of(rs[0]).describe()}]")
        for r in rs:
            extra = []
            if r.of:
                extra.append("of " + ",".join(r.of))
            if r.when:
                extra.append(f"when {r.when}")
            if r.key:
                extra.append("key " + ",".join(r.key))
            tail = f"  [{'; '.join(extra)}]" if extra else ""
            state = "" if r.state == "ok" else f"  {r.state.upper()}: {r.detail}"
            _say(f"  {r.operation:6} -> {r.event_type}{tail}{state}")
    bad = [r for r in rules if r.state != "ok"]
    if bad:
        _say(
            f"{len(bad)} rule(s) not capturing as tracked: "
            "`outbox track` with the same rule restores it"
        )
    if not guard:
        _say(
            "note: no DDL event trigger (needs a superuser): schema changes are found by this check"
        )
    return 1 if bad else 0


# --- parser ------------------------------------------------------------------------

_EPILOG = """environment:
  OUTBOX_DATABASE_URL   database (falls back to DATABASE_URL, then libpq PG* variables)
  OUTBOX_API_TOKEN      bootstrap API token for the REST API and /ws

docs: README.md (install, capture, publish, serve, demo)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outbox",
        description="Transactional-outbox change feed for PostgreSQL: capture changes with "
        "triggers, stream them to WebSocket clients and deliver them as signed webhooks.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from outbox import __version__

    parser.add_argument("--version", action="version", version=f"outbox-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "migrate",
        help="apply the SQL migrations in sql/ (idempotent)",
        description="Apply pending migrations of schema outbox in one "
        "transaction under an advisory lock. Safe to run concurrently.",
    )
    _add_db(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "track",
        help="capture a table's changes as events",
        description="Compile capture rules into triggers. Re-running the same rule changes "
        "nothing (or restores its trigger if it went missing); a changed rule replaces its "
        "trigger atomically. --columns/--exclude/--all-columns are the table's column policy, "
        "shared by all its rules; given alone (no --insert/--update/--delete) they change it "
        "and regenerate every rule of the table in one transaction. Rules follow the table "
        "and its columns through renames (docs/capture.md).",
        epilog="example:\n  outbox track tickets --insert ticket.created\n"
        "  outbox track tickets --update ticket.status_changed --of status --key id\n"
        "  outbox track users --insert user.created --exclude password_hash\n"
        "  outbox track users --exclude password_hash,ssn     # change the policy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("table", help="table name, optionally schema-qualified")
    p.add_argument("--insert", metavar="EVENT", help="event type for inserted rows")
    p.add_argument("--update", metavar="EVENT", help="event type for updated rows")
    p.add_argument("--delete", metavar="EVENT", help="event type for deleted rows (old row)")
    p.add_argument(
        "--of",
        metavar="COL,...",
        type=_csv,
        default=(),
        help="--update fires only when one of these columns really changed "
        "(IS DISTINCT FROM); their old values go in payload.previous",
    )
    p.add_argument(
        "--when",
        metavar="SQL",
        help="trigger WHEN condition over OLD/NEW; applies to --update if given, "
        "else to every rule of this command",
    )
    p.add_argument(
        "--columns",
        metavar="COL,...",
        type=_csv,
        default=None,
        help="the table's column policy: payloads hold only these columns (every rule of "
        "the table; later commands without a policy keep it)",
    )
    p.add_argument(
        "--exclude",
        metavar="COL,...",
        type=_csv,
        default=(),
        help="the table's column policy: payloads leave these columns out, also after "
        "they are renamed (e.g. password_hash)",
    )
    p.add_argument(
        "--all-columns",
        action="store_true",
        help="the table's column policy: every column (clears --columns/--exclude)",
    )
    p.add_argument(
        "--key",
        metavar="COL,...",
        type=_csv,
        default=(),
        help="the event's key: the row's value of COL (several joined with ':'); "
        "webhooks with ordering 'key' deliver one key's events in order",
    )
    _add_db(p)
    p.set_defaults(func=cmd_track)

    p = sub.add_parser(
        "untrack",
        help="remove capture rules of a table",
        description="Remove the table's capture rules, or only the one for EVENT.",
    )
    p.add_argument("table")
    p.add_argument("event", nargs="?", help="only the rule(s) producing this event type")
    _add_db(p)
    p.set_defaults(func=cmd_untrack)

    p = sub.add_parser(
        "tracked",
        help="list capture rules",
        description="List the rules per table with the table's column policy, and verify "
        "each rule's trigger and function (exit status 1 if one is missing, stale, "
        "disabled or its table is gone).",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_db(p)
    p.set_defaults(func=cmd_tracked)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Later modules (serve, demo, token, bench) register their sub-commands here,
# so this file does not import the server stack for `outbox migrate`.
_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def _load_extra_commands() -> None:
    import importlib

    _EXTRA_COMMANDS.clear()  # main() may run more than once in a process (tests)
    for mod in (
        "outbox.cli.serve",
        "outbox.cli.token",
        "outbox.cli.sink",
        "outbox.cli.repair",
        "outbox.cli.demo",
    ):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue
            raise
        _EXTRA_COMMANDS.append(m.register)


def main(argv: Sequence[str] | None = None) -> int:
    _load_extra_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"outbox {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OutboxError as exc:
        # Library errors name fields; on the command line each is a flag.
        line = str(exc) if isinstance(exc, ConfigError) else exc.describe(flag_of)
        print(f"outbox {args.command}: error: {line}", file=sys.stderr)
        return 1
    except Exception as exc:
        import psycopg

        if not isinstance(exc, psycopg.Error):
            raise
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
            msg = "the outbox schema is missing: run `outbox migrate` first"
        else:
            msg = f"database error: {str(exc).strip().splitlines()[0]}"
        print(f"outbox {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
