"""Schema-aware capture (issue 21): no leak and no silent loss when tracked
tables change. The first five tests are the issue's five cases; each failed
on the per-rule, by-name capture it replaces. docs/capture.md has the table
of DDL cases these tests walk through."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from outbox.capture import Policy, Rule, set_policy, track, tracked, untrack
from outbox.errors import CaptureError
from outbox.migrate import migrate
from tests.support.db import ADMIN_URL, fresh_database, url_for


def events(conn: psycopg.Connection[Any], event_type: str | None = None) -> list[Any]:
    rows = conn.execute(
        "SELECT event_type, payload FROM outbox.events"
        " WHERE event_type <> 'outbox.schema_changed' ORDER BY id"
    ).fetchall()
    return [p for t, p in rows if event_type is None or t == event_type]


def schema_changes(conn: psycopg.Connection[Any]) -> list[Any]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT payload FROM outbox.events WHERE event_type = 'outbox.schema_changed'"
            " ORDER BY id"
        )
    ]


def states(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {r.event_type: r.state for r in tracked(conn)}


@pytest.fixture
def users(conn: psycopg.Connection[Any]) -> str:
    conn.execute(
        "CREATE TABLE public.users (id serial PRIMARY KEY, email text, status text,"
        " password_hash text)"
    )
    return "users"


@pytest.fixture
def orders(conn: psycopg.Connection[Any]) -> str:
    conn.execute("CREATE TABLE public.orders (id serial PRIMARY KEY, total numeric, note text)")
    return "orders"


# --- the five cases ----------------------------------------------------------


def test_a_second_rule_keeps_the_tables_exclusion(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "insert", "user.created", exclude=("password_hash",))])
    track(conn, [Rule(users, "update", "user.status_changed", of=("status",))])
    conn.execute("INSERT INTO users (email, status, password_hash) VALUES ('a@x', 'new', 'h')")
    conn.execute("UPDATE users SET status = 'active'")
    created, changed = events(conn)
    assert "password_hash" not in created and "password_hash" not in changed
    assert changed["status"] == "active" and changed["previous"] == {"status": "new"}
    assert {(r.event_type, r.exclude) for r in tracked(conn)} == {
        ("user.created", ("password_hash",)),
        ("user.status_changed", ("password_hash",)),
    }


def test_a_renamed_excluded_column_stays_excluded(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "insert", "user.created", exclude=("password_hash",))])
    conn.execute("ALTER TABLE users RENAME password_hash TO pw_hash")
    conn.execute("INSERT INTO users (email, pw_hash) VALUES ('a@x', 'h')")
    [payload] = events(conn)
    assert "pw_hash" not in payload and "password_hash" not in payload
    assert payload["email"] == "a@x"
    assert tracked(conn)[0].exclude == ("pw_hash",)  # the policy shows the current name
    assert states(conn) == {"user.created": "ok"}
    [change] = schema_changes(conn)
    assert change["table"] == "public.users" and change["command"] == "ALTER TABLE"
    assert change["action"] == "regenerated" and change["rules"] == ["insert -> user.created"]
    assert {"change": "column renamed", "from": "password_hash", "to": "pw_hash"} in change[
        "changes"
    ]


def test_dropping_a_projected_column_never_breaks_writes(
    conn: psycopg.Connection[Any], orders: str
) -> None:
    track(conn, [Rule(orders, "insert", "order.created", columns=("id", "total"))])
    conn.execute("ALTER TABLE orders DROP COLUMN total")
    conn.execute("INSERT INTO orders (note) VALUES ('n')")  # failed: record "new" has no field
    assert events(conn) == [{"id": 1}]
    assert tracked(conn)[0].columns == ("id",)


def test_dropping_a_watched_column_is_refused_naming_the_rule(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "update", "user.status_changed", of=("status",))])
    with pytest.raises(psycopg.Error, match=r"user\.status_changed") as info:
        conn.execute("ALTER TABLE users DROP COLUMN status CASCADE")
    assert info.value.sqlstate == "OB002"
    assert "capture rule public.users update -> user.status_changed" in str(info.value)
    conn.execute("INSERT INTO users (status) VALUES ('a')")
    conn.execute("UPDATE users SET status = 'b'")
    assert [p["status"] for p in events(conn)] == ["b"]
    assert states(conn) == {"user.status_changed": "ok"}


def test_a_missing_trigger_is_shown_and_track_restores_it(
    conn: psycopg.Connection[Any], users: str
) -> None:
    [rule] = track(conn, [Rule(users, "update", "user.status_changed", of=("status",))])
    # Behind outbox's back (the DDL event trigger refuses a plain DROP TRIGGER).
    conn.execute("ALTER EVENT TRIGGER outbox_capture_sql_drop DISABLE")
    conn.execute(f"DROP TRIGGER {rule.trigger_name} ON users")
    conn.execute("ALTER EVENT TRIGGER outbox_capture_sql_drop ENABLE")
    assert states(conn) == {"user.status_changed": "missing"}
    [again] = track(conn, [Rule(users, "update", "user.status_changed", of=("status",))])
    assert again.status == "restored"  # never "unchanged" while the trigger is missing
    conn.execute("INSERT INTO users (status) VALUES ('a')")
    conn.execute("UPDATE users SET status = 'b'")
    assert len(events(conn)) == 1 and states(conn) == {"user.status_changed": "ok"}


def test_a_renamed_table_keeps_capture_untrack_and_track(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "insert", "user.created"), Rule(users, "delete", "user.deleted")])
    conn.execute("ALTER TABLE users RENAME TO accounts")
    conn.execute("INSERT INTO accounts (email) VALUES ('a@x')")
    assert [r.table for r in tracked(conn)] == ["public.accounts", "public.accounts"]
    [same] = track(conn, [Rule("accounts", "insert", "user.created")])
    assert same.status == "unchanged" and same.table == "public.accounts"
    assert [r.event_type for r in untrack(conn, "accounts", "user.deleted")] == ["user.deleted"]
    conn.execute("DELETE FROM accounts")
    assert [p["email"] for p in events(conn)] == ["a@x"]  # created; no deleted event
    conn.execute("CREATE SCHEMA app")
    conn.execute("ALTER TABLE accounts SET SCHEMA app")
    conn.execute("INSERT INTO app.accounts (email) VALUES ('b@x')")
    assert [r.table for r in tracked(conn)] == ["app.accounts"]
    assert len(events(conn)) == 2


# --- the column policy is the table's ---------------------------------------------------


def test_a_different_policy_for_one_rule_is_refused(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "insert", "user.created", exclude=("password_hash",))])
    with pytest.raises(CaptureError, match="has the column policy exclude password_hash"):
        track(conn, [Rule(users, "update", "user.updated", exclude=("email",))])
    assert [r.event_type for r in tracked(conn)] == ["user.created"]  # nothing applied
    with pytest.raises(CaptureError, match="one policy per command"):
        track(
            conn,
            [
                Rule(users, "insert", "user.a", exclude=("email",)),
                Rule(users, "delete", "user.b", columns=("id",)),
            ],
        )


def test_changing_the_policy_regenerates_every_rule(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(
        conn,
        [
            Rule(users, "insert", "user.created", exclude=("password_hash",)),
            Rule(users, "update", "user.updated"),
        ],
    )
    result = set_policy(conn, users, Policy("exclude", ("password_hash", "email")))
    assert {r.exclude for r in result} == {("password_hash", "email")}
    conn.execute("INSERT INTO users (email, status, password_hash) VALUES ('a@x', 's', 'h')")
    conn.execute("UPDATE users SET status = 't'")
    for payload in events(conn):
        assert set(payload) == {"id", "status"}
    set_policy(conn, users, Policy())
    conn.execute("UPDATE users SET status = 'u'")
    assert "password_hash" in events(conn)[-1]


# --- DDL cases ------------------------------------------------------------------------


def test_add_column_follows_the_policy(
    conn: psycopg.Connection[Any], users: str, orders: str
) -> None:
    track(conn, [Rule(users, "insert", "user.created", exclude=("password_hash",))])
    track(conn, [Rule(orders, "insert", "order.created", columns=("id", "total"))])
    conn.execute("ALTER TABLE users ADD COLUMN nickname text")
    conn.execute("ALTER TABLE orders ADD COLUMN secret text")
    conn.execute("INSERT INTO users (nickname) VALUES ('n')")
    conn.execute("INSERT INTO orders (total, secret) VALUES (1, 's')")
    user, order = events(conn)
    assert user["nickname"] == "n"  # --exclude: new columns are captured
    assert order == {"id": 1, "total": 1}  # --columns: they are not
    added = [c for ch in schema_changes(conn) for c in ch["changes"]]
    assert {"change": "column added", "column": "nickname", "included": True} in added
    assert {"change": "column added", "column": "secret", "included": False} in added


def test_change_a_column_type(conn: psycopg.Connection[Any], orders: str) -> None:
    track(conn, [Rule(orders, "insert", "order.created", key=("id",))])
    track(conn, [Rule(orders, "update", "order.noted", of=("note",))])
    conn.execute("ALTER TABLE orders ALTER COLUMN total TYPE text")
    conn.execute("ALTER TABLE orders ALTER COLUMN id TYPE bigint")  # the key column
    conn.execute("INSERT INTO orders (total) VALUES ('12.50')")
    assert events(conn) == [{"id": 1, "total": "12.50", "note": None}]
    assert conn.execute("SELECT key FROM outbox.events WHERE key IS NOT NULL").fetchone() == ("1",)
    [change] = [c for c in schema_changes(conn) if c["changes"][0]["column"] == "total"]
    assert change["changes"][0] == {
        "change": "column type changed",
        "column": "total",
        "from": "numeric",
        "to": "text",
    }
    # Postgres itself refuses to retype a column an UPDATE OF trigger watches.
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="used in a trigger"):
        conn.execute("ALTER TABLE orders ALTER COLUMN note TYPE varchar(10)")
    assert set(states(conn).values()) == {"ok"}


def test_renamed_columns_keep_of_key_and_when(conn: psycopg.Connection[Any], users: str) -> None:
    track(conn, [Rule(users, "update", "user.status_changed", of=("status",), key=("email",))])
    track(conn, [Rule(users, "insert", "user.vip", when="NEW.status = 'vip'", key=("email",))])
    conn.execute("ALTER TABLE users RENAME status TO state")
    conn.execute("ALTER TABLE users RENAME email TO mail")
    conn.execute("INSERT INTO users (mail, state) VALUES ('a@x', 'vip'), ('b@x', 'new')")
    conn.execute("UPDATE users SET state = 'gone' WHERE mail = 'b@x'")
    rows = conn.execute(
        "SELECT event_type, key, payload FROM outbox.events"
        " WHERE event_type <> 'outbox.schema_changed' ORDER BY id"
    ).fetchall()
    assert [(t, k) for t, k, _ in rows] == [("user.vip", "a@x"), ("user.status_changed", "b@x")]
    assert rows[1][2]["previous"] == {"state": "new"}
    rules = {r.event_type: r for r in tracked(conn)}
    assert rules["user.status_changed"].of == ("state",)
    assert rules["user.vip"].when == "NEW.state = 'vip'"
    assert rules["user.vip"].key == ("mail",)


def test_an_excluded_column_dropped_and_added_again_stays_excluded(
    conn: psycopg.Connection[Any], users: str
) -> None:
    """Drop and re-add is how a column changes type in many migrations."""
    track(conn, [Rule(users, "insert", "user.created", exclude=("password_hash",))])
    conn.execute("ALTER TABLE users DROP COLUMN password_hash")
    assert tracked(conn)[0].exclude == ("password_hash",)
    conn.execute("ALTER TABLE users ADD COLUMN password_hash bytea")
    conn.execute("INSERT INTO users (email, password_hash) VALUES ('a@x', 'h')")
    assert events(conn) == [{"id": 1, "email": "a@x", "status": None}]
    added = [
        c for ch in schema_changes(conn) for c in ch["changes"] if c["change"] == "column added"
    ]
    assert added == [{"change": "column added", "column": "password_hash", "included": False}]


def test_dropping_a_key_column_is_refused(conn: psycopg.Connection[Any], users: str) -> None:
    track(conn, [Rule(users, "insert", "user.created", key=("email",))])
    with pytest.raises(psycopg.Error, match="key of capture rule") as info:
        conn.execute("ALTER TABLE users DROP COLUMN email")
    assert info.value.sqlstate == "OB002"
    conn.execute("INSERT INTO users (email) VALUES ('a@x')")
    assert len(events(conn)) == 1


def test_dropping_the_last_column_of_a_columns_policy_is_refused(
    conn: psycopg.Connection[Any], orders: str
) -> None:
    track(conn, [Rule(orders, "insert", "order.created", columns=("total",))])
    with pytest.raises(psycopg.Error, match="last column of the table's capture policy"):
        conn.execute("ALTER TABLE orders DROP COLUMN total")


def test_dropping_a_column_a_when_needs_is_refused(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "insert", "user.vip", when="NEW.status = 'vip'")])
    with pytest.raises(psycopg.Error, match="would break") as info:
        conn.execute("ALTER TABLE users DROP COLUMN status")
    assert info.value.sqlstate == "OB002"
    conn.execute("INSERT INTO users (status) VALUES ('vip')")
    assert len(events(conn)) == 1


def test_drop_trigger_or_function_directly_is_refused(
    conn: psycopg.Connection[Any], users: str
) -> None:
    [rule] = track(conn, [Rule(users, "insert", "user.created")])
    with pytest.raises(psycopg.Error, match="drops the trigger of capture rule"):
        conn.execute(f"DROP TRIGGER {rule.trigger_name} ON users")
    with pytest.raises(psycopg.Error, match="drops the function of capture rule"):
        conn.execute(f"DROP FUNCTION outbox.{rule.function_name}() CASCADE")
    assert states(conn) == {"user.created": "ok"}


def test_a_disabled_trigger_is_shown(conn: psycopg.Connection[Any], users: str) -> None:
    [rule] = track(conn, [Rule(users, "insert", "user.created")])
    conn.execute(f"ALTER TABLE users DISABLE TRIGGER {rule.trigger_name}")
    assert states(conn) == {"user.created": "disabled"}
    conn.execute("ALTER TABLE users RENAME email TO mail")  # regenerated, still disabled
    assert states(conn) == {"user.created": "disabled"}
    conn.execute(f"ALTER TABLE users ENABLE TRIGGER {rule.trigger_name}")
    assert states(conn) == {"user.created": "ok"}
    conn.execute("ALTER TABLE users DISABLE TRIGGER ALL")
    assert states(conn) == {"user.created": "disabled"}
    [again] = track(conn, [Rule(users, "insert", "user.created")])  # restores it
    assert again.status == "restored" and states(conn) == {"user.created": "ok"}


def test_a_renamed_trigger_is_still_the_rules(conn: psycopg.Connection[Any], users: str) -> None:
    [rule] = track(conn, [Rule(users, "insert", "user.created")])
    conn.execute(f"ALTER TRIGGER {rule.trigger_name} ON users RENAME TO my_trigger")
    [now] = tracked(conn)
    assert (now.trigger_name, now.state) == ("my_trigger", "ok")
    conn.execute("INSERT INTO users (email) VALUES ('a@x')")
    assert len(events(conn)) == 1


def test_drop_schema_cascade_detaches(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TABLE app.things (id int PRIMARY KEY)")
    track(conn, [Rule("app.things", "insert", "thing.created")])
    conn.execute("DROP SCHEMA app CASCADE")
    assert states(conn) == {"thing.created": "detached"}
    assert schema_changes(conn)[-1]["command"] == "DROP SCHEMA"


def test_drop_and_recreate_the_table(conn: psycopg.Connection[Any], users: str) -> None:
    track(conn, [Rule(users, "insert", "user.created", exclude=("password_hash",))])
    conn.execute("DROP TABLE users")
    assert states(conn) == {"user.created": "detached"}
    detached = schema_changes(conn)[-1]
    assert detached["action"] == "detached" and detached["command"] == "DROP TABLE"
    conn.execute("CREATE TABLE users (id int, email text, password_hash text)")
    assert states(conn) == {"user.created": "ok"}
    assert schema_changes(conn)[-1]["action"] == "attached"
    conn.execute("INSERT INTO users VALUES (1, 'a@x', 'h')")
    assert events(conn) == [{"id": 1, "email": "a@x"}]
    untrack(conn, "users")
    assert tracked(conn) == []


def test_a_dropped_table_can_be_untracked_by_name(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "insert", "user.created")])
    conn.execute("DROP TABLE users")
    assert [r.event_type for r in untrack(conn, "users")] == ["user.created"]
    assert tracked(conn) == []


def test_create_table_like_a_tracked_table_is_not_captured(
    conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "insert", "user.created")])
    conn.execute("CREATE TABLE users_copy (LIKE users INCLUDING ALL)")
    conn.execute("INSERT INTO users_copy (id, email) VALUES (100, 'copy')")
    conn.execute("INSERT INTO users (email) VALUES ('a@x')")
    assert [p["email"] for p in events(conn)] == ["a@x"]
    assert [r.table for r in tracked(conn)] == ["public.users"]


@pytest.fixture
def members(conn: psycopg.Connection[Any]) -> str:
    """Like users, with an identity column: LIKE ... INCLUDING ALL gives the
    copy a sequence of its own (a serial's would stay owned by the original)."""
    conn.execute(
        "CREATE TABLE public.users (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " email text, status text, password_hash text)"
    )
    return "users"


def test_the_rename_copy_drop_dance(conn: psycopg.Connection[Any], members: str) -> None:
    """What migration tools do to rewrite a table: the rules end up on the
    new table under the old name; copying the rows publishes nothing."""
    users = members
    track(conn, [Rule(users, "insert", "user.created", exclude=("password_hash",))])
    track(conn, [Rule(users, "update", "user.status_changed", of=("status",))])
    conn.execute("INSERT INTO users (email, status, password_hash) VALUES ('a@x', 's', 'h')")
    with conn.transaction():
        conn.execute("ALTER TABLE users RENAME TO users_old")
        conn.execute("CREATE TABLE users (LIKE users_old INCLUDING ALL)")
        conn.execute("ALTER TABLE users ADD COLUMN created date")
        conn.execute("INSERT INTO users SELECT *, current_date FROM users_old")
        conn.execute("DROP TABLE users_old")
    assert states(conn) == {"user.created": "ok", "user.status_changed": "ok"}
    assert [r.table for r in tracked(conn)] == ["public.users", "public.users"]
    conn.execute("INSERT INTO users (id, email, password_hash) VALUES (2, 'b@x', 'h')")
    conn.execute("UPDATE users SET status = 't' WHERE id = 1")
    got = events(conn)
    assert [p["email"] for p in got] == ["a@x", "b@x", "a@x"]  # the copy published nothing
    assert all("password_hash" not in p for p in got)
    assert schema_changes(conn)[-1]["action"] == "attached"


def test_the_drop_first_dance(conn: psycopg.Connection[Any], members: str) -> None:
    users = members
    track(conn, [Rule(users, "insert", "user.created", exclude=("password_hash",))])
    with conn.transaction():
        conn.execute("CREATE TABLE users_new (LIKE users INCLUDING ALL)")
        conn.execute("DROP TABLE users")
        conn.execute("ALTER TABLE users_new RENAME TO users")
    conn.execute("INSERT INTO users (id, email, password_hash) VALUES (1, 'a@x', 'h')")
    assert events(conn) == [{"id": 1, "email": "a@x", "status": None}]


def test_concurrent_writers_during_regeneration_lose_nothing_and_double_nothing(
    db_url: str, conn: psycopg.Connection[Any], users: str
) -> None:
    track(conn, [Rule(users, "insert", "user.created")])
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                while not stop.is_set():
                    row = c.execute(
                        "INSERT INTO users (email) VALUES ('w') RETURNING id"
                    ).fetchone()
                    assert row is not None
                    written.append(row[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(12):  # every change regenerates the trigger under load
            cols = ("password_hash",) if i % 2 == 0 else ("password_hash", "email")
            set_policy(conn, users, Policy("exclude", cols))
            conn.execute(f"ALTER TABLE users RENAME COLUMN status TO status{i}")
            conn.execute(f"ALTER TABLE users RENAME COLUMN status{i} TO status")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    captured = [
        r[0]
        for r in conn.execute(
            "SELECT (payload->>'id')::int FROM outbox.events WHERE event_type = 'user.created'"
        )
    ]
    assert len(written) > 50
    assert sorted(captured) == sorted(written)  # none lost, none doubled


# --- a migrating role that is not a superuser -------------------------------------------


@pytest.fixture
def plain_role_db() -> Iterator[str]:
    """A database owned by a LOGIN role without superuser, migrated by it."""
    role = f"outbox_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        with fresh_database("outbox_r") as name:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" OWNER TO "{role}"')
            info = psycopg.conninfo.conninfo_to_dict(url_for(name))
            info["user"] = role
            yield psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_without_superuser_migrate_says_so_and_verification_protects(
    plain_role_db: str,
) -> None:
    said: list[str] = []
    with psycopg.connect(plain_role_db) as c:
        assert migrate(c, log=said.append)
    notes = [s for s in said if "DDL event trigger" in s]
    assert len(notes) == 1 and "needs a superuser" in notes[0]
    with psycopg.connect(plain_role_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text, password_hash text)")
        track(conn, [Rule("users", "insert", "user.created", exclude=("password_hash",))])
        # No event trigger: the rename is not seen at once, but never silently.
        conn.execute("ALTER TABLE users RENAME password_hash TO pw_hash")
        [rule] = tracked(conn)
        assert rule.state == "stale" and "DDL event trigger" in (rule.detail or "")
        [again] = track(conn, [Rule("users", "insert", "user.created")])
        assert again.status == "updated" and again.exclude == ("pw_hash",)
        conn.execute("INSERT INTO users (email, pw_hash) VALUES ('a@x', 'h')")
        assert events(conn) == [{"id": 1, "email": "a@x"}]
        assert states(conn) == {"user.created": "ok"}
        # A dropped watched column: Postgres drops the trigger; the rule shows
        # it, and track names the column instead of saying "unchanged".
        track(conn, [Rule("users", "update", "user.email_changed", of=("email",))])
        conn.execute("ALTER TABLE users DROP COLUMN email CASCADE")
        assert states(conn)["user.email_changed"] in ("missing", "broken")
        with pytest.raises(CaptureError, match="email"):
            track(conn, [Rule("users", "update", "user.email_changed", of=("email",))])
        with psycopg.connect(plain_role_db) as again_conn:
            assert migrate(again_conn) == []


def test_without_superuser_a_table_rename_is_stale_until_tracked(plain_role_db: str) -> None:
    with psycopg.connect(plain_role_db) as c:
        migrate(c)
    with psycopg.connect(plain_role_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text)")
        track(conn, [Rule("users", "insert", "user.created", key=("email",))])
        conn.execute("ALTER TABLE users RENAME TO accounts")
        conn.execute("INSERT INTO accounts (email) VALUES ('a@x')")  # still captured
        assert states(conn) == {"user.created": "stale"}
        [again] = track(conn, [Rule("accounts", "insert", "user.created", key=("email",))])
        assert again.table == "public.accounts" and again.status == "updated"
        assert states(conn) == {"user.created": "ok"}
        conn.execute("ALTER TABLE accounts RENAME email TO mail")
        with pytest.raises(CaptureError, match=r"^key: unknown column 'email'"):
            track(conn, [Rule("accounts", "insert", "user.created", key=("email",))])
        [fixed] = track(conn, [Rule("accounts", "insert", "user.created", key=("mail",))])
        assert fixed.status == "updated"
        conn.execute("INSERT INTO accounts (mail) VALUES ('b@x')")
        assert [p["email" if "email" in p else "mail"] for p in events(conn)] == ["a@x", "b@x"]


def test_migration_moves_per_rule_policies_to_the_most_restrictive_table_policy(
    empty_db_url: str,
) -> None:
    from outbox.sqlfiles import migrations

    steps = migrations()
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        for version, _, text in steps:
            if version < 10:
                conn.execute(text.encode())
        conn.execute(
            "CREATE TABLE users (id int PRIMARY KEY, email text, ssn text, password_hash text)"
        )
        conn.execute("CREATE TABLE briefs (id int PRIMARY KEY, title text, body text)")
        # Rules as the per-rule compiler stored them (their triggers are rebuilt).
        for table, op, event, cols, excl in (
            ("users", "insert", "user.created", None, ["password_hash"]),
            ("users", "delete", "user.deleted", None, ["ssn"]),
            ("briefs", "insert", "brief.created", ["id", "title"], []),
            ("briefs", "delete", "brief.deleted", ["id", "body"], []),
        ):
            conn.execute(
                "INSERT INTO outbox.capture_rules (table_schema, table_name, operation,"
                " event_type, columns, exclude_columns, trigger_name, function_name,"
                " definition_hash) VALUES ('public', %s, %s, %s, %s, %s, %s, %s, 'old')",
                (table, op, event, cols, excl, f"outbox_{op}", f"capture_{table}_{op}_old_v1"),
            )
        conn.execute(next(text for v, _, text in steps if v == 10).encode())
        policies = dict(
            conn.execute(
                "SELECT table_name, policy || ' ' || array_to_string(policy_columns, ',')"
                " FROM outbox.capture_tables"
            ).fetchall()
        )
        assert policies == {"users": "exclude ssn,password_hash", "briefs": "columns id"}
        conn.execute("INSERT INTO users VALUES (1, 'a@x', 's', 'h')")
        conn.execute("INSERT INTO briefs VALUES (1, 't', 'b')")
        got = [r[0] for r in conn.execute("SELECT payload FROM outbox.events ORDER BY id")]
        assert got == [{"id": 1, "email": "a@x"}, {"id": 1}]
        assert states(conn) == {
            "user.created": "ok",
            "user.deleted": "ok",
            "brief.created": "ok",
            "brief.deleted": "ok",
        }


def test_a_dump_and_restore_is_found_again_by_migrate(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """pg_dump/restore gives tables new oids and renumbers the attnums of a
    table that had dropped columns; the rules' triggers tell which is which."""
    import subprocess

    conn.execute(
        "CREATE TABLE users (id int PRIMARY KEY, junk text, email text, password_hash text)"
    )
    conn.execute("ALTER TABLE users DROP COLUMN junk")  # attnums shift in the restore
    conn.execute("CREATE TABLE filler (id int)")  # the restore hands out other oids
    track(
        conn, [Rule("users", "insert", "user.created", exclude=("password_hash",), key=("email",))]
    )
    dump = subprocess.run(
        ["pg_dump", "--no-owner", db_url], capture_output=True, check=True, timeout=60
    ).stdout
    with fresh_database("outbox_restore") as name:
        url = url_for(name)
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", url],
            input=dump,
            capture_output=True,
            check=True,
            timeout=60,
        )
        with psycopg.connect(url, autocommit=True) as restored:
            [before] = tracked(restored)
            assert before.state == "stale" and "restored from a dump" in (before.detail or "")
        said: list[str] = []
        with psycopg.connect(url) as c:
            migrate(c, log=said.append)
        assert any("found again by their triggers" in s for s in said)
        with psycopg.connect(url, autocommit=True) as restored:
            assert states(restored) == {"user.created": "ok"}
            restored.execute("ALTER TABLE users RENAME password_hash TO pw_hash")
            restored.execute("INSERT INTO users VALUES (1, 'a@x', 'h')")
            row = restored.execute(
                "SELECT key, payload FROM outbox.events WHERE event_type = 'user.created'"
            ).fetchone()
            assert row == ("a@x", {"id": 1, "email": "a@x"})
