"""``outbox serve`` as a real subprocess: start-up errors, SIGTERM, kill -9
mid-stream, and two processes sharing one database."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.support.relay import (
    ROOT,
    ServeProcess,
    add_webhook,
    deliveries_summary,
    serve_processes,
)
from tests.support.waiting import wait_for


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )


def clean_env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "PG"))}
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


class Writer(threading.Thread):
    """Publishes up to ``total`` events, one small transaction each."""

    def __init__(self, db_url: str, total: int) -> None:
        super().__init__(daemon=True)
        self.db_url, self.total = db_url, total
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.db_url, autocommit=True) as c:
                for i in range(self.total):
                    c.execute(
                        "SELECT outbox.publish('load.tick', jsonb_build_object('i', %s::int))", (i,)
                    )
                    self.written += 1
        except BaseException as exc:
            self.error = exc


def test_help_names_the_environment_variables() -> None:
    out = run_cli("serve", "--help", env=clean_env()).stdout
    for name in (
        "OUTBOX_HOST",
        "OUTBOX_PORT",
        "OUTBOX_DATABASE_URL",
        "OUTBOX_POLL_INTERVAL",
        "OUTBOX_BATCH_SIZE",
        "OUTBOX_RETENTION",
        "OUTBOX_NOTIFY",
        "OUTBOX_API_TOKEN",
        "OUTBOX_LOG_LEVEL",
        "OUTBOX_WEBHOOK_PROXY",
        "OUTBOX_RETRY_MAX_AGE",
    ):
        assert name in out, name


def test_bad_configuration_fails_at_start_with_one_line(db_url: str, empty_db_url: str) -> None:
    cases = [
        ({"OUTBOX_PORT": "eighty"}, [], "OUTBOX_PORT", 1),
        ({"OUTBOX_POLL_INTERVAL": "soon"}, [], "OUTBOX_POLL_INTERVAL", 1),
        ({"OUTBOX_POLL_INTERVAL": "0"}, [], "OUTBOX_POLL_INTERVAL", 1),
        ({"OUTBOX_RETENTION": "0s"}, [], "OUTBOX_RETENTION", 1),
        ({"OUTBOX_LOG_LEVEL": "loud"}, [], "OUTBOX_LOG_LEVEL", 1),
        ({"OUTBOX_WEBHOOK_PROXY": "socks5://egress:1080"}, [], "OUTBOX_WEBHOOK_PROXY", 1),
        ({"OUTBOX_RETRY_SCHEDULE": "exponential(5s,1s,3)"}, [], "OUTBOX_RETRY_SCHEDULE", 1),
        ({"OUTBOX_RETRY_MAX_AGE": "forever"}, [], "OUTBOX_RETRY_MAX_AGE", 1),
        ({}, ["--poll-interval", "soon"], "--poll-interval", 2),
        ({}, ["--port", "70000"], "--port", 2),
        ({"OUTBOX_PORT": "eighty"}, ["--port", "0", "--batch-size", "0"], "--batch-size", 2),
    ]
    for env, args, named, status in cases:
        r = run_cli("serve", *args, env=clean_env(OUTBOX_DATABASE_URL=db_url, **env))
        assert r.returncode == status, (env, args, r.stderr)
        assert named in r.stderr, (named, r.stderr)
        assert "Traceback" not in r.stderr
    r = run_cli("serve", env=clean_env(OUTBOX_DATABASE_URL=empty_db_url))
    assert r.returncode == 1 and "run `outbox migrate` first" in r.stderr, r.stderr
    r = run_cli("serve", env=clean_env(OUTBOX_DATABASE_URL="postgresql://127.0.0.1:1/x"))
    assert r.returncode == 1 and "cannot connect" in r.stderr and "Traceback" not in r.stderr


def serve_fails_with_one_line(*args: str, env: dict[str, str]) -> str:
    """``outbox serve`` must exit 1 at once (60 s deadline) with one line on stderr."""
    r = run_cli("serve", *args, env=env)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("outbox serve: error: "), r.stderr
    return lines[0]


def test_a_lease_shorter_than_an_attempt_fails_at_start_naming_both(db_url: str) -> None:
    # Accepted before: every claimed delivery was released unsent, forever.
    line = serve_fails_with_one_line(env=clean_env(OUTBOX_DATABASE_URL=db_url, OUTBOX_LEASE="1ms"))
    assert line == (
        "outbox serve: error: OUTBOX_LEASE=1ms: must exceed OUTBOX_WEBHOOK_TIMEOUT (15s)"
    )
    r = run_cli(
        "serve",
        "--lease",
        "1ms",
        "--webhook-timeout",
        "2s",
        env=clean_env(OUTBOX_DATABASE_URL=db_url),
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        "outbox serve: error: --lease 1ms (OUTBOX_LEASE): must exceed --webhook-timeout (2s)"
    )


def test_a_host_that_does_not_resolve_is_named(db_url: str) -> None:
    # Before: "[Errno -2] Name or service not known", naming nothing.
    line = serve_fails_with_one_line(
        env=clean_env(OUTBOX_DATABASE_URL=db_url, OUTBOX_HOST="999.1.1.1")
    )
    assert line.startswith("outbox serve: error: OUTBOX_HOST=999.1.1.1: cannot resolve"), line


def test_a_port_in_use_is_named_before_anything_starts(db_url: str) -> None:
    # Before: six uvicorn lines, after the relay had already started.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = serve_fails_with_one_line(
            env=clean_env(OUTBOX_DATABASE_URL=db_url, OUTBOX_PORT=str(port))
        )
        assert line.startswith(
            f"outbox serve: error: OUTBOX_PORT={port}: cannot listen on 127.0.0.1:{port}: "
        ), line
        line = serve_fails_with_one_line(
            "--port", str(port), env=clean_env(OUTBOX_DATABASE_URL=db_url)
        )
        assert line.startswith(f"outbox serve: error: --port {port} (OUTBOX_PORT): "), line


async def test_sigterm_finishes_stores_the_cursor_and_closes_connections(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    add_webhook(conn, ["*"])
    with serve_processes() as procs:
        p = ServeProcess(db_url, tmp_path / "serve.log")
        procs.append(p)
        await p.wait_ready()
        async with httpx.AsyncClient(timeout=5) as client:
            await client.get(p.base_url + "/health?token=s3cret-value&x=1&api_key=k3y-value")
        for i in range(200):
            conn.execute("SELECT outbox.publish('t.x', jsonb_build_object('i', %s::int))", (i,))
        await wait_for(lambda: deliveries_summary(conn)[2] == 0, timeout=10, what="dispatch")
        before = len(p.log())
        p.signal(signal.SIGTERM)
        assert await p.wait(timeout=20) == 0, p.log()
    log = p.log()
    shutdown = log[before:]
    assert "relay" in shutdown and "stopped" in shutdown
    assert "Traceback" not in shutdown and "ERROR" not in shutdown, shutdown
    # The access log keeps the request but not the secrets.
    assert "GET /health?token=***&x=1&api_key=***" in log
    assert "s3cret-value" not in log and "k3y-value" not in log
    stored = conn.execute(
        "SELECT value FROM outbox.relay_state WHERE name = 'dispatcher'"
    ).fetchone()
    assert stored is not None
    left = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'outbox %'"
    ).fetchone()
    assert left == (0,)


async def test_kill_9_mid_stream_then_restart_dispatches_everything_once(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    add_webhook(conn, ["*"])
    add_webhook(conn, ["load.*"], name="second")
    writer = Writer(db_url, total=1500)
    with serve_processes() as procs:
        first = ServeProcess(db_url, tmp_path / "first.log")
        procs.append(first)
        await first.wait_ready()
        writer.start()
        # Mid-stream: some events dispatched, the writer still going.
        await wait_for(
            lambda: deliveries_summary(conn)[0] >= 300, timeout=30, what="dispatch under way"
        )
        first.kill()
        second = ServeProcess(db_url, tmp_path / "second.log")
        procs.append(second)
        await second.wait_ready()
        await wait_for(lambda: not writer.is_alive(), timeout=60, what="writer")
        assert writer.error is None, writer.error
        await wait_for(
            lambda: deliveries_summary(conn) == (3000, 3000, 0),
            timeout=30,
            what="every event dispatched to both webhooks",
        )
    per_event = conn.execute(
        "SELECT count(*) FROM (SELECT event_id FROM outbox.deliveries GROUP BY event_id "
        "HAVING count(*) <> 2) x"
    ).fetchone()
    assert per_event == (0,)


async def test_two_processes_one_leader_and_failover_within_seconds(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    add_webhook(conn, ["*"])
    writer = Writer(db_url, total=1000)
    with serve_processes() as procs:
        a = ServeProcess(db_url, tmp_path / "a.log")
        b = ServeProcess(db_url, tmp_path / "b.log")
        procs += [a, b]
        await a.wait_ready()
        await b.wait_ready()

        async def roles() -> list[str]:
            return [str((await p.health() or {}).get("role")) for p in (a, b)]

        async def one_leader() -> list[str] | None:
            r = await roles()
            return r if sorted(r) == ["follower", "leader"] else None

        found = await wait_for(one_leader, timeout=10, interval=0.1, what="one leader")
        leader, survivor = (a, b) if found[0] == "leader" else (b, a)
        writer.start()
        await wait_for(
            lambda: deliveries_summary(conn)[0] >= 300, timeout=30, what="dispatch under way"
        )
        leader.kill()

        async def took_over() -> bool:
            return (await survivor.health() or {}).get("role") == "leader"

        await wait_for(took_over, timeout=5, interval=0.1, what="takeover within seconds")
        await wait_for(lambda: not writer.is_alive(), timeout=60, what="writer")
        assert writer.error is None, writer.error
        await wait_for(
            lambda: deliveries_summary(conn) == (1000, 1000, 0),
            timeout=30,
            what="every event dispatched once",
        )
