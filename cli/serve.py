"""``outbox serve``: the REST API, ``/ws``, the relay and webhook delivery in
one process under uvicorn.

Flags mirror ``OUTBOX_*`` environment variables (a flag wins) and name them
in ``--help``. A bad flag is a usage error naming the flag; a bad variable
fails at start naming the variable. Before serving, the database must be
reachable and migrated, so the common mistakes end with one line, not a
traceback from inside the server.

SIGTERM or SIGINT stops gracefully: uvicorn stops accepting, closes
connections, then the app's lifespan stops the relay (it finishes its batch;
the dispatcher's cursor is stored with every batch) and the sender, and
closes every connection. The exit status is then 0. If a component dies, the
server stops and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from outbox.cli.main import _add_db, _say
from outbox.errors import ConfigError, OutboxError
from outbox.redact import redact

if TYPE_CHECKING:
    from outbox.relay.config import Settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class RedactSecrets(logging.Filter):
    """Keeps secrets out of the logs, at every level (outbox/redact.py says what).

    uvicorn logs the path with its query string (access lines, and WebSocket
    handshakes on ``uvicorn.error``), websockets logs handshake headers at
    debug level, and an exception's text may carry a URL with a password.
    Access lines are redacted argument by argument so the access formatter
    still gets its five fields; every other record is formatted, redacted
    and stored as its final message (with its traceback, redacted too).
    """

    def __init__(self, literals: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.literals = tuple(x for x in literals if x)

    def filter(self, record: logging.LogRecord) -> bool:
        lit = self.literals
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            record.args = tuple(redact(a, lit) if isinstance(a, str) else a for a in record.args)
        else:
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: log what there is
                message = f"{record.msg!r} {record.args!r}"
            record.msg, record.args = redact(message, lit), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, lit)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, lit)
        return True


def log_config(level: str, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """uvicorn's logging setup, plus the redaction filter and our own loggers.

    ``secrets`` are literal values to hide wherever they appear (the
    bootstrap API token). Libraries' own loggers (psycopg, httpx, ...) reach
    the same handler, filtered too, from warning up.
    """
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactSecrets, "literals": tuple(secrets)}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    config["loggers"]["outbox"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


# --- flags ---------------------------------------------------------------------


def _int_flag(lo: int, hi: int) -> Callable[[str], str]:
    """An argparse type: an integer in ``lo..hi``, kept as text for the environment."""

    def parse(raw: str) -> str:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {raw!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range {lo}..{hi}")
        return raw

    return parse


def _duration_flag(raw: str) -> str:
    """An argparse type: a positive duration (500ms, 5s, 5m, 2h, 7d), kept as text."""
    from outbox.relay.config import parse_duration

    try:
        value = parse_duration(raw)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"invalid duration {raw!r} (use e.g. 500ms, 5s, 5m, 2h, 7d)"
        ) from None
    if value.total_seconds() <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be more than zero")
    return raw


# flag dest -> the environment variable it overrides
_FLAG_ENV = {
    "host": "OUTBOX_HOST",
    "port": "OUTBOX_PORT",
    "database_url": "OUTBOX_DATABASE_URL",
    "poll_interval": "OUTBOX_POLL_INTERVAL",
    "batch_size": "OUTBOX_BATCH_SIZE",
    "retention": "OUTBOX_RETENTION",
    "log_level": "OUTBOX_LOG_LEVEL",
}

_EPILOG = """environment (a flag overrides its variable):
  OUTBOX_DATABASE_URL         database (then DATABASE_URL, then libpq PG* variables)
  OUTBOX_API_TOKEN            bootstrap API token (more: `outbox token create`)
  OUTBOX_HOST, OUTBOX_PORT    where to listen (127.0.0.1, 8080)
  OUTBOX_POLL_INTERVAL        poll timer behind LISTEN/NOTIFY (1s)
  OUTBOX_BATCH_SIZE           feed rows per read (1000)
  OUTBOX_NOTIFY               false: poll only, no LISTEN (true)
  OUTBOX_RETENTION            keep events and finished deliveries this long (7d)
  OUTBOX_RETRY_SCHEDULE       delays between webhook attempts (5s,5m,30m,2h,5h,10h,10h),
                              or exponential(FIRST,MAX,ATTEMPTS) with full jitter
  OUTBOX_RETRY_MAX_AGE        no webhook attempt later than this after its event (none)
  OUTBOX_WEBHOOK_TIMEOUT      seconds per webhook attempt (15)
  OUTBOX_DISABLE_AFTER        disable an endpoint failing this long (5d)
  OUTBOX_WEBHOOK_ALLOW_NETWORKS  CIDRs webhook URLs may resolve to although private
  OUTBOX_WEBHOOK_PROXY        send every webhook request through this HTTP(S) proxy (none)
  OUTBOX_WS_ALLOWED_ORIGINS   browser Origins allowed on /ws (same host)
  OUTBOX_HEADER_TIMEOUT       a request head must arrive within this (10s)
  OUTBOX_MAX_HEADER_BYTES     largest request head, 431 above it (32768)
  OUTBOX_MAX_CONNECTIONS      open connections, WebSockets included; 503 above (4096)
  OUTBOX_WS_HANDSHAKE_TIMEOUT  a /ws handshake must finish within this (10s)
  OUTBOX_STALL_AFTER          /health degraded after no progress this long, events waiting (30s)
  OUTBOX_LOG_LEVEL            critical, error, warning, info, debug (info)
  OUTBOX_LOOP                 asyncio: do not use uvloop even when installed (auto)
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER, OTEL_SERVICE_NAME, ...
                              export the relay's spans over OTLP (the standard
                              OpenTelemetry variables; needs outbox-relay[otel])

Several copies may run against one database: each serves its own clients,
one of them (the leader, elected by an advisory lock) creates deliveries.
SIGTERM/SIGINT stop gracefully."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the REST API, /ws, the relay and webhook delivery",
        description="Serve the REST API and /ws, stream the outbox to WebSocket clients "
        "and deliver webhooks, in one process.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", metavar="HOST", help="address to listen on (env OUTBOX_HOST)")
    p.add_argument(
        "--port",
        metavar="PORT",
        type=_int_flag(0, 65535),
        help="port to listen on (env OUTBOX_PORT)",
    )
    _add_db(p)
    p.add_argument(
        "--poll-interval",
        metavar="DURATION",
        type=_duration_flag,
        help="poll for new events this often even without a NOTIFY, "
        "e.g. 500ms, 1s (env OUTBOX_POLL_INTERVAL)",
    )
    p.add_argument(
        "--batch-size",
        metavar="N",
        type=_int_flag(1, 100_000),
        help="feed rows per read (env OUTBOX_BATCH_SIZE)",
    )
    p.add_argument(
        "--retention",
        metavar="DURATION",
        type=_duration_flag,
        help="keep events and finished deliveries this long, e.g. 7d (env OUTBOX_RETENTION)",
    )
    p.add_argument(
        "--no-notify",
        action="store_true",
        help="do not LISTEN; find new events by polling only (env OUTBOX_NOTIFY=false)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, help="(env OUTBOX_LOG_LEVEL, default info)")
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.add_argument(
        "--migrate",
        action="store_true",
        help="apply pending migrations before serving (as `outbox migrate`)",
    )
    p.set_defaults(func=cmd_serve)


def environment(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """The process environment with the flags given on the command line applied."""
    merged = dict(env)
    for dest, name in _FLAG_ENV.items():
        value = getattr(args, dest, None)
        if value is not None:
            merged[name] = str(value)
    if args.no_notify:
        merged["OUTBOX_NOTIFY"] = "false"
    return merged


def _check(settings: Settings) -> None:
    """What Settings accepts but serving cannot: a zero poll timer spins, a zero
    retention would delete every event at once."""
    if settings.poll_interval <= 0:
        raise ConfigError("OUTBOX_POLL_INTERVAL: must be more than zero")
    if settings.retention.total_seconds() <= 0:
        raise ConfigError("OUTBOX_RETENTION: must be more than zero")


def _log_level(env: Mapping[str, str]) -> str:
    level = (env.get("OUTBOX_LOG_LEVEL") or "info").strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"OUTBOX_LOG_LEVEL: invalid level {env.get('OUTBOX_LOG_LEVEL')!r} "
            f"(use one of {', '.join(LOG_LEVELS)})"
        )
    return level


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


def _secrets(settings: Settings) -> tuple[str, ...]:
    """Literal values no log line may contain."""
    from urllib.parse import urlsplit

    values = [settings.api_token or ""]
    with contextlib.suppress(ValueError):
        values.append(urlsplit(settings.database_url).password or "")
    return tuple(v for v in values if v)


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
    needed = settings.max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        logging.getLogger("outbox.serve").warning(
            "the descriptor limit (%d) is below OUTBOX_MAX_CONNECTIONS (%d) plus what the"
            " process needs for itself; lower OUTBOX_MAX_CONNECTIONS or raise `ulimit -n`",
            soft,
            settings.max_connections,
        )


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (uvicorn[standard] brings it).

    Most of a busy server's CPU goes to writing WebSocket frames and HTTP
    requests; uvloop's transports roughly halve that cost (BENCHMARKS.md, B3:
    from below to above 50,000 messages/s). psycopg's async connections work
    on it unchanged. OUTBOX_LOOP=asyncio forces the standard loop.
    """
    if os.environ.get("OUTBOX_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from outbox.api.app import GRACE, create_app
    from outbox.api.ws import uvicorn_ws_options
    from outbox.relay.config import Settings
    from outbox.relay.tracing import configure_tracing

    env = environment(args, os.environ)
    settings = Settings.from_env(env)
    _check(settings)
    level = _log_level(env)
    _preflight(settings.database_url, args.migrate)
    raise_fd_limit(settings)

    failures: list[BaseException] = []
    servers: list[uvicorn.Server] = []

    def on_fatal(exc: BaseException) -> None:
        failures.append(exc)
        for server in servers:
            server.should_exit = True

    config = uvicorn.Config(
        create_app(settings, on_fatal=on_fatal),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=log_config(level, _secrets(settings)),
        log_level=level,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=int(GRACE),
        server_header=False,
        **uvicorn_ws_options(settings),
    )
    # OTEL_* variables: export the relay's spans (nothing unless asked for).
    # After uvicorn.Config, which set the logging up: its line is logged.
    stop_tracing = configure_tracing()
    server = uvicorn.Server(config)
    servers.append(server)
    # uvicorn re-raises a caught SIGTERM/SIGINT once it has shut down, to get
    # the default "killed by signal" exit. The shutdown was graceful, so make
    # that re-raise a no-op and exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        run_loop(server.serve())
    finally:
        if stop_tracing is not None:
            stop_tracing()  # exports the spans still queued
    if failures:
        raise OutboxError(f"stopped because a component failed: {failures[0]!r}")
    if not server.started:
        raise OutboxError(
            f"could not start serving on {settings.host}:{settings.port} (see the log above)"
        )
    return 0
