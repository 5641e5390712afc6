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
import ipaddress
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import psycopg
from psycopg.rows import scalar_row
from pydantic import AliasChoices, BeforeValidator, Field

from outbox.api.config import Settings
from outbox.cli.main import SettingFlags, _say
from outbox.errors import ConfigError, OutboxError
from outbox.relay.config import Flag, Group, seconds_between
from outbox.sqlfiles import query

log = logging.getLogger("outbox.demo")

DEFAULT_RATE = 5.0
MAX_RATE = 10_000.0
# Short, so a failed delivery and the retry button show up within a minute.
DEMO_RETRY_SCHEDULE = "2s,10s"
DRAIN_TIMEOUT = 20.0
STATUS_EVERY = 10.0


def _rate(value: object) -> float:
    try:
        rate = float(str(value).strip()) if isinstance(value, str) else value
    except ValueError:
        raise ValueError("not a number") from None
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        raise ValueError("not a number")
    if not 0.01 <= rate <= MAX_RATE:
        raise ValueError(f"out of range 0.01..{MAX_RATE:g}")
    return float(rate)


_seconds = seconds_between(0.001, 365 * 86400.0)


def _duration(value: object) -> float | None:
    return None if value is None else _seconds(value)


class DemoSettings(Group):
    """What only the demo reads (the rest is ``outbox serve``'s settings)."""

    rate: Annotated[float, BeforeValidator(_rate)] = Field(
        DEFAULT_RATE, validation_alias="OUTBOX_DEMO_RATE", description="events per second"
    )
    duration: Annotated[float | None, BeforeValidator(_duration)] = Field(
        None, validation_alias="OUTBOX_DEMO_DURATION", description="stop after this long"
    )
    no_traffic: Flag = Field(False, validation_alias="OUTBOX_DEMO_NO_TRAFFIC")
    embedded: Flag = Field(False, validation_alias="OUTBOX_DEMO_EMBEDDED")
    data_dir: Path | None = Field(
        None, validation_alias=AliasChoices("OUTBOX_EMBEDDED_DIR"), description="embedded cluster"
    )


class DemoProcessSettings(Settings):
    """``outbox serve``'s settings plus the demo's own."""

    demo: DemoSettings


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
    settings: Settings
    # --database-url / OUTBOX_DATABASE_URL: the user pointed the demo at it.
    named_url: str | None = None
    # DATABASE_URL or PG* set: their server must answer (no silent fallback).
    ambient_set: bool = False
    reset: bool = False


# The demo's flags that set settings (declared below, beside register()).
FLAGS = SettingFlags(DemoProcessSettings.variables())


def options(args: argparse.Namespace) -> DemoOptions:
    """Flags override environment variables; a bad value names the flag or the variable."""
    try:
        loaded = DemoProcessSettings.load(**FLAGS.values(args))
    except ConfigError as exc:
        raise FLAGS.named(exc) from None
    demo = loaded.demo
    return DemoOptions(
        rate=demo.rate,
        duration=demo.duration,
        traffic=not demo.no_traffic,
        host=loaded.server.host,
        port=loaded.server.port,
        database_url=loaded.database.url,
        embedded=demo.embedded,
        data_dir=demo.data_dir.expanduser() if demo.data_dir else None,
        settings=Settings.model_validate(
            {name: getattr(loaded, name) for name in Settings.model_fields}
        ),
        named_url=loaded.database.named_url or None,
        # PG* are libpq's own variables: whether any is set, not what they say.
        ambient_set=bool(loaded.database.ambient_url) or _libpq_configured(os.environ),
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


def _link_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def run_demo(opts: DemoOptions, url: str) -> int:
    from outbox.cli.demo_domain import (
        FLAKY_WEBHOOK,
        MAIN_WEBHOOK,
        Receiver,
        Traffic,
        register_webhook,
        summary,
    )
    from outbox.cli.server import HttpServer, bind, running, settle_heap
    from outbox.db import connect
    from outbox.tokens import create_token, new_token

    settings = opts.settings
    token = settings.api.api_token or new_token()
    recv_sock = bind("127.0.0.1", 0)
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
    nets = settings.delivery.webhook_allow_networks
    changes: dict[str, Any] = {
        "database_url": url,
        "api_token": token,
        "webhook_allow_networks": nets if loopback in nets else (*nets, loopback),
    }
    if "retry_schedule" not in settings.delivery.model_fields_set:
        changes["retry_schedule"] = DEMO_RETRY_SCHEDULE  # OUTBOX_RETRY_SCHEDULE not set
    settings = settings.replace(**changes)
    try:
        app_sock = bind(opts.host, opts.port)
    except ConfigError as exc:
        recv_sock.close()
        raise FLAGS.named(exc) from None
    port = app_sock.getsockname()[1]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    recv = HttpServer(receiver.app, recv_sock, name="the webhook receiver")
    servers = [recv.server]

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for anything
            for server in servers:
                server.force_exit = True
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    traffic = Traffic(url, opts.rate) if opts.traffic else None
    app_task: asyncio.Task[None] | None = None
    failed: BaseException | None = None
    await recv.start()
    try:
        _say("starting the server (REST API, /ws, relay, webhook delivery) ...")
        async with running(settings, sock=app_sock) as app:
            servers.append(app.http.server)
            settle_heap()
            app_task = asyncio.create_task(app.wait(), name="the server")
            try:
                await _show_and_run(
                    opts,
                    url,
                    (token, read_token),
                    port,
                    receiver,
                    traffic,
                    app_task,
                    stop,
                    (main_id, start_id),
                )
            finally:
                app_task.cancel()
            if app.failures:
                failed = app.failures[0]
    finally:
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await recv.stop()
    events = traffic.stats.events if traffic else 0
    _say(f"done: {events} events written; webhook receiver: {summary(receiver.stats)}")
    if failed is not None:
        raise OutboxError(f"the server stopped: {failed}")
    return 0


async def _show_and_run(
    opts: DemoOptions,
    url: str,
    tokens: tuple[str, str],
    port: int,
    receiver: Any,
    traffic: Any,
    app_task: asyncio.Task[None],
    stop: asyncio.Event,
    drain: tuple[int, int],
) -> None:
    """Print where to look, then write traffic until it ends, Ctrl-C, or the server stops."""
    token, read_token = tokens
    main_id, start_id = drain
    page = f"http://{_link_host(opts.host)}:{port}/"
    _say("")
    _say(f"  admin live feed:  {page}#token={token}")
    _say(f"  read-only view:   {page}#token={read_token}  (scope read: sees, changes nothing)")
    _say(
        f"  API token:        {token}"
        + (
            "  (from OUTBOX_API_TOKEN)"
            if opts.settings.api.api_token
            else "  (made for this run only; set OUTBOX_API_TOKEN to keep one)"
        )
    )
    _say(f"  try:              curl -H 'Authorization: Bearer {token}' {page}webhooks")
    _say("")
    if traffic is not None:
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


# --- the command ------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from outbox.cli.demo_domain import EVENT_TYPES, setup
    from outbox.db import connect
    from outbox.migrate import current_version, migrate

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per webhook request is noise at demo rates; the receiver counts them.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    opts = options(args)  # a bad flag or OUTBOX_* value fails here, before anything starts
    if opts.reset:
        from outbox.cli import demo_db

        demo_db.reset(
            named_url=opts.named_url,
            ambient_url=opts.settings.database.ambient_url,
            data_dir=opts.data_dir,
            env=os.environ,
            say=_say,
        )
        return 0
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
        rc = asyncio.run(run_demo(opts, url))
        _say(demo_db.where_things_are(target))
        return rc
    finally:
        if cluster is not None:
            cluster.stop()


_EPILOG = """environment (flags override them):
  OUTBOX_DATABASE_URL     the database to use as named; without it the demo uses a
                          database of its own, outbox_demo (OUTBOX_DEMO_DATABASE
                          names it otherwise), on the server of
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


FLAGS.add(
    None,
    "--rate",
    "demo_rate",
    metavar="N",
    help=f"events per second to generate (default {DEFAULT_RATE:g})",
)
FLAGS.add(
    None,
    "--duration",
    "demo_duration",
    metavar="TIME",
    help="stop after this long, e.g. 30s or 5m (default: until Ctrl-C)",
)
FLAGS.add(
    None,
    "--no-traffic",
    "demo_no_traffic",
    action="store_true",
    help="write no traffic; only serve",
)
FLAGS.add(None, "--host", "host", metavar="HOST", help="listen address (default 127.0.0.1)")
FLAGS.add(
    None, "--port", "port", metavar="PORT", help="listen port, 0 = any free one (default 8080)"
)
FLAGS.add(
    None,
    "--database-url",
    "database_url",
    metavar="URL",
    help="the database to use, as named; default: a database of its own, "
    "outbox_demo, on the server of DATABASE_URL / PG* variables / the local server, "
    "else the embedded cluster",
)
FLAGS.add(
    None,
    "--embedded",
    "demo_embedded",
    action="store_true",
    help="always use the private embedded cluster",
)
FLAGS.add(
    None,
    "--data-dir",
    "embedded_dir",
    metavar="DIR",
    help="where the embedded cluster lives (default "
    "$XDG_DATA_HOME/outbox-relay/pg, as root /var/lib/outbox-relay/pg)",
)


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
        "--reset",
        action="store_true",
        default=False,
        help="remove what earlier demo runs created (database outbox_demo or the "
        "demo's schemas, webhooks and capture rules, the embedded cluster) and exit",
    )
    FLAGS.register(p)
    p.set_defaults(func=cmd_demo)
