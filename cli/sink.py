"""``outbox sink add|list|remove``: broker sinks, straight in the database.

The same settings check as ``POST /sinks`` (outbox.relay.sinks.spec); a
running ``outbox serve`` picks a new or removed sink up within a second.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from outbox.cli.main import _add_db, _csv, _db_url, _say
from outbox.errors import OutboxError


def _sql(name: str) -> str:
    from outbox.sqlfiles import query

    return query(name, "sinks.sql")


def _head(conn: Any) -> Any:
    from outbox.cursor import Cursor
    from outbox.relay.feed import parse_snapshot
    from outbox.sqlfiles import query

    with conn.transaction():
        row = conn.execute(query("feed_head", "feed.sql")).fetchone()
    _, xmax, xip = parse_snapshot(row[0])
    return Cursor(int(row[1]), xmax, xip)


def _lag(conn: Any, text: str) -> dict[str, Any] | None:
    from outbox.cursor import Cursor, sql_params
    from outbox.errors import CursorError
    from outbox.relay.feed import LAG_CAP, Lag
    from outbox.sqlfiles import query

    try:
        c = Cursor.decode(text)
    except CursorError:
        return None
    row = conn.execute(query("feed_lag", "feed.sql"), {**sql_params(c), "cap": LAG_CAP}).fetchone()
    return Lag(int(row[0]), float(row[1]) if row[0] else 0.0).as_dict()


def _broker_url(args: argparse.Namespace) -> tuple[str, str]:
    """The broker URL from the command line or from ``--url-env VAR`` (kept out
    of argv, so out of shell history and ``ps``), and the flag to name in an
    error about it."""
    import os

    var = args.url_env
    if var is None:
        if args.url is None:
            raise OutboxError("URL: give the broker URL, or --url-env VAR to read it from $VAR")
        return args.url, "URL"
    if args.url is not None:
        raise OutboxError("--url-env: give the URL or --url-env, not both")
    if not var or "=" in var:
        raise OutboxError(f"--url-env: {var!r} is not an environment variable name")
    value = os.environ.get(var)
    if value is None:
        raise OutboxError(f"--url-env: the environment variable {var} is not set")
    if not value.strip():
        raise OutboxError(f"--url-env: the environment variable {var} is empty")
    return value.strip(), f"--url-env: the URL in {var}"


def cmd_sink_add(args: argparse.Namespace) -> int:
    import psycopg

    from outbox.db import connect
    from outbox.relay.sinks.spec import SinkSettings, SpecError, check_settings, start_cursor

    url, url_flag = _broker_url(args)
    flags = {"routing_key": "--routing-key", "event_types": "--events", "url": url_flag}
    try:
        s = check_settings(
            SinkSettings(
                name=args.name,
                kind=args.kind,
                url=url,
                event_types=tuple(dict.fromkeys(args.events or ("*",))),
                subject=args.subject,
                stream=args.stream,
                exchange=args.exchange,
                routing_key=args.routing_key,
            )
        )
    except SpecError as exc:
        flag = flags.get(exc.field, "--" + exc.field.replace("_", "-"))
        raise OutboxError(f"{flag}: {exc.reason}") from None
    with connect(_db_url(args), autocommit=True) as conn:
        try:
            cursor = start_cursor(args.since, _head(conn))
        except SpecError as exc:
            raise OutboxError(f"--since: {exc.reason}") from None
        try:
            conn.execute(
                _sql("sink_insert"),
                {
                    "name": s.name,
                    "kind": s.kind,
                    "url": s.url,
                    "event_types": list(s.event_types),
                    "subject": s.subject,
                    "stream": s.stream,
                    "exchange": s.exchange,
                    "routing_key": s.routing_key,
                    "description": args.description,
                    "is_active": not args.inactive,
                    "cursor": cursor.encode(),
                },
            )
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "sinks_name_key":
                raise OutboxError(f"NAME: a sink named {s.name!r} exists") from None
            raise
    target = s.subject if s.kind == "nats" else f"{s.exchange or '(default)'} {s.routing_key}"
    _say(f"sink {s.name!r} added: {s.kind} {target}, events {','.join(s.event_types)}")
    return 0


def cmd_sink_list(args: argparse.Namespace) -> int:
    from psycopg.rows import dict_row

    from outbox.db import connect
    from outbox.relay.sinks.base import redact_url

    with connect(_db_url(args), autocommit=True) as conn:
        rows = (
            conn.cursor(row_factory=dict_row)
            .execute(_sql("sink_list"), {"limit": None, "offset": 0})
            .fetchall()
        )
        items = []
        for r in rows:
            items.append(
                {
                    **r,
                    "url": redact_url(r["url"]),
                    "rate": r.pop("publish_rate"),
                    "lag": _lag(conn, r["cursor"]),
                }
            )
    if args.json:
        _say(json.dumps(items, indent=2, default=str))
        return 0
    if not items:
        _say("no sinks (add one with `outbox sink add NAME URL`)")
        return 0
    for s in items:
        target = s["subject"] if s["kind"] == "nats" else f"{s['exchange']!r} {s['routing_key']}"
        if s["kind"] == "nats" and s["stream"]:
            target += f" (stream {s['stream']})"
        lag = s["lag"]
        lag_text = "?" if lag is None else f"{lag['events']}{'+' if lag['capped'] else ''}"
        state = "active" if s["is_active"] else "paused"
        _say(
            f"{s['name']}  {s['kind']} {s['url']} -> {target}  [{state}]\n"
            f"    events {','.join(s['event_types'])}; published {s['published_count']}, "
            f"{s['rate']:g}/s; lag {lag_text}; owner {s['owner'] or '-'}\n"
            f"    cursor {s['cursor']}\n"
            f"    last error: {s['last_error'] or '-'}"
        )
    return 0


def cmd_sink_remove(args: argparse.Namespace) -> int:
    from outbox.db import connect

    with connect(_db_url(args), autocommit=True) as conn:
        cur = conn.execute(_sql("sink_delete_by_name"), {"name": args.name})
    if cur.rowcount == 0:
        raise OutboxError(f"NAME: no sink named {args.name!r}")
    _say(f"removed: {args.name}")
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    handler = {"add": cmd_sink_add, "list": cmd_sink_list, "remove": cmd_sink_remove}
    return handler[args.sink_command](args)


_ADD_EPILOG = """examples:
  outbox sink add orders nats://127.0.0.1:4222 --events 'order.*' \\
      --subject 'shop.{type}' --stream ORDERS
  outbox sink add audit amqp://guest:guest@127.0.0.1:5672/ \\
      --exchange amq.topic --routing-key '{type}.{key}'
  read -rs AUDIT_URL && export AUDIT_URL     # the URL with its password, not echoed
  outbox sink add audit --url-env AUDIT_URL --routing-key '{type}.{key}'

Templates take {type} (the event type) and {key} (the event's key, '_' when
none). A nats sink's stream is created when missing; an amqp exchange must
exist. Events are published in commit order, at least once. The URL, password
included, is stored in outbox.sinks (the database); `sink list` and the API
show it masked."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sink",
        help="add, list and remove broker sinks (NATS JetStream, RabbitMQ)",
        description="Sinks publish matching events to a message broker in commit order, at "
        "least once; `outbox serve` runs them.",
    )
    ssub = p.add_subparsers(dest="sink_command", metavar="ACTION", required=True)
    a = ssub.add_parser(
        "add",
        help="add a sink",
        epilog=_ADD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("name", help="unique name")
    a.add_argument(
        "url",
        nargs="?",
        help="nats://[user:pass@]host:port or amqp://user:pass@host:port/vhost (or --url-env)",
    )
    a.add_argument(
        "--url-env",
        metavar="VAR",
        help="read the broker URL from the environment variable VAR instead: a password "
        "then stays out of the command line, shell history and ps",
    )
    a.add_argument("--kind", choices=("nats", "amqp"), help="default: from the URL's scheme")
    a.add_argument(
        "--events",
        metavar="PATTERNS",
        type=_csv,
        help="comma-separated event types, prefix.* or * (default: *)",
    )
    a.add_argument("--subject", metavar="TEMPLATE", help="nats: default outbox.{type}")
    a.add_argument("--stream", metavar="NAME", help="nats: the stream (created when missing)")
    a.add_argument("--exchange", metavar="NAME", help="amqp: default amq.topic ('' = default)")
    a.add_argument("--routing-key", metavar="TEMPLATE", help="amqp: default {type}")
    a.add_argument(
        "--since",
        metavar="WHERE",
        help="now (default), beginning, or a cursor from /events, /ws or another sink",
    )
    a.add_argument("--description", metavar="TEXT")
    a.add_argument("--inactive", action="store_true", help="add it paused")
    _add_db(a)
    ls = ssub.add_parser("list", help="list sinks with cursor, lag, rate and last error")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    _add_db(ls)
    r = ssub.add_parser("remove", help="remove a sink (its publisher stops within a second)")
    r.add_argument("name")
    _add_db(r)
    p.set_defaults(func=cmd_sink)
