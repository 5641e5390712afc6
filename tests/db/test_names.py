"""The names Python and SQL share (outbox/names.py) agree in the installed schema:
outbox's functions and the compiled capture triggers ring the one channel
under the one doorbell key (the SQL files are read in tests/unit/test_names.py)."""

from __future__ import annotations

from typing import Any

import psycopg

from outbox import names
from outbox.capture import Rule, track
from tests.support.sqltext import LOCK_CALL, NOTIFY_CALL


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
        assert set(NOTIFY_CALL.findall(d)) == {names.EVENTS_CHANNEL}, d
        assert {int(k) for k in LOCK_CALL.findall(d)} == {names.DOORBELL_KEY}, d
