"""Names that Python and the SQL in ``sql/`` must agree on, defined once.

The migrations spell some of them as literals (a migration is never edited
once applied), so ``tests/test_names.py`` reads the installed schema and the
SQL files and fails if any of them disagrees with this module. Named queries
take them as parameters instead of repeating them.
"""

from __future__ import annotations

import hashlib


def _key(label: str) -> int:
    """A fixed advisory-lock key: the first 8 bytes of sha256(label), signed."""
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big", signed=True)


# NOTIFY channels. A notification is a doorbell, never data.
EVENTS_CHANNEL = "outbox_events"  # rung by writers (outbox.publish, capture triggers)
DELIVERIES_CHANNEL = "outbox_deliveries"  # rung when delivery rows become due
CHANNELS = (EVENTS_CHANNEL, DELIVERIES_CHANNEL)

# Advisory-lock keys. Advisory locks are per database, so relays of
# different databases never compete.
DOORBELL_KEY = _key("outbox doorbell")  # sql/003_doorbell.sql, relay/doorbell.py
LEADER_KEY = _key("outbox relay leader")  # relay/leader.py: session lock of the leader
MIGRATION_KEY = _key("outbox migrate")  # outbox/migrate.py: one migrator at a time
CAPTURE_KEY = _key("outbox capture")  # outbox/capture.py: one track/untrack at a time
LOCK_KEYS = (DOORBELL_KEY, LEADER_KEY, MIGRATION_KEY, CAPTURE_KEY)
# Sinks take the two-key form pg_try_advisory_lock(SINK_LOCK_CLASS, sink id),
# held by the sink's one publisher (relay/sinks/runner.py); two-key locks
# never collide with the one-key (bigint) locks above. sha256("outbox sink")[:4].
SINK_LOCK_CLASS = int.from_bytes(hashlib.sha256(b"outbox sink").digest()[:4], "big", signed=True)

# Rows of outbox.relay_state.
DISPATCHER_STATE = "dispatcher"  # the dispatcher's stored feed cursor
RETENTION_WATERMARK = "retention_watermark"  # the largest event id retention deleted
RELAY_STATES = (DISPATCHER_STATE, RETENTION_WATERMARK)
