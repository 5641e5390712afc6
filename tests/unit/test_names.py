"""The names Python and SQL share (outbox/names.py) agree everywhere.

The migrations spell the doorbell key and the events channel as literals
(an applied migration is never edited), and capture compiles them into
every trigger function; the named queries take them as parameters. These
tests read the SQL files; tests/db/test_names.py reads the installed schema.
"""

from __future__ import annotations

import re

from outbox import names
from outbox.sqlfiles import migrations, queries, sql_dir
from tests.support.sqltext import LOCK_CALL, NOTIFY_CALL


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
        notified |= set(NOTIFY_CALL.findall(text))
        keys |= {int(k) for k in LOCK_CALL.findall(text)}
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
