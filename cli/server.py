"""The one uvicorn setup: ``outbox serve``, ``outbox demo`` and the test server.

    bind(host, port)        the listening socket, before anything else starts:
                            a host that does not resolve or a port in use is a
                            ConfigError naming OUTBOX_HOST / OUTBOX_PORT
    HttpServer(app, sock)   uvicorn on that socket: our logging (secrets
                            redacted), the protocol options (/ws, request
                            heads, the connection ceiling), no signal
                            handling of its own (the caller decides)
    running(settings)       the whole process: the service (relay/service.py:
                            relay, hub, delivery, sinks) started first, then
                            the app under one HttpServer
    settle_heap()           once a process entry point has started: what
                            startup left alive leaves the garbage
                            collector's full passes (gc.freeze)

Start: the socket is bound, the service starts (the feed's head is read,
so ``/ws`` has its seam before the first request), then uvicorn serves.

Shutdown, in this order, each step bounded, so the whole is bounded by their
sum: uvicorn stops accepting and gives open requests and WebSockets
:data:`HTTP_GRACE` seconds (then cancels them, +5 s at most); then the
service gets its grace (``Service.stop``: one webhook attempt plus
``GRACE_MARGIN``) and what is left is cancelled (+``CANCEL_TIMEOUT``). If a
part of the service fails, or uvicorn ends by itself, the same shutdown runs
and :attr:`Running.failures` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import socket
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, Literal

from outbox.errors import ConfigError, OutboxError
from outbox.redact import redact

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from outbox.api.config import Settings
    from outbox.relay.service import Service

log = logging.getLogger("outbox.server")

# Seconds open HTTP requests and WebSockets get to finish once stopping.
HTTP_GRACE = 5.0
# Seconds uvicorn gets to start serving (the app's startup included).
STARTUP_TIMEOUT = 60.0


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


def log_config(level: str, *, outbox_logs: bool, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """uvicorn's logging setup with the redaction filter.

    With ``outbox_logs`` (``outbox serve``), our own loggers go to the same
    handler at ``level``, and libraries' loggers (psycopg, httpx, ...) reach
    it too, filtered, from warning up. ``secrets`` are literal values to hide
    wherever they appear (the bootstrap API token, the database password).
    """
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactSecrets, "literals": tuple(secrets)}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    if outbox_logs:
        config["loggers"]["outbox"] = {
            "handlers": ["default"],
            "level": level.upper(),
            "propagate": False,
        }
        config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """Literal values no log line may contain."""
    from urllib.parse import urlsplit

    values = [settings.api.api_token or ""]
    with contextlib.suppress(ValueError):
        values.append(urlsplit(settings.database.url).password or "")
    return tuple(v for v in values if v)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``; errors name the setting at fault."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot resolve the address ({exc.strerror})", field="host", value=host
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {_hostport(host, port)}: {exc.strerror}", field="port", value=port
        ) from None
    return sock


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpServer:
    """uvicorn serving ``app`` on an already bound socket."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        name: str = "http",
        options: Settings | None = None,
        log_level: str = "warning",
        outbox_logs: bool = False,
        secrets: tuple[str, ...] = (),
        access_log: bool = False,
        lifespan: Literal["on", "off"] = "off",
        grace: float = HTTP_GRACE,
    ) -> None:
        import uvicorn

        from outbox.api.ws import uvicorn_ws_options

        class _Server(uvicorn.Server):
            # Signals are the caller's: `outbox serve` stops on SIGTERM in
            # its own order, the demo runs two servers, tests none.
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        self.name = name
        self.sock = sock
        self.grace = grace
        host, port = sock.getsockname()[:2]
        self.host, self.port = str(host), int(port)
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            log_config=log_config(log_level, outbox_logs=outbox_logs, secrets=secrets),
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=max(1, int(grace)),
            server_header=False,
            **(uvicorn_ws_options(options) if options is not None else {}),
        )
        self.server = _Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve; return once uvicorn accepts connections (within STARTUP_TIMEOUT)."""
        timeout = STARTUP_TIMEOUT
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name=self.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.server.started:
            if self.task.done():
                exc = None if self.task.cancelled() else self.task.exception()
                raise OutboxError(
                    f"{self.name} did not start" + (f": {exc}" if exc else " (see the log above)")
                )
            if loop.time() > deadline:
                await self.stop()
                raise OutboxError(f"{self.name} did not start within {timeout:g} s")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting; open connections get the grace period, then are cancelled."""
        self.server.should_exit = True
        task = self.task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.grace + 5.0)
        except TimeoutError:
            self.server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:  # noqa: S110 - reported by whoever awaits the task
            pass


class Running:
    """A started process: its service, its app, its HTTP server, and how it ended."""

    def __init__(self, app: Starlette, http: HttpServer, service: Service) -> None:
        self.app = app
        self.http = http
        self.service = service
        self.port = http.port
        host = "127.0.0.1" if http.host in ("0.0.0.0", "", "::") else http.host
        host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{host}:{self.port}"
        self.ws_url = f"ws://{host}:{self.port}/ws"

    @property
    def failures(self) -> list[BaseException]:
        """Why the process stopped by itself (a part of the service failed)."""
        return [] if self.service.failure is None else [self.service.failure]

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Until ``stop`` is set, a part of the service fails, or the server ends by itself."""
        assert self.http.task is not None
        waits: set[asyncio.Future[Any]] = {
            self.http.task,
            asyncio.ensure_future(self.service.wait()),
        }
        if stop is not None:
            waits.add(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits - {self.http.task}:
                w.cancel()


def settle_heap() -> None:
    """Take what startup left alive out of the garbage collector's full passes.

    For a process entry point (``outbox serve``, ``outbox demo``), once the
    service and the server have started. A full (generation 2) collection
    walks every tracked object; after startup that is ~110,000 of them
    (modules, classes, functions, the app), nearly all alive for the
    process's life, and under webhook load a full pass came every ~0.6 s and
    stopped the event loop for 60-80 ms: no request sent, no frame written
    (B4, BENCHMARKS.md "Session 6"). ``gc.freeze()`` moves them to the
    permanent generation, which collections skip; everything allocated later
    is collected as before. The collect first keeps startup's garbage out of
    it. Not for the test server: a test process's heap is the tests'.
    """
    gc.collect()
    gc.freeze()


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    sock: socket.socket | None = None,
    access_log: bool = False,
    outbox_logs: bool = False,
    log_level: str | None = None,
) -> AsyncIterator[Running]:
    """Bind (unless ``sock`` is given), start the service, serve; stop both on exit."""
    from outbox.api.app import create_app
    from outbox.relay.service import Service

    if sock is None:
        sock = bind(settings.server.host, settings.server.port)
    service = Service(settings)
    app = create_app(settings, service)
    http = HttpServer(
        app,
        sock,
        name="the server",
        options=settings,
        log_level=log_level or settings.server.log_level,
        outbox_logs=outbox_logs,
        secrets=secrets_of(settings),
        access_log=access_log,
    )
    try:
        await service.start()
        await http.start()
        yield Running(app, http, service)
    finally:
        await http.stop()
        await service.stop()
        sock.close()
