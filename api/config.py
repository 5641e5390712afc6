"""The process's settings: the relay's groups (outbox.relay.config) plus the
API's and the HTTP server's.

    Settings (RelaySettings +)
      api     ApiSettings      OUTBOX_API_TOKEN, OUTBOX_WS_ALLOWED_ORIGINS, ...
      server  ServerSettings   OUTBOX_HOST, OUTBOX_PORT, OUTBOX_LOG_LEVEL, OUTBOX_LOOP

``Settings.load(**flags)`` reads the environment once, flags winning, and
raises :class:`~outbox.errors.ConfigError` naming the first bad setting.
Whether the host resolves and the port is free is checked where the server
binds its socket, before anything else starts (outbox.cli.server).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import NoDecode

from outbox.relay.config import (
    Duration,
    Group,
    RelaySettings,
    comma_list,
    int_between,
    positive_seconds,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def _origins(value: object) -> tuple[str, ...]:
    return tuple(str(o).strip().rstrip("/") for o in comma_list(value) if str(o).strip())


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class ApiSettings(Group):
    """The REST API and the ``/ws`` handshake."""

    api_token: str | None = Field(
        None, repr=False, description="bootstrap API token (more: `outbox token create`)"
    )
    ws_allowed_origins: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_origins)] = Field(
        (), description="browser Origins allowed on /ws (none given: same host)"
    )
    max_request_body: Annotated[int, BeforeValidator(int_between(1024, 1 << 30))] = Field(
        1024 * 1024, description="largest API request body (413 above it)"
    )
    rotation_overlap: Duration = Field(
        timedelta(hours=24), description="how long a rotated-out secret still signs"
    )


class ServerSettings(Group):
    """Where ``outbox serve`` listens, and how it logs."""

    host: str = Field("127.0.0.1", min_length=1, description="where to listen")
    port: Annotated[int, BeforeValidator(int_between(0, 65535))] = Field(
        8080, description="port to listen on, 0 = any free one"
    )
    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = Field(
        "info", description="critical, error, warning, info, debug"
    )
    loop: Annotated[Literal["auto", "asyncio"], BeforeValidator(_lower)] = Field(
        "auto", description="asyncio: do not use uvloop even when installed"
    )
    # What one client connection may cost (api/http_protocol.py, api/ws.py).
    header_timeout: Annotated[float, BeforeValidator(positive_seconds)] = Field(
        10.0, description="a request head must arrive within this"
    )
    max_header_bytes: Annotated[int, BeforeValidator(int_between(1024, 1 << 20))] = Field(
        32 * 1024, description="largest request head (431 above it)"
    )
    max_connections: Annotated[int, BeforeValidator(int_between(16, 1_000_000))] = Field(
        4096, description="open connections at most (503 above it)"
    )


class Settings(RelaySettings):
    """Everything ``outbox serve`` reads (see the module docstring)."""

    api: ApiSettings
    server: ServerSettings
