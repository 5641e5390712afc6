"""``outbox token create|list|revoke``."""

from __future__ import annotations

import argparse
from typing import Any

from outbox.cli.main import _add_db, _db_url, _say
from outbox.tokens import SCOPES


def cmd_token(args: argparse.Namespace) -> int:
    from outbox.db import connect
    from outbox.tokens import create_token, list_tokens, revoke_token

    with connect(_db_url(args)) as conn:
        if args.token_command == "create":
            events = (
                [e.strip() for e in args.events.split(",") if e.strip()]
                if args.events is not None
                else None
            )
            token = create_token(conn, args.name, scope=args.scope, events=events)
            _say(token)
            limit = f", events {','.join(events)}" if events else ""
            _say(
                f"# token {args.name!r} (scope {args.scope}{limit}) created; it is shown this once"
            )
        elif args.token_command == "list":
            tokens = list_tokens(conn)
            if not tokens:
                _say("no tokens (create one with `outbox token create NAME`)")
            for t in tokens:
                state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "live"
                used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
                scope = t.scope + (f" ({','.join(t.events)})" if t.events else "")
                _say(
                    f"{t.name:24} {scope:16} {state:22} created {t.created_at:%Y-%m-%d %H:%M}"
                    f"  last used {used}"
                )
        else:
            revoke_token(conn, args.name)
            _say(f"revoked: {args.name}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "token",
        help="create, list and revoke API tokens",
        description="API tokens for the REST API and /ws. Only a hash is "
        "stored; `create` prints the token once.",
    )
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    c = tsub.add_parser(
        "create",
        help="create a token and print it once",
        description="Create a token and print it once. Scopes: admin (everything), "
        "read (every GET, /ws and /events: dashboards), feed (only /ws and /events, "
        "limited to --events when given: live-feed pages).",
    )
    c.add_argument("name")
    c.add_argument(
        "--scope",
        choices=SCOPES,
        default="admin",
        help="what the token may do (default admin)",
    )
    c.add_argument(
        "--events",
        metavar="PATTERNS",
        help="feed tokens: comma-separated event types or patterns it may see "
        "(e.g. order.*,user.created)",
    )
    _add_db(c)
    c = tsub.add_parser("list", help="list tokens and their scopes (never the tokens themselves)")
    _add_db(c)
    c = tsub.add_parser("revoke", help="revoke a token; open sockets using it close within seconds")
    c.add_argument("name")
    _add_db(c)
    p.set_defaults(func=cmd_token)
