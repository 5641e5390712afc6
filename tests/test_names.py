"""The names Python and SQL share (outbox/names.py) agree everywhere.

The migrations spell the doorbell key and the events channel as literals
(an applied migration is never edited), and capture compiles them into
every trigger function; the named queries take them as parameters. These
tests read both the SQL files and the installed schema.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from outbox import names
from outbox.capture import Rule, track
from outbox.sqlfiles import migrations, queries, sql_dir

_NOTIFY = re.compile(r"pg_notify\(\s*'([^']*)'")
_LOCK = re.compile(r"pg_(?:try_)?advisory_(?:xact_)?lock(?:_shared)?\(\s*(-?\d+)")


def _named_files() -> list[str]:
    return sorted(p.name for p in sql_dir().glob("*.sql") if not re.match(r"^\d{3}_", p.name))


def test_the_keys_are_the_ones_earlier_versions_used() -> None:
    # During a rolling deploy old and new relays must compete for the same
    # leader lock and serialize on the same migration lock.
    assert names.DOORBELL_KEY == 9202151523130794729
    assert names.LEADER_KEY == -2220927836460454595
    assert names.MIGRATION_KEY == 4895835846912708890
    assert len(set(names.LOCK_KEYS)) == len(names.LOCK_KEYS)
    assert names.CHANNELS == ("outbox_events", "outbox_deliveries")


def test_migrations_use_the_channels_and_the_doorbell_key() -> None:
    notified: set[str] = set()
    keys: set[int] = set()
    for _, _, text in migrations():
        notified |= set(_NOTIFY.findall(text))
        keys |= {int(k) for k in _LOCK.findall(text)}
    assert notified == {names.EVENTS_CHANNEL}
    assert keys == {names.DOORBELL_KEY}


def test_named_queries_take_shared_names_as_parameters() -> None:
    """No named statement repeats a channel, a lock key or a relay-state name."""
    literals = [
        *(f"'{c}'" for c in names.CHANNELS),
        *(str(k) for k in names.LOCK_KEYS),
        *(f"'{n}'" for n in names.RELAY_STATES),
    ]
    for filename in _named_files():
        for name, text in queries(filename).items():
            for literal in literals:
                assert literal not in text, f"sql/{filename} {name} spells {literal}"


def test_installed_functions_and_capture_triggers_agree(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE public.things (id bigint PRIMARY KEY, label text)")
    track(conn, [Rule("public.things", "insert", "thing.created")])
    row = conn.execute("SELECT outbox.doorbell_key()").fetchone()
    assert row is not None and row[0] == names.DOORBELL_KEY
    defs = [
        r[0]
        for r in conn.execute(
            "SELECT pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'outbox' AND p.prokind = 'f'"
        ).fetchall()
    ]
    ringing = [d for d in defs if "pg_notify" in d]
    # outbox.publish and the capture trigger function at least.
    assert len(ringing) >= 2
    capture = [d for d in ringing if "capture_" in d]
    assert capture, "the capture trigger function rings the doorbell"
    for d in ringing:
        assert set(_NOTIFY.findall(d)) == {names.EVENTS_CHANNEL}, d
        assert {int(k) for k in _LOCK.findall(d)} == {names.DOORBELL_KEY}, d
