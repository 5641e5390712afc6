"""One typed settings object, read once at start; errors name the variable.

Every setting comes from an ``OUTBOX_*`` environment variable (CLI flags
override them). Nothing is read at import time.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from outbox.errors import ConfigError
from outbox.relay.retry import Exponential, Schedule

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

DEFAULT_RETRY_SCHEDULE = "5s,5m,30m,2h,5h,10h,10h"
_EXPONENTIAL_RE = re.compile(r"^\s*exp(?:onential)?\(([^,()]+),([^,()]+),([^,()]+)\)\s*$", re.I)


def parse_duration(text: str, *, name: str = "duration") -> timedelta:
    """Parse ``500ms``, ``5s``, ``5m``, ``2h``, ``7d`` or plain seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ConfigError(f"{name}: invalid duration {text!r} (use e.g. 500ms, 5s, 5m, 2h, 7d)")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return timedelta(seconds=seconds)


def parse_schedule(text: str, *, name: str = "OUTBOX_RETRY_SCHEDULE") -> Schedule:
    """Parse a comma-separated list of delays between attempts, or its exponential form.

    ``exponential(5s,10h,8)``: 8 attempts, waits growing from 5 s by doubling
    up to 10 h, each drawn at random below that (full jitter).
    """
    m = _EXPONENTIAL_RE.match(text)
    if m is not None:
        first = parse_duration(m.group(1).strip(), name=name)
        maximum = parse_duration(m.group(2).strip(), name=name)
        count = m.group(3).strip()
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{name}: {text!r}: the attempt count must be a positive integer")
        if first.total_seconds() <= 0 or maximum < first:
            raise ConfigError(f"{name}: {text!r}: need 0 < first delay <= max delay")
        return Exponential(first, maximum, int(count))
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    if not parts:
        raise ConfigError(f"{name}: empty retry schedule {text!r}")
    return tuple(parse_duration(p, name=name) for p in parts)


def parse_networks(
    text: str, *, name: str = "OUTBOX_WEBHOOK_ALLOW_NETWORKS"
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name}: invalid network {part!r} (use CIDR, e.g. 10.0.0.0/8)"
            ) from None
    return tuple(nets)


def parse_proxy(text: str, *, name: str = "OUTBOX_WEBHOOK_PROXY") -> str | None:
    """An ``http://`` or ``https://`` proxy URL (userinfo allowed), or ``None`` when empty."""
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        shown = text.replace(parts.password, "***") if parts.password else text
        raise ConfigError(
            f"{name}: invalid proxy {shown!r} (use http://host:port or https://host:port)"
        )
    return text


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: invalid integer {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {value} is out of range {lo}..{hi}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: invalid number {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {value} is out of range {lo}..{hi}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: invalid boolean {raw!r} (use true or false)")


def _positive(value: timedelta, name: str) -> float:
    seconds = value.total_seconds()
    if seconds <= 0:
        raise ConfigError(f"{name}: must be more than zero")
    return seconds


def database_url(env: Mapping[str, str] | None = None) -> str:
    """``OUTBOX_DATABASE_URL``, then ``DATABASE_URL``, then libpq's ``PG*`` defaults."""
    env = os.environ if env is None else env
    return env.get("OUTBOX_DATABASE_URL") or env.get("DATABASE_URL") or ""


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    api_token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    retry_schedule: Schedule = field(default_factory=lambda: parse_schedule(DEFAULT_RETRY_SCHEDULE))
    retry_max_age: timedelta | None = None
    webhook_timeout: float = 15.0
    disable_after: timedelta = timedelta(days=5)
    webhook_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    webhook_proxy: str | None = None
    ws_allowed_origins: tuple[str, ...] = ()
    retention: timedelta = timedelta(days=7)
    poll_interval: float = 1.0
    batch_size: int = 1000
    lease: timedelta = timedelta(seconds=60)
    delivery_concurrency: int = 64
    endpoint_concurrency: int = 16
    ws_max_queue: int = 10_000
    ws_max_queue_bytes: int = 8 * 1024 * 1024
    ws_ping_interval: float = 20.0
    ws_max_message: int = 64 * 1024
    ws_per_message_deflate: bool = False
    response_body_cap: int = 4096
    max_request_body: int = 1024 * 1024
    rotation_overlap: timedelta = timedelta(hours=24)
    notify: bool = True
    # What one client connection may cost (api/http_protocol.py, api/ws.py).
    header_timeout: float = 10.0
    max_header_bytes: int = 32 * 1024
    max_connections: int = 4096
    ws_handshake_timeout: float = 10.0
    # /health: how long the feed reader or dispatcher may go without progress
    # while events wait before the process is degraded (relay/progress.py).
    stall_after: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def dur(name: str, default: str) -> timedelta:
            return parse_duration(env.get(name) or default, name=name)

        origins = tuple(
            o.strip().rstrip("/")
            for o in env.get("OUTBOX_WS_ALLOWED_ORIGINS", "").split(",")
            if o.strip()
        )
        return cls(
            database_url=database_url(env),
            api_token=env.get("OUTBOX_API_TOKEN") or None,
            host=env.get("OUTBOX_HOST") or "127.0.0.1",
            port=_int(env, "OUTBOX_PORT", 8080, 0, 65535),
            retry_schedule=parse_schedule(
                env.get("OUTBOX_RETRY_SCHEDULE") or DEFAULT_RETRY_SCHEDULE
            ),
            retry_max_age=dur("OUTBOX_RETRY_MAX_AGE", "0s") or None,
            webhook_timeout=_float(env, "OUTBOX_WEBHOOK_TIMEOUT", 15.0, 0.01, 3600.0),
            disable_after=dur("OUTBOX_DISABLE_AFTER", "5d"),
            webhook_allow_networks=parse_networks(env.get("OUTBOX_WEBHOOK_ALLOW_NETWORKS", "")),
            webhook_proxy=parse_proxy(env.get("OUTBOX_WEBHOOK_PROXY", "")),
            ws_allowed_origins=origins,
            retention=dur("OUTBOX_RETENTION", "7d"),
            poll_interval=dur("OUTBOX_POLL_INTERVAL", "1s").total_seconds(),
            batch_size=_int(env, "OUTBOX_BATCH_SIZE", 1000, 1, 100_000),
            lease=dur("OUTBOX_LEASE", "60s"),
            delivery_concurrency=_int(env, "OUTBOX_DELIVERY_CONCURRENCY", 64, 1, 10_000),
            endpoint_concurrency=_int(env, "OUTBOX_ENDPOINT_CONCURRENCY", 16, 1, 10_000),
            ws_max_queue=_int(env, "OUTBOX_WS_MAX_QUEUE", 10_000, 1, 10_000_000),
            ws_max_queue_bytes=_int(
                env, "OUTBOX_WS_MAX_QUEUE_BYTES", 8 * 1024 * 1024, 1024, 1 << 34
            ),
            ws_ping_interval=_float(env, "OUTBOX_WS_PING_INTERVAL", 20.0, 0.1, 3600.0),
            ws_max_message=_int(env, "OUTBOX_WS_MAX_MESSAGE", 64 * 1024, 128, 1 << 26),
            ws_per_message_deflate=_bool(env, "OUTBOX_WS_DEFLATE", False),
            response_body_cap=_int(env, "OUTBOX_RESPONSE_BODY_CAP", 4096, 0, 1 << 24),
            max_request_body=_int(env, "OUTBOX_MAX_REQUEST_BODY", 1024 * 1024, 1024, 1 << 30),
            rotation_overlap=dur("OUTBOX_ROTATION_OVERLAP", "24h"),
            notify=_bool(env, "OUTBOX_NOTIFY", True),
            header_timeout=_positive(dur("OUTBOX_HEADER_TIMEOUT", "10s"), "OUTBOX_HEADER_TIMEOUT"),
            max_header_bytes=_int(env, "OUTBOX_MAX_HEADER_BYTES", 32 * 1024, 1024, 1 << 20),
            max_connections=_int(env, "OUTBOX_MAX_CONNECTIONS", 4096, 16, 1_000_000),
            ws_handshake_timeout=_positive(
                dur("OUTBOX_WS_HANDSHAKE_TIMEOUT", "10s"), "OUTBOX_WS_HANDSHAKE_TIMEOUT"
            ),
            stall_after=_positive(dur("OUTBOX_STALL_AFTER", "30s"), "OUTBOX_STALL_AFTER"),
        )
