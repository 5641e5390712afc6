"""``outbox demo``: the seed's domain, live traffic, webhooks and the admin page.

Steps, each announced as it happens: find a database (the one named for
it, else a database of its own, ``outbox_demo``, on the local server, else
the embedded cluster: cli/demo_db.py), migrate, create schema
``demo`` with its capture rules, start the loopback webhook receiver and
point two demo webhooks at it, start the full app (as ``outbox serve``
does), print the page URL and the token, then write traffic until Ctrl-C
or ``--duration``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import scalar_row

from outbox.cli.main import _say
from outbox.errors import ConfigError, OutboxError
from outbox.sqlfiles import query

if TYPE_CHECKING:
    from outbox.relay.config import Settings

log = logging.getLogger("outbox.demo")

DEFAULT_RATE = 5.0
MAX_RATE = 10_000.0
# Short, so a failed delivery and the retry button show up within a minute.
DEMO_RETRY_SCHEDULE = "2s,10s"
DRAIN_TIMEOUT = 20.0
STATUS_EVERY = 10.0


@dataclass(frozen=True)
class DemoOptions:
    rate: float
    duration: float | None
    traffic: bool
    host: str
    port: int
    database_url: str
    embedded: bool
    data_dir: Path | None
    # --database-url / OUTBOX_DATABASE_URL: the user pointed the demo at it.
    named_url: str | None = None
    # DATABASE_URL or PG* set: their server must answer (no silent fallback).
    ambient_set: bool = False
    reset: bool = False


_TRUE = ("1", "true", "yes", "on")


def _source(
    flag_value: str | None, env: Mapping[str, str], env_name: str, flag: str
) -> tuple[Mapping[str, str], str]:
    """Where a setting comes from: the flag if given, else the variable (named in errors)."""
    if flag_value is not None:
        return {flag: flag_value}, flag
    return env, env_name


def options(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> DemoOptions:
    """Flags override environment variables; a bad value names the flag or the variable."""
    from outbox.relay.config import _float, _int, database_url, parse_duration

    env = os.environ if env is None else env
    rate = _float(
        *_source(args.rate, env, "OUTBOX_DEMO_RATE", "--rate"), DEFAULT_RATE, 0.01, MAX_RATE
    )
    port = _int(*_source(args.port, env, "OUTBOX_PORT", "--port"), 8080, 0, 65535)
    duration = None
    src, culprit = _source(args.duration, env, "OUTBOX_DEMO_DURATION", "--duration")
    raw = src.get(culprit) or None
    if raw is not None:
        duration = parse_duration(raw, name=culprit).total_seconds()
        if duration <= 0:
            raise ConfigError(f"{culprit}: must be above zero, got {raw!r}")
    data_dir = args.data_dir or env.get("OUTBOX_EMBEDDED_DIR") or None
    return DemoOptions(
        rate=rate,
        duration=duration,
        traffic=not (args.no_traffic or env.get("OUTBOX_DEMO_NO_TRAFFIC", "").lower() in _TRUE),
        host=args.host or env.get("OUTBOX_HOST") or "127.0.0.1",
        port=port,
        database_url=args.database_url or database_url(env),
        embedded=args.embedded or env.get("OUTBOX_DEMO_EMBEDDED", "").lower() in _TRUE,
        data_dir=Path(data_dir).expanduser() if data_dir else None,
        named_url=args.database_url or env.get("OUTBOX_DATABASE_URL") or None,
        ambient_set=bool(env.get("DATABASE_URL")) or _libpq_configured(env),
        reset=bool(getattr(args, "reset", False)),
    )


# --- the database ----------------------------------------------------------------------


def _libpq_configured(env: Mapping[str, str]) -> bool:
    return any(env.get(k) for k in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"))


def resolve_database(opts: DemoOptions, env: Mapping[str, str] | None = None) -> Any:
    """The demo's database (a :class:`outbox.cli.demo_db.Target`); see cli/demo_db.py."""
    from outbox.cli import demo_db

    env = os.environ if env is None else env
    return demo_db.choose(
        named_url=opts.named_url,
        ambient_url=env.get("DATABASE_URL") or "",
        ambient_set=opts.ambient_set,
        embedded=opts.embedded,
        data_dir=opts.data_dir,
        env=env,
        say=_say,
    )


# --- serving ---------------------------------------------------------------------------


def _uvicorn_server(app: Any, sock: socket.socket, **config: Any) -> Any:
    """A uvicorn server that leaves signal handling to the demo.

    uvicorn installs its own SIGINT handler per server; the demo runs two
    servers and a traffic task and stops them in its own order.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    host, port = sock.getsockname()[:2]
    cfg = uvicorn.Config(
        app, host=host, port=port, lifespan="on", access_log=False, log_level="warning", **config
    )
    return _Server(cfg)


def _bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


async def _start(server: Any, sock: socket.socket, name: str) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve(sockets=[sock]), name=name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not server.started:
        if task.done():
            exc = task.exception()
            raise OutboxError(
                f"{name} did not start" + (f": {exc}" if exc else " (see the log above)")
            )
        if loop.time() > deadline:
            server.should_exit = True
            raise OutboxError(f"{name} did not start within 60 s")
        await asyncio.sleep(0.05)
    return task


def _link_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def run_demo(opts: DemoOptions, url: str, settings: Settings) -> int:
    from outbox.api.app import create_app
    from outbox.api.ws import uvicorn_ws_options
    from outbox.cli.demo_domain import (
        FLAKY_WEBHOOK,
        MAIN_WEBHOOK,
        Receiver,
        Traffic,
        register_webhook,
        summary,
    )
    from outbox.db import connect
    from outbox.tokens import create_token, new_token

    env = os.environ
    token = settings.api_token or new_token()
    recv_sock = _bind("127.0.0.1", 0, "webhook receiver")
    recv_port = recv_sock.getsockname()[1]
    base = f"http://127.0.0.1:{recv_port}/hooks"
    with connect(url) as conn:
        main_id, main_secret = register_webhook(
            conn,
            MAIN_WEBHOOK,
            f"{base}/main",
            ["*"],
            "outbox demo: in-process receiver that verifies both signatures",
        )
        _, flaky_secret = register_webhook(
            conn,
            FLAKY_WEBHOOK,
            f"{base}/flaky",
            ["ticket.*"],
            "outbox demo: refuses 30% of requests, to show retries and failures",
        )
        with conn.cursor(row_factory=scalar_row) as cur:
            start_id = int(cur.execute(query("last_event_id", "demo.sql")).fetchone() or 0)
        conn.commit()
        # A link to hand to someone who should watch, not change anything.
        read_token = create_token(conn, f"demo-read-{secrets.token_hex(4)}", scope="read")
    receiver = Receiver({"main": main_secret, "flaky": flaky_secret})
    _say(f"webhook receiver: {base}/main (all events) and {base}/flaky (ticket.*)")

    # The demo must be allowed to deliver to its own loopback receiver.
    loopback = ipaddress.ip_network("127.0.0.1/32")
    nets = settings.webhook_allow_networks
    settings = dataclasses.replace(
        settings,
        database_url=url,
        host=opts.host,
        port=opts.port,
        api_token=token,
        webhook_allow_networks=nets if loopback in nets else (*nets, loopback),
    )
    if not env.get("OUTBOX_RETRY_SCHEDULE"):
        from outbox.relay.config import parse_schedule

        settings = dataclasses.replace(settings, retry_schedule=parse_schedule(DEMO_RETRY_SCHEDULE))
    app_sock = _bind(opts.host, opts.port, "--port (env OUTBOX_PORT)")
    port = app_sock.getsockname()[1]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    recv_server = _uvicorn_server(receiver.app, recv_sock)
    app_server = _uvicorn_server(create_app(settings), app_sock, **uvicorn_ws_options(settings))

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for anything
            app_server.force_exit = recv_server.force_exit = True
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    recv_task = await _start(recv_server, recv_sock, "the webhook receiver")
    app_task: asyncio.Task[None] | None = None
    traffic: Traffic | None = None
    try:
        _say("starting the server (REST API, /ws, relay, webhook delivery) ...")
        app_task = await _start(app_server, app_sock, "the server")
        page = f"http://{_link_host(opts.host)}:{port}/"
        _say("")
        _say(f"  admin live feed:  {page}#token={token}")
        _say(f"  read-only view:   {page}#token={read_token}  (scope read: sees, changes nothing)")
        _say(
            f"  API token:        {token}"
            + (
                "  (from OUTBOX_API_TOKEN)"
                if env.get("OUTBOX_API_TOKEN")
                else "  (made for this run only; set OUTBOX_API_TOKEN to keep one)"
            )
        )
        _say(f"  try:              curl -H 'Authorization: Bearer {token}' {page}webhooks")
        _say("")
        if opts.traffic:
            traffic = Traffic(url, opts.rate)
            until = f"for {opts.duration:g} s" if opts.duration else "until Ctrl-C"
            _say(f"traffic: about {opts.rate:g} events/s {until}")
            traffic_task: asyncio.Task[Any] = asyncio.create_task(
                traffic.run(stop, opts.duration), name="traffic"
            )
        else:
            _say(
                "traffic: off (--no-traffic); write to the demo.* tables yourself"
                + ("" if opts.duration else ", Ctrl-C to stop")
            )
            traffic_task = asyncio.create_task(_idle(stop, opts.duration), name="traffic")
        await _report_until(traffic_task, app_task, traffic, receiver, stop)
        if opts.duration and not stop.is_set() and not app_task.done():
            await _drain(url, main_id, start_id, stop)
    finally:
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        app_server.should_exit = True
        if app_task is not None:
            await _finish(app_task, 30)
        recv_server.should_exit = True
        await _finish(recv_task, 10)
    events = traffic.stats.events if traffic else 0
    _say(f"done: {events} events written; webhook receiver: {summary(receiver.stats)}")
    if (
        app_task is not None
        and app_task.done()
        and not app_task.cancelled()
        and app_task.exception() is not None
    ):
        raise OutboxError(f"the server stopped: {app_task.exception()}")
    return 0


async def _idle(stop: asyncio.Event, duration: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=duration)


async def _report_until(
    traffic_task: asyncio.Task[Any],
    app_task: asyncio.Task[None],
    traffic: Any,
    receiver: Any,
    stop: asyncio.Event,
) -> None:
    """Print a status line every few seconds until traffic ends, Ctrl-C, or the server dies."""
    from outbox.cli.demo_domain import summary

    started = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait(
                {traffic_task, app_task}, timeout=STATUS_EVERY, return_when=asyncio.FIRST_COMPLETED
            )
            if app_task in done:
                stop.set()
                _say("the server stopped; shutting down")
                break
            if traffic_task in done:
                break
            if traffic is not None:
                s = traffic.stats
                rate = s.events / max(time.monotonic() - started, 1e-9)
                errors = f", {s.errors} errors" if s.errors else ""
                _say(
                    f"traffic: {s.events} events ({rate:.1f}/s{errors}); "
                    f"receiver {summary(receiver.stats)}"
                )
    finally:
        if not traffic_task.done():
            stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic_task


async def _drain(url: str, webhook_id: int, start_id: int, stop: asyncio.Event) -> None:
    """After a bounded run, wait (bounded) until the receiver has every event of this run."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT
    missing = -1
    params = {"start_id": start_id, "webhook_id": webhook_id}
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        conn.cursor(row_factory=scalar_row) as cur,
    ):
        while not stop.is_set():
            await cur.execute(query("undelivered_count", "demo.sql"), params)
            missing = int(await cur.fetchone() or 0)
            if missing == 0:
                _say("every event of this run was delivered to the demo receiver")
                return
            if loop.time() > deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)
    if missing > 0:
        _say(
            f"{missing} events of this run not yet delivered to the demo receiver "
            "(they stay queued and are delivered on the next run)"
        )


async def _finish(task: asyncio.Task[None], grace: float) -> None:
    """Wait for a server task to end by itself; cancel it after ``grace`` seconds."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=grace)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    except Exception:  # noqa: S110 - reported by the caller from task.exception()
        pass


# --- the command ------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from outbox.cli.demo_domain import EVENT_TYPES, setup
    from outbox.db import connect
    from outbox.migrate import current_version, migrate
    from outbox.relay.config import Settings

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per webhook request is noise at demo rates; the receiver counts them.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    opts = options(args)
    if opts.reset:
        from outbox.cli import demo_db

        demo_db.reset(
            named_url=opts.named_url,
            ambient_url=os.environ.get("DATABASE_URL") or "",
            data_dir=opts.data_dir,
            env=os.environ,
            say=_say,
        )
        return 0
    settings = Settings.from_env()  # a bad OUTBOX_* value fails here, before anything starts
    from outbox.cli import demo_db

    target = resolve_database(opts)
    url, cluster = target.url, target.cluster
    try:
        with connect(url) as conn:
            fresh = not demo_db.outbox_schema_exists(conn)
            applied = migrate(conn)
            if fresh:
                demo_db.mark_outbox_schema(conn)
            _say(
                f"schema outbox at version {current_version(conn)}"
                + (f" (applied {len(applied)})" if applied else "")
            )
            rules = setup(conn)
        _say(
            f"schema demo ready: users, transactions, tickets, ticket_messages; "
            f"{len(rules)} capture rules -> {', '.join(EVENT_TYPES)}"
        )
        rc = asyncio.run(run_demo(opts, url, settings))
        _say(demo_db.where_things_are(target))
        return rc
    finally:
        if cluster is not None:
            cluster.stop()


_EPILOG = """environment (flags override them):
  OUTBOX_DATABASE_URL     the database to use as named; without it the demo uses a
                          database of its own, outbox_demo, on the server of
                          DATABASE_URL / PG* / the local server (your default
                          database is not touched), and when no server answers a
                          private cluster (the embedded default; with no PostgreSQL
                          installed: pip install 'outbox-relay[embedded-pg]')
  OUTBOX_API_TOKEN        token for the page and the API (else one is made for this run)
  OUTBOX_DEMO_RATE        --rate            OUTBOX_DEMO_DURATION  --duration
  OUTBOX_DEMO_NO_TRAFFIC  --no-traffic      OUTBOX_DEMO_EMBEDDED  --embedded
  OUTBOX_HOST / OUTBOX_PORT  --host / --port
  OUTBOX_EMBEDDED_DIR     --data-dir        OUTBOX_PG_BINDIR      where initdb/pg_ctl are
  OUTBOX_RETRY_SCHEDULE   webhook retries (the demo defaults to 2s,10s)
  and every other OUTBOX_* variable of `outbox serve`

examples:
  outbox demo --rate 50 --port 8080
  outbox demo --reset      remove what the demo created (its database or schemas,
                           the embedded cluster)"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the seed's bot domain with live traffic, webhooks and the admin live feed page",
        description="Create schema demo (users, transactions, tickets, ticket messages), track "
        "it into the six seed events, register two webhooks to a built-in receiver, start the "
        "server and the admin page, and write realistic traffic. Prints the page URL and a "
        "token.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--rate",
        metavar="N",
        help=f"events per second to generate (env OUTBOX_DEMO_RATE; default {DEFAULT_RATE:g})",
    )
    p.add_argument(
        "--duration",
        metavar="TIME",
        help="stop after this long, e.g. 30s or 5m (env OUTBOX_DEMO_DURATION; "
        "default: until Ctrl-C)",
    )
    p.add_argument(
        "--no-traffic",
        action="store_true",
        default=False,
        help="write no traffic; only serve (env OUTBOX_DEMO_NO_TRAFFIC)",
    )
    p.add_argument(
        "--host", metavar="HOST", help="listen address (env OUTBOX_HOST; default 127.0.0.1)"
    )
    p.add_argument(
        "--port",
        metavar="PORT",
        help="listen port, 0 = any free one (env OUTBOX_PORT; default 8080)",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="the database to use, as named (env OUTBOX_DATABASE_URL); default: a "
        "database of its own, outbox_demo, on the server of DATABASE_URL / PG* "
        "variables / the local server, else the embedded cluster",
    )
    p.add_argument(
        "--embedded",
        action="store_true",
        default=False,
        help="always use the private embedded cluster (env OUTBOX_DEMO_EMBEDDED)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the embedded cluster lives (env OUTBOX_EMBEDDED_DIR; default "
        "$XDG_DATA_HOME/outbox-relay/pg, as root /var/lib/outbox-relay/pg)",
    )
    p.add_argument(
        "--reset",
        action="store_true",
        default=False,
        help="remove what earlier demo runs created (database outbox_demo or the "
        "demo's schemas, webhooks and capture rules, the embedded cluster) and exit",
    )
    p.set_defaults(func=cmd_demo)
