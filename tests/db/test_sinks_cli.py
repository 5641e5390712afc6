"""``outbox sink add|list|remove`` in-process (main() with argv), against a
real database: output, errors as one line naming the flag, no traceback."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from outbox.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_list_remove(
    db_url: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database-url", db_url)
    code, out, _ = run(
        capsys, "sink", "add", "orders", "nats://127.0.0.1:4222", "--events", "order.*",
        "--subject", "shop.{type}", "--stream", "ORDERS", *db,
    )  # fmt: skip
    assert code == 0 and "sink 'orders' added: nats shop.{type}" in out
    code, out, _ = run(
        capsys, "sink", "add", "audit", "amqp://app:hunter2@127.0.0.1:5672/", "--routing-key",
        "{type}.{key}", "--since", "beginning", *db,
    )  # fmt: skip
    assert code == 0, out
    conn.execute("SELECT outbox.publish('order.created', '{}')")

    code, out, _ = run(capsys, "sink", "list", *db)
    assert code == 0
    assert "orders  nats nats://127.0.0.1:4222 -> shop.{type} (stream ORDERS)  [active]" in out
    assert "audit  amqp amqp://app:***@127.0.0.1:5672/ -> 'amq.topic' {type}.{key}" in out
    assert "hunter2" not in out and "last error: -" in out and "cursor " in out
    code, out, _ = run(capsys, "sink", "list", "--json", *db)
    items = json.loads(out)
    assert [s["name"] for s in items] == ["orders", "audit"]
    assert [s["lag"]["events"] for s in items] == [1, 1] or items[1]["lag"]["events"] >= 1
    assert all("rate" in s and "published_count" in s for s in items)

    code, out, _ = run(capsys, "sink", "remove", "orders", *db)
    assert code == 0 and "removed: orders" in out
    code, _, err = run(capsys, "sink", "remove", "orders", *db)
    assert code == 1 and err.strip() == "outbox sink: error: NAME: no sink named 'orders'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x", "http://h"), "--kind: give kind (nats or amqp) or a nats:// or amqp:// URL"),
        (("x", "nats://h", "--subject", "{type}"), "--subject: must begin with a fixed token"),
        (("x", "nats://h", "--routing-key", "k"), "--routing-key: applies to amqp sinks only"),
        (("x", "amqp://h", "--events", "Bad"), "--events: invalid event type pattern"),
        (("x", "nats://h", "--since", "zzz"), "--since: must be 'now', 'beginning' or a cursor"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(
    db_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, _, err = run(capsys, "sink", "add", *args, "--database-url", db_url)
    assert code == 1
    assert err.startswith(f"outbox sink: error: {message}"), err
    assert len(err.strip().splitlines()) == 1


def test_duplicate_name(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database-url", db_url)
    assert run(capsys, "sink", "add", "a", "nats://h", *db)[0] == 0
    code, _, err = run(capsys, "sink", "add", "a", "nats://h", *db)
    assert code == 1 and "NAME: a sink named 'a' exists" in err


def test_empty_list(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sink", "list", "--database-url", db_url)
    assert code == 0 and "no sinks" in out


def test_url_from_an_environment_variable(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = ("--database-url", db_url)
    monkeypatch.setenv("AUDIT_BROKER_URL", "amqp://app:hunter2@127.0.0.1:5672/")
    code, out, err = run(capsys, "sink", "add", "audit", "--url-env", "AUDIT_BROKER_URL", *db)
    assert code == 0, err
    assert "sink 'audit' added: amqp" in out and "hunter2" not in out
    code, out, _ = run(capsys, "sink", "list", "--json", *db)
    (item,) = json.loads(out)
    assert item["kind"] == "amqp" and item["url"] == "amqp://app:***@127.0.0.1:5672/"


ENV_VAR = "--url-env: the environment variable"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--url-env", "NOPE_UNSET"), {}, f"{ENV_VAR} NOPE_UNSET is not set"),
        (("--url-env", "B_URL"), {"B_URL": " "}, f"{ENV_VAR} B_URL is empty"),
        (("--url-env", "A=B"), {}, "--url-env: 'A=B' is not an environment variable name"),
        (("nats://h", "--url-env", "B_URL"), {"B_URL": "nats://h"},
         "--url-env: give the URL or --url-env, not both"),
        ((), {}, "URL: give the broker URL, or --url-env VAR to read it from $VAR"),
        (("--url-env", "B_URL"), {"B_URL": "http://u:s3cret@h/"}, "--kind: give kind"),
        (("--kind", "nats", "--url-env", "B_URL"), {"B_URL": "amqp://u:s3cret@h/"},
         "--url-env: the URL in B_URL: a nats sink needs a nats://"),
        (("--url-env", "B_URL"), {"B_URL": "nats://u:s3cret@h:99999"},
         "--url-env: the URL in B_URL: is not a valid URL"),
    ],
)  # fmt: skip
def test_url_env_errors_name_the_flag_and_the_variable_and_never_the_password(
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.delenv("NOPE_UNSET", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, out, err = run(capsys, "sink", "add", "x", *args, "--database-url", db_url)
    assert code == 1
    assert err.startswith(f"outbox sink: error: {message}"), err
    assert len(err.strip().splitlines()) == 1
    assert "s3cret" not in err + out
    code, out, _ = run(capsys, "sink", "list", "--database-url", db_url)
    assert "no sinks" in out
