"""Capture rules compiled into triggers, against the real Postgres."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from outbox.capture import FUNCTION_VERSION, Rule, track, tracked, untrack
from outbox.errors import CaptureError
from tests.support.capture import create_tickets, events


@pytest.fixture
def tickets(conn: psycopg.Connection[Any]) -> str:
    return create_tickets(conn)


def test_insert_update_delete_rules(conn: psycopg.Connection[Any], tickets: str) -> None:
    track(
        conn,
        [
            Rule(tickets, "insert", "ticket.created"),
            Rule(tickets, "update", "ticket.updated"),
            Rule(tickets, "delete", "ticket.deleted"),
        ],
    )
    conn.execute("INSERT INTO tickets (title, status) VALUES ('a', 'open')")
    conn.execute("UPDATE tickets SET title = 'b'")
    conn.execute("DELETE FROM tickets")
    got = events(conn)
    assert [t for t, _ in got] == ["ticket.created", "ticket.updated", "ticket.deleted"]
    assert got[0][1]["title"] == "a"
    assert got[1][1]["title"] == "b"
    assert got[2][1]["title"] == "b"  # the old row for delete
    assert "previous" not in got[1][1]


def test_update_of_fires_only_on_real_change(conn: psycopg.Connection[Any], tickets: str) -> None:
    track(conn, [Rule(tickets, "update", "ticket.status_changed", of=("status",))])
    conn.execute("INSERT INTO tickets (title, status) VALUES ('a', 'open')")
    conn.execute("UPDATE tickets SET title = 'x'")  # unwatched column
    conn.execute("UPDATE tickets SET status = 'open'")  # same value
    conn.execute("UPDATE tickets SET status = 'closed'")  # real change
    got = events(conn)
    assert len(got) == 1
    assert got[0][1]["status"] == "closed"
    assert got[0][1]["previous"] == {"status": "open"}


def test_update_of_null_transitions_count(conn: psycopg.Connection[Any], tickets: str) -> None:
    track(conn, [Rule(tickets, "update", "ticket.status_changed", of=("status",))])
    conn.execute("INSERT INTO tickets (title) VALUES ('a')")
    conn.execute("UPDATE tickets SET status = 'open'")  # NULL -> open is a change
    conn.execute("UPDATE tickets SET status = NULL")
    assert [p["previous"] for _, p in events(conn)] == [{"status": None}, {"status": "open"}]


def test_when_condition(conn: psycopg.Connection[Any], tickets: str) -> None:
    track(conn, [Rule(tickets, "insert", "ticket.urgent", when="NEW.priority > 5")])
    conn.execute("INSERT INTO tickets (title, priority) VALUES ('low', 1), ('high', 9)")
    assert [p["title"] for _, p in events(conn)] == ["high"]


def test_exclude_and_columns_project_payload(conn: psycopg.Connection[Any], tickets: str) -> None:
    # The column policy is the table's (CONTRACT "Schema changes on tracked
    # tables"): one --exclude covers every rule of tickets.
    conn.execute("CREATE TABLE public.briefs (id int PRIMARY KEY, title text, body text)")
    track(
        conn,
        [
            Rule(tickets, "insert", "ticket.created", exclude=("password_hash",)),
            Rule(
                tickets,
                "update",
                "ticket.secret_changed",
                of=("password_hash", "status"),
                exclude=("password_hash",),
            ),
            Rule("briefs", "insert", "ticket.brief", columns=("id", "title")),
        ],
    )
    conn.execute("INSERT INTO tickets (title, status, password_hash) VALUES ('a', 'o', 'h1')")
    conn.execute("UPDATE tickets SET password_hash = 'h2', status = 'c'")
    conn.execute("INSERT INTO briefs VALUES (1, 'a', 'long')")
    got = dict(events(conn))
    assert "password_hash" not in got["ticket.created"]
    assert got["ticket.created"]["title"] == "a"
    assert got["ticket.brief"] == {"id": 1, "title": "a"}
    changed = got["ticket.secret_changed"]
    assert "password_hash" not in changed
    assert changed["previous"] == {"status": "o"}  # the excluded column never leaks


def test_several_rules_per_table_and_retrack_is_noop(
    conn: psycopg.Connection[Any], tickets: str
) -> None:
    first = track(conn, [Rule(tickets, "insert", "ticket.created")])
    again = track(conn, [Rule(tickets, "insert", "ticket.created")])
    assert first[0].changed and not again[0].changed
    track(conn, [Rule(tickets, "update", "ticket.status_changed", of=("status",))])
    conn.execute("INSERT INTO tickets (title, status) VALUES ('a', 'open')")
    assert len(events(conn)) == 1  # no double events
    assert len(tracked(conn)) == 2
    n = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tickets'::regclass AND NOT tgisinternal"
    ).fetchone()
    assert n is not None and n[0] == 2


def test_retrack_with_changed_options_replaces_trigger(
    conn: psycopg.Connection[Any], tickets: str
) -> None:
    track(conn, [Rule(tickets, "insert", "ticket.created")])
    res = track(conn, [Rule(tickets, "insert", "ticket.created", columns=("id",))])
    assert res[0].changed
    conn.execute("INSERT INTO tickets (title) VALUES ('a')")
    assert events(conn) == [("ticket.created", {"id": 1})]


def test_untrack_removes_exactly_the_named_rule(
    conn: psycopg.Connection[Any], tickets: str
) -> None:
    track(conn, [Rule(tickets, "insert", "ticket.created"), Rule(tickets, "delete", "ticket.gone")])
    removed = untrack(conn, tickets, "ticket.created")
    assert [r.event_type for r in removed] == ["ticket.created"]
    conn.execute("INSERT INTO tickets (title) VALUES ('a')")
    conn.execute("DELETE FROM tickets")
    assert [t for t, _ in events(conn)] == ["ticket.gone"]
    fn = conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'outbox' AND p.proname LIKE 'capture_%%'"
    ).fetchone()
    assert fn is not None and fn[0] == 1
    untrack(conn, tickets)
    assert tracked(conn) == []
    with pytest.raises(CaptureError, match="no capture rule"):
        untrack(conn, tickets)


def test_trigger_functions_are_version_suffixed(
    conn: psycopg.Connection[Any], tickets: str
) -> None:
    rule = track(conn, [Rule(tickets, "insert", "ticket.created")])[0]
    assert rule.function_name.endswith(f"_{FUNCTION_VERSION}")


def test_rolled_back_change_produces_no_event(conn: psycopg.Connection[Any], tickets: str) -> None:
    track(conn, [Rule(tickets, "insert", "ticket.created")])
    with conn.transaction():
        conn.execute("INSERT INTO tickets (title) VALUES ('a')")
        raise psycopg.Rollback()
    assert events(conn) == []


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule("nosuch", "insert", "a.b"), "unknown table 'nosuch'"),
        (Rule("tickets", "update", "a.b", of=("nope",)), "^of: unknown column 'nope'"),
        (Rule("tickets", "insert", "a.b", columns=("nope",)), "^columns: unknown column 'nope'"),
        (Rule("tickets", "insert", "a.b", exclude=("nope",)), "^exclude: unknown column 'nope'"),
        (Rule("tickets", "insert", "Bad"), "^insert: invalid event type 'Bad'"),
        (Rule("tickets", "insert", "a.b", when="NEW.bogus = 1"), "--when does not compile"),
        (Rule("tickets", "insert", "a.b", when="OLD.id = 1"), "--when does not compile"),
        (Rule("tickets", "insert", "a.b", of=("status",)), "^of: applies to update rules only"),
        (Rule("outbox.events", "insert", "a.b"), "cannot track the outbox"),
    ],
)
def test_bad_input_is_clear_and_applies_nothing(
    conn: psycopg.Connection[Any], tickets: str, rule: Rule, message: str
) -> None:
    good = Rule(tickets, "insert", "ticket.created")
    with pytest.raises(CaptureError, match=message.replace("(", r"\(")):
        track(conn, [good, rule])  # the good rule must not be half-applied
    assert tracked(conn) == []


def test_statement_and_row_level_capture_agree(conn: psycopg.Connection[Any]) -> None:
    """Multi-row statements: the statement-level trigger (transition table)
    yields the same events, payloads and order as a row trigger would."""
    for t in ("a_row", "a_stmt"):
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text, secret text)")
    for t, level in (("a_row", "row"), ("a_stmt", "statement")):
        track(
            conn,
            [
                Rule(
                    t,
                    "insert",
                    f"{t}.created",
                    exclude=("secret",),
                    when="NEW.id % 3 <> 0",
                    level=level,
                ),
                Rule(t, "delete", f"{t}.deleted", level=level),  # the table's policy
            ],
        )
    for t in ("a_row", "a_stmt"):
        table = sql.Identifier(t)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 'v' || g, 's' FROM generate_series(20, 1, -1) g"
            ).format(table)
        )
        conn.execute(sql.SQL("DELETE FROM {} WHERE id > 15").format(table))
    rows = conn.execute("SELECT event_type, payload FROM outbox.events ORDER BY id").fetchall()
    by_table: dict[str, list[tuple[str, Any]]] = {"a_row": [], "a_stmt": []}
    for etype, payload in rows:
        table, _, kind = etype.partition(".")
        by_table[table].append((kind, payload))
    assert by_table["a_row"] == by_table["a_stmt"]
    assert [p["id"] for k, p in by_table["a_row"] if k == "created"][:3] == [20, 19, 17]


def test_statement_level_update_is_refused(conn: psycopg.Connection[Any], tickets: str) -> None:
    with pytest.raises(CaptureError, match="statement-level capture is for insert and delete"):
        track(conn, [Rule(tickets, "update", "t.u", level="statement")])


def test_empty_statement_writes_nothing(conn: psycopg.Connection[Any], tickets: str) -> None:
    track(conn, [Rule(tickets, "delete", "ticket.deleted")])
    conn.execute("DELETE FROM tickets WHERE false")
    assert events(conn) == []
