"""``outbox token create|list|revoke``."""

from __future__ import annotations

import argparse
from typing import Any

from outbox.cli.main import _add_db, _db_url, _say


def cmd_token(args: argparse.Namespace) -> int:
    from outbox.db import connect
    from outbox.tokens import create_token, list_tokens, revoke_token

    with connect(_db_url(args)) as conn:
        if args.token_command == "create":
            token = create_token(conn, args.name)
            _say(token)
            _say(f"# token {args.name!r} created; it is shown this once")
        elif args.token_command == "list":
            tokens = list_tokens(conn)
            if not tokens:
                _say("no tokens (create one with `outbox token create NAME`)")
            for t in tokens:
                state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "live"
                used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
                _say(
                    f"{t.name:24} {state:22} created {t.created_at:%Y-%m-%d %H:%M}"
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
    c = tsub.add_parser("create", help="create a token and print it once")
    c.add_argument("name")
    _add_db(c)
    c = tsub.add_parser("list", help="list tokens (never the tokens themselves)")
    _add_db(c)
    c = tsub.add_parser("revoke", help="revoke a token; open sockets using it close within seconds")
    c.add_argument("name")
    _add_db(c)
    p.set_defaults(func=cmd_token)
