"""`outbox demo` end to end, as a subprocess: the page, /ws, webhooks, Ctrl-C, errors."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import httpx
import psycopg
from websockets.asyncio.client import connect as ws_connect

from outbox.cli.demo_domain import EVENT_TYPES
from outbox.cli.embedded import NOTHING_TO_RUN

TOKEN = "demo-test-token"
URL_RE = re.compile(r"admin live feed:\s+(http://\S+?)/#token=(\S+)")


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "PG"))}
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


class Demo:
    """A running `outbox demo` whose stdout is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Demo:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outbox.cli",
            "demo",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        return cls(proc)

    async def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        rx = re.compile(pattern)
        for line in self.lines:
            if m := rx.search(line):
                return m

        async def read() -> re.Match[str]:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"demo exited before {pattern!r}:\n" + self.output)
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if m := rx.search(line):
                    return m

        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + self.output) from None

    async def finish(self, timeout: float = 60) -> int:
        assert self.proc.stdout is not None
        try:
            rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError("demo did not exit:\n" + self.output) from None
        self.lines += rest.decode(errors="replace").splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def test_demo_runs_end_to_end_for_a_bounded_time(db_url: str) -> None:
    demo = await Demo.start(
        "--duration",
        "6s",
        "--port",
        "0",
        "--rate",
        "20",
        env=demo_env(OUTBOX_DATABASE_URL=db_url, OUTBOX_API_TOKEN=TOKEN),
    )
    try:
        m = await demo.wait_line(URL_RE.pattern)
        base, token = m.group(1), m.group(2)
        assert token == TOKEN
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert "outbox-relay" in page.text
            hooks = await client.get("/webhooks", headers={"Authorization": f"Bearer {TOKEN}"})
            assert hooks.status_code == 200
            names = {h["name"] for h in hooks.json()["items"]}
            assert {"demo receiver", "demo flaky receiver"} <= names
        # The live feed carries the demo's events.
        ws_url = base.replace("http://", "ws://") + f"/ws?token={TOKEN}"
        async with ws_connect(ws_url, open_timeout=10) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["type"] == "connection"
            seen: set[str] = set()
            while not seen:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg["type"] in EVENT_TYPES:
                    seen.add(msg["type"])
        rc = await demo.finish()
    finally:
        demo.kill()
    assert rc == 0, demo.output
    assert "every event of this run was delivered to the demo receiver" in demo.output
    done = next(line for line in demo.lines if line.startswith("done:"))
    written = int(re.search(r"(\d+) events written", done).group(1))  # type: ignore[union-attr]
    assert 60 <= written <= 200, done
    assert "BAD SIGNATURE" not in demo.output
    with psycopg.connect(db_url) as conn:
        types = {r[0] for r in conn.execute("SELECT DISTINCT event_type FROM outbox.events")}
        delivered = conn.execute(
            "SELECT count(*) FROM outbox.deliveries d JOIN outbox.webhooks w"
            " ON w.id = d.webhook_id WHERE w.name = 'demo receiver' AND d.status = 'success'"
        ).fetchone()
    assert types <= set(EVENT_TYPES) | {"webhook.delivery_failed"}
    assert delivered is not None and delivered[0] >= written


async def test_demo_stops_cleanly_on_ctrl_c(db_url: str) -> None:
    demo = await Demo.start("--port", "0", "--rate", "50", env=demo_env(OUTBOX_DATABASE_URL=db_url))
    try:
        m = await demo.wait_line(URL_RE.pattern)
        assert m.group(2).startswith("obx_")  # a token made for this run
        await demo.wait_line(r"traffic: about 50 events/s until Ctrl-C")
        demo.proc.send_signal(signal.SIGINT)
        rc = await demo.finish(timeout=45)
    finally:
        demo.kill()
    assert rc == 0, demo.output
    assert any(line.startswith("done:") for line in demo.lines), demo.output
    assert "Traceback" not in demo.output, demo.output


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "demo", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("outbox demo: error: ")
    return lines[0]


def test_help_names_flags_and_variables() -> None:
    res = run_cli("--help", env=demo_env())
    assert res.returncode == 0
    for word in (
        "--rate",
        "--port",
        "--database-url",
        "--no-traffic",
        "--duration",
        "OUTBOX_DEMO_RATE",
        "OUTBOX_PORT",
        "OUTBOX_DATABASE_URL",
        "OUTBOX_API_TOKEN",
        "OUTBOX_DEMO_DURATION",
        "OUTBOX_DEMO_NO_TRAFFIC",
    ):
        assert word in res.stdout, word


def test_bad_flag_and_bad_variable_are_named() -> None:
    err = one_line_error(run_cli("--rate", "fast", env=demo_env()))
    assert "--rate" in err
    err = one_line_error(run_cli(env=demo_env(OUTBOX_DEMO_RATE="-1")))
    assert "OUTBOX_DEMO_RATE" in err
    err = one_line_error(run_cli(env=demo_env(OUTBOX_RETRY_SCHEDULE="soon")))
    assert "OUTBOX_RETRY_SCHEDULE" in err


def test_a_missing_database_on_a_reachable_server_is_created() -> None:
    from tests.support.db import ADMIN_URL, drop, url_for

    name = f"outbox_demo_{os.getpid()}"
    try:
        res = run_cli(
            "--no-traffic",
            "--duration",
            "1s",
            "--port",
            "0",
            env=demo_env(OUTBOX_DATABASE_URL=url_for(name)),
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"created database {name}" in res.stdout
        with psycopg.connect(ADMIN_URL) as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    finally:
        drop(name)


def test_an_unreachable_configured_database_is_an_error_not_an_embedded_cluster() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it
    err = one_line_error(
        run_cli(
            "--no-traffic",
            env=demo_env(OUTBOX_DATABASE_URL=f"postgresql://127.0.0.1:{port}/x"),
        )
    )
    assert "cannot connect to the configured database" in err


def test_without_database_or_binaries_it_says_what_to_do(tmp_path: Any) -> None:
    err = one_line_error(
        run_cli(
            "--embedded",
            env=demo_env(OUTBOX_PG_BINDIR=str(tmp_path / "none")),
        )
    )
    assert err == f"outbox demo: error: {NOTHING_TO_RUN}"
    for hint in ("OUTBOX_DATABASE_URL", "install PostgreSQL", "docker compose"):
        assert hint in err


def test_a_busy_port_is_named(db_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = one_line_error(
            run_cli(
                "--no-traffic",
                "--port",
                str(port),
                env=demo_env(OUTBOX_DATABASE_URL=db_url),
            )
        )
    assert "--port" in err and str(port) in err


def _schemas(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname IN ('outbox', 'demo')"
            )
        }


def test_with_nothing_named_the_demo_uses_a_database_of_its_own_and_reset_drops_it(
    empty_db_url: str,
) -> None:
    """PG* variables pointing at someone's database: the demo takes only the
    server from them and works in database outbox_demo there (here under
    another name, OUTBOX_DEMO_DATABASE: other runs of the suite share this
    server)."""
    from outbox.cli.demo_db import DEMO_DB, demo_db_name
    from tests.support.db import ADMIN_URL, drop, url_for

    assert demo_db_name({}) == DEMO_DB == "outbox_demo"
    own_db = f"outbox_demo_t{os.getpid()}"

    drop(own_db)  # a leftover of an interrupted earlier run
    info = psycopg.conninfo.conninfo_to_dict(empty_db_url)
    pg_env = {
        "PGHOST": str(info.get("host") or "127.0.0.1"),
        "PGPORT": str(info.get("port") or "5432"),
        "PGUSER": str(info.get("user") or "postgres"),
        "PGDATABASE": str(info["dbname"]),  # "yours": must stay untouched
        "OUTBOX_DEMO_DATABASE": own_db,
    }
    try:
        res = run_cli("--no-traffic", "--duration", "1s", "--port", "0", env=demo_env(**pg_env))
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"created database {own_db}" in res.stdout
        assert f"database: database {own_db} on" in res.stdout
        assert "your default database is not touched" in res.stdout
        assert f"left in place: schemas outbox and demo in database {own_db}" in res.stdout
        assert _schemas(empty_db_url) == set()
        assert _schemas(url_for(own_db)) == {"outbox", "demo"}

        again = run_cli("--no-traffic", "--duration", "1s", "--port", "0", env=demo_env(**pg_env))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "the demo's own, from an earlier run" in again.stdout

        gone = run_cli("--reset", env=demo_env(**pg_env))
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert f"dropped database {own_db}" in gone.stdout
        with psycopg.connect(ADMIN_URL) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (own_db,))
            assert row.fetchone() is None
        assert _schemas(empty_db_url) == set()
        nothing = run_cli("--reset", env=demo_env(**pg_env, OUTBOX_EMBEDDED_DIR="/nonexistent/x"))
        assert "nothing to remove" in nothing.stdout, nothing.stdout
    finally:
        drop(own_db)


def test_reset_in_a_database_you_named_removes_only_what_the_demo_made(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.mine (id int)")
        conn.execute(
            "INSERT INTO outbox.webhooks (name, url, event_types, secret)"
            " VALUES ('my hook', 'https://example.com/h', '{user.created}', 's')"
        )
    env = demo_env(OUTBOX_DATABASE_URL=db_url)
    res = run_cli("--no-traffic", "--duration", "1s", "--port", "0", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "named by --database-url / OUTBOX_DATABASE_URL" in res.stdout
    assert _schemas(db_url) == {"outbox", "demo"}

    gone = run_cli("--reset", env={**env, "OUTBOX_EMBEDDED_DIR": "/nonexistent/x"})
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "schema demo" in gone.stdout and "2 demo webhooks" in gone.stdout
    # schema outbox was there before the demo: it stays, with what is yours.
    assert _schemas(db_url) == {"outbox"}
    with psycopg.connect(db_url) as conn:
        hooks = [r[0] for r in conn.execute("SELECT name FROM outbox.webhooks")]
        rules = conn.execute("SELECT count(*) FROM outbox.capture_rules").fetchone()
        assert conn.execute("SELECT to_regclass('public.mine')").fetchone() == ("mine",)
    assert hooks == ["my hook"] and rules == (0,)
