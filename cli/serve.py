"""``outbox serve``: the REST API, ``/ws``, the relay and webhook delivery in
one process under uvicorn (outbox.cli.server).

Flags mirror ``OUTBOX_*`` environment variables (a flag wins: flags are the
settings' constructor arguments) and name them in ``--help``. Before
anything starts, every setting is validated (a bad flag is a usage error
naming the flag, exit status 2; a bad variable names the variable, exit
status 1), the listening socket is bound (a host that does not resolve or a
port in use is named), and the database must be reachable and migrated: the
common mistakes end with one line, not a traceback from inside the server.

SIGTERM or SIGINT stops gracefully (see outbox.cli.server for the order and
the grace periods); the exit status is then 0. If a component dies, the
server stops and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from outbox.api.config import LOG_LEVELS, Settings
from outbox.cli.main import SettingFlags, _say
from outbox.errors import ConfigError, OutboxError


def _environment_help() -> str:
    """The epilog: every variable, its default and what it means, from the settings."""
    lines = ["environment (a flag overrides its variable):"]
    for group in Settings.groups().values():
        for field, var in group.variables().items():
            info = group.model_fields[field]
            default = info.get_default(call_default_factory=True)
            text = info.description or ""
            shown = _show_default(default)
            lines.append(f"  {var:31} {text}{f' ({shown})' if shown else ''}")
    lines += [
        "",
        "Several copies may run against one database: each serves its own clients,",
        "one of them (the leader, elected by an advisory lock) creates deliveries.",
        "SIGTERM/SIGINT stop gracefully.",
    ]
    return "\n".join(lines)


def _show_default(value: Any) -> str:
    from outbox.relay.config import format_duration

    if value is None or value == () or value == "":
        return ""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return ",".join(format_duration(v) if isinstance(v, timedelta) else str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# serve's flags that set settings (the others: --no-access-log, --migrate).
FLAGS = SettingFlags(Settings.variables())
FLAGS.add(None, "--host", "host", metavar="HOST", help="address to listen on")
FLAGS.add(None, "--port", "port", metavar="PORT", help="port to listen on, 0 = any free one")
FLAGS.add(
    None,
    "--database-url",
    "database_url",
    metavar="URL",
    help="libpq URL or conninfo (then DATABASE_URL, then libpq PG* variables)",
)
FLAGS.add(
    None,
    "--poll-interval",
    "poll_interval",
    metavar="DURATION",
    help="poll for new events this often even without a NOTIFY, e.g. 500ms, 1s",
)
FLAGS.add(None, "--batch-size", "batch_size", metavar="N", help="feed rows per read")
FLAGS.add(
    None,
    "--retention",
    "retention",
    metavar="DURATION",
    help="keep events and finished deliveries this long, e.g. 7d",
)
FLAGS.add(
    None,
    "--no-notify",
    "notify",
    action="store_const",
    const=False,
    help="do not LISTEN; find new events by polling only",
)
FLAGS.add(
    None,
    "--webhook-timeout",
    "webhook_timeout",
    metavar="DURATION",
    help="time per webhook attempt, e.g. 15s",
)
FLAGS.add(
    None,
    "--lease",
    "lease",
    metavar="DURATION",
    help="how long a claimed delivery is reserved for this process; more than the webhook timeout",
)
FLAGS.add(None, "--log-level", "log_level", metavar="LEVEL", help=f"one of {', '.join(LOG_LEVELS)}")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the REST API, /ws, the relay and webhook delivery",
        description="Serve the REST API and /ws, stream the outbox to WebSocket clients "
        "and deliver webhooks, in one process.",
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.add_argument(
        "--migrate",
        action="store_true",
        help="apply pending migrations before serving (as `outbox migrate`)",
    )
    FLAGS.register(p)
    p.set_defaults(func=cmd_serve)


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings: the environment, with the flags given on the command line applied."""
    try:
        return Settings.load(**FLAGS.values(args))
    except ConfigError as exc:
        raise FLAGS.named(exc, usage=True) from None


def _preflight(url: str, migrate_first: bool) -> None:
    """Fail with one clear line when the database is unreachable or not migrated."""
    from outbox.db import connect
    from outbox.migrate import current_version, migrate
    from outbox.sqlfiles import migrations

    with connect(url) as conn:
        if migrate_first:
            migrate(conn, log=_say)
        have, need = current_version(conn), migrations()[-1][0]
    if have == 0:
        raise OutboxError(
            "the outbox schema is missing: run `outbox migrate` first (or `outbox serve --migrate`)"
        )
    if have < need:
        raise OutboxError(
            f"the outbox schema is at version {have}, this release needs "
            f"{need}: run `outbox migrate` first (or `outbox serve --migrate`)"
        )


def raise_fd_limit(settings: Settings) -> None:
    """Let the process hold ``OUTBOX_MAX_CONNECTIONS`` sockets and its own.

    The soft descriptor limit is often 1,024; raise it to the hard limit. If
    even that cannot hold the connection ceiling plus the database pools,
    say so: past it, accept() fails and nothing, not even ``/health``, is
    reachable until connections close.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    ceiling = settings.server.max_connections
    if soft != resource.RLIM_INFINITY and soft < ceiling + 256:
        logging.getLogger("outbox.serve").warning(
            "the descriptor limit (%d) is below OUTBOX_MAX_CONNECTIONS (%d) plus what the"
            " process needs for itself; lower OUTBOX_MAX_CONNECTIONS or raise `ulimit -n`",
            soft,
            ceiling,
        )


def run_loop(main: Coroutine[Any, Any, None], loop: str = "auto") -> None:
    """Run on uvloop when it is installed (uvicorn[standard] brings it).

    Most of a busy server's CPU goes to writing WebSocket frames and HTTP
    requests; uvloop's transports roughly halve that cost (BENCHMARKS.md, B3).
    psycopg's async connections work on it unchanged. ``loop="asyncio"``
    (OUTBOX_LOOP) forces the standard loop.
    """
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def serve(settings: Settings, sock: socket.socket, *, access_log: bool) -> None:
    """Run until SIGTERM/SIGINT (a second one stops at once) or a component fails."""
    from outbox.cli.server import running, settle_heap
    from outbox.relay.tracing import configure_tracing

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_tracing = None
    try:
        async with running(settings, sock=sock, access_log=access_log, outbox_logs=True) as srv:
            # OTEL_* variables: export the relay's spans (nothing unless asked
            # for). After the server set the logging up: its line is logged.
            stop_tracing = configure_tracing()
            settle_heap()

            def on_signal() -> None:
                if stop.is_set():
                    srv.http.server.force_exit = True
                stop.set()

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal)
            await srv.wait(stop)
    finally:
        if stop_tracing is not None:
            stop_tracing()  # exports the spans still queued
    if srv.failures:
        raise OutboxError(f"stopped because a component failed: {srv.failures[0]!r}")


def cmd_serve(args: argparse.Namespace) -> int:
    from outbox.cli.server import bind

    settings = load_settings(args)
    try:
        sock = bind(settings.server.host, settings.server.port)
    except ConfigError as exc:
        raise FLAGS.named(exc) from None
    try:
        _preflight(settings.database.url, args.migrate)
        raise_fd_limit(settings)
        run_loop(serve(settings, sock, access_log=not args.no_access_log), settings.server.loop)
    finally:
        sock.close()
    return 0
