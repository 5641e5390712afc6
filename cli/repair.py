"""``outbox repair``: diagnose and fix an event id sequence that went backwards."""

from __future__ import annotations

import argparse
from typing import Any

from outbox.cli.main import _add_db, _db_url, _say
from outbox.errors import OutboxError


def cmd_repair(args: argparse.Namespace) -> int:
    from outbox.db import connect
    from outbox.repair import diagnose, fix_sequence

    with connect(_db_url(args)) as conn:
        found = diagnose(conn)
        _say(found.describe())
        if not found.broken:
            return 0
        if not args.fix_sequence:
            raise OutboxError(
                "run `outbox repair --fix-sequence` to move the sequence above "
                f"{found.used} and give the events written since fresh ids"
            )
        fixed = fix_sequence(conn)
    _say(f"outbox.events_id_seq moved to {fixed.used}")
    if fixed.renumbered:
        first, last = fixed.renumbered[0], fixed.renumbered[-1]
        _say(
            f"{len(fixed.renumbered)} events not yet dispatched got fresh ids"
            f" ({first[0]}..{last[0]} -> {first[1]}..{last[1]})"
        )
    _say("dispatching resumes within seconds (no restart needed)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "repair",
        help="check (and with --fix-sequence repair) an event id sequence that went backwards",
        description="Event ids must only grow: receivers de-duplicate on webhook-id evt_N. "
        "TRUNCATE outbox.events RESTART IDENTITY is undone by itself (migration 009); after "
        "ALTER SEQUENCE ... RESTART or setval the relay refuses to dispatch and /health "
        "says so. Without flags this says what is "
        "wrong (exit 1 when something is); --fix-sequence moves outbox.events_id_seq above "
        "every id used and gives the events written since fresh ids, in one transaction.",
    )
    p.add_argument(
        "--fix-sequence",
        action="store_true",
        help="repair: move the sequence above every used id, renumber undispatched events",
    )
    _add_db(p)
    p.set_defaults(func=cmd_repair)
