"""outbox migrate / track from the command line, in a subprocess: events arrive,
bad input is one line, an unreachable database or a missing schema is named."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest

from tests.support.capture import create_tickets, events


@pytest.fixture
def tickets(conn: psycopg.Connection[Any]) -> str:
    return create_tickets(conn)


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args, "--database-url", db_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_migrate_track_insert_yields_event(
    db_url: str, conn: psycopg.Connection[Any], tickets: str
) -> None:
    r = _cli(db_url, "migrate")
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout
    r = _cli(
        db_url,
        "track",
        "tickets",
        "--insert",
        "ticket.created",
        "--update",
        "ticket.status_changed",
        "--of",
        "status",
        "--exclude",
        "password_hash",
    )
    assert r.returncode == 0, r.stderr
    assert "tracked: public.tickets insert -> ticket.created" in r.stdout
    r = _cli(db_url, "tracked")
    assert "ticket.status_changed" in r.stdout and "of status" in r.stdout
    conn.execute("INSERT INTO tickets (title, status, password_hash) VALUES ('t', 'open', 'h')")
    conn.execute("UPDATE tickets SET status = 'closed'")
    got = events(conn)
    assert got[0] == ("ticket.created", {"id": 1, "title": "t", "status": "open", "priority": None})
    assert got[1][1]["previous"] == {"status": "open"}
    r = _cli(db_url, "untrack", "tickets", "ticket.created")
    assert r.returncode == 0 and "untracked" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("track", "nosuch", "--insert", "a.b"), "unknown table 'nosuch'"),
        (("track", "tickets", "--update", "a.b", "--of", "nope"), "--of: unknown column"),
        (("track", "tickets", "--insert", "a.b", "--columns", "x"), "--columns: unknown column"),
        (("track", "tickets", "--insert", "Nope"), "--insert: invalid event type"),
        (("track", "tickets", "--insert", "a.b", "--when", "NEW.x ="), "--when does not compile"),
        (("track", "tickets"), "give at least one of --insert"),
        (("track", "tickets", "--insert", "a.b", "--of", "status"), "--of applies to --update"),
        (("untrack", "tickets"), "no capture rule"),
    ],
)
def test_cli_bad_input_one_line_no_traceback(
    db_url: str, tickets: str, args: tuple[str, ...], needle: str
) -> None:
    r = _cli(db_url, *args)
    assert r.returncode == 1
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_unreachable_database() -> None:
    r = _cli("postgresql://nobody@127.0.0.1:1/none", "migrate")
    assert r.returncode == 1
    assert "cannot connect" in r.stderr and "OUTBOX_DATABASE_URL" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_schema(empty_db_url: str) -> None:
    r = _cli(empty_db_url, "tracked")
    assert r.returncode == 1
    assert "run `outbox migrate`" in r.stderr


def test_cli_tracked_shows_the_table_policy_once_and_json(
    db_url: str, conn: psycopg.Connection[Any], tickets: str
) -> None:
    import json

    r = _cli(db_url, "track", "tickets", "--insert", "ticket.created", "--exclude", "password_hash")
    assert r.returncode == 0, r.stderr
    assert "policy of public.tickets: exclude password_hash (every rule of the table)" in r.stdout
    r = _cli(db_url, "track", "tickets", "--update", "ticket.status_changed", "--of", "status")
    assert r.returncode == 0, r.stderr
    r = _cli(db_url, "tracked")
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0] == "public.tickets  [policy: exclude password_hash]"
    assert r.stdout.count("policy:") == 1
    assert lines[1].split() == ["insert", "->", "ticket.created"]
    assert "ticket.status_changed  [of status]" in lines[2]
    doc = json.loads(_cli(db_url, "tracked", "--json").stdout)
    assert doc["ddl_event_trigger"] is True
    [table] = doc["tables"]
    assert table["table"] == "public.tickets"
    assert table["policy"] == {"kind": "exclude", "columns": ["password_hash"]}
    assert [(x["event_type"], x["state"]) for x in table["rules"]] == [
        ("ticket.created", "ok"),
        ("ticket.status_changed", "ok"),
    ]
    # Another policy for one rule: refused, one line; the policy alone changes it.
    r = _cli(db_url, "track", "tickets", "--delete", "ticket.gone", "--exclude", "title")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "has the column policy exclude password_hash" in r.stderr
    r = _cli(db_url, "track", "tickets", "--exclude", "password_hash,title")
    assert r.returncode == 0, r.stderr
    assert "policy of public.tickets: exclude password_hash,title" in r.stdout
    assert r.stdout.count("regenerated:") == 2
    conn.execute("INSERT INTO tickets (title, password_hash) VALUES ('t', 'h')")
    assert events(conn)[-1] == ("ticket.created", {"id": 1, "status": None, "priority": None})


def test_cli_tracked_names_a_rule_that_does_not_capture(
    db_url: str, conn: psycopg.Connection[Any], tickets: str
) -> None:
    r = _cli(db_url, "track", "tickets", "--insert", "ticket.created")
    assert r.returncode == 0, r.stderr
    trigger = conn.execute(
        "SELECT trigger_name FROM outbox.capture_rules WHERE event_type = 'ticket.created'"
    ).fetchone()
    assert trigger is not None
    conn.execute(f"ALTER TABLE tickets DISABLE TRIGGER {trigger[0]}")
    r = _cli(db_url, "tracked")
    assert r.returncode == 1
    assert "ticket.created  DISABLED: trigger" in r.stdout
    assert "`outbox track` with the same rule restores it" in r.stdout
    r = _cli(db_url, "track", "tickets", "--insert", "ticket.created")
    assert "restored: public.tickets insert -> ticket.created" in r.stdout
    assert _cli(db_url, "tracked").returncode == 0
