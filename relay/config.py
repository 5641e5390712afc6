"""Settings: one group per component, read with pydantic-settings.

Every setting comes from one ``OUTBOX_*`` environment variable (a command
line flag overrides it: the CLI passes flags as constructor arguments, which
pydantic-settings ranks above the environment). Nothing is read at import
time; a group reads the environment when it is built.

    RelaySettings                     (relay/service.py builds the relay from it)
      database   DatabaseSettings     OUTBOX_DATABASE_URL (then DATABASE_URL)
      feed       FeedSettings         OUTBOX_POLL_INTERVAL, OUTBOX_BATCH_SIZE, OUTBOX_NOTIFY
      delivery   DeliverySettings     OUTBOX_RETRY_SCHEDULE, OUTBOX_LEASE, ...
      hub        HubSettings          OUTBOX_WS_MAX_QUEUE, OUTBOX_WS_PING_INTERVAL, ...
      retention  RetentionSettings    OUTBOX_RETENTION

(``outbox.api.config.Settings`` adds the API's and the server's groups.)
Each component receives its own group, never the whole settings.

Every value is validated alone (type, range) and together (a lease that is
not longer than one webhook attempt would release every delivery before it
is sent). A bad value raises :class:`~outbox.errors.ConfigError` carrying
the setting's name (``field``, the variable's name without ``OUTBOX_``
in lower case, which is also the keyword :meth:`RelaySettings.load` takes),
the variable and the value; the CLI turns the name into its flag.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from outbox.errors import ConfigError
from outbox.relay.delivery.retry import Exponential, Schedule

PREFIX = "OUTBOX_"
DEFAULT_RETRY_SCHEDULE = "5s,5m,30m,2h,5h,10h,10h"
_EXPONENTIAL_RE = re.compile(r"^\s*exp(?:onential)?\(([^,()]+),([^,()]+),([^,()]+)\)\s*$", re.I)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_HINT = "use e.g. 500ms, 5s, 5m, 2h, 7d"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- values ----------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """Parse ``500ms``, ``5s``, ``5m``, ``2h``, ``7d`` or plain seconds."""
    try:
        return _duration(text)
    except ValueError:
        raise ConfigError(f"invalid duration {text!r} ({_DURATION_HINT})") from None


def format_duration(value: timedelta | float) -> str:
    """The shortest of ``500ms``, ``15s``, ``5m``, ``2h``, ``7d`` that says ``value`` exactly."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    for unit in ("d", "h", "m", "s"):
        n = seconds / _UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def parse_schedule(text: str) -> Schedule:
    """Parse a comma-separated list of delays between attempts (``5s,5m,30m``),
    or its exponential form (see :data:`RetrySchedule`)."""
    try:
        return _schedule(text)
    except ValueError as exc:
        raise ConfigError(str(exc), field="retry_schedule", value=text) from None


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2) or "s"])
    raise ValueError(f"invalid duration ({_DURATION_HINT})")


def _positive(value: timedelta) -> timedelta:
    if value.total_seconds() <= 0:
        raise ValueError("must be more than zero")
    return value


def seconds_between(lo: float, hi: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        seconds = _duration(value).total_seconds()
        if not lo <= seconds <= hi:
            raise ValueError(f"out of range {format_duration(lo)}..{format_duration(hi)}")
        return seconds

    return check


def positive_seconds(value: object) -> float:
    return _positive(_duration(value)).total_seconds()


def int_between(lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("not an integer")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError("not an integer") from None
        if not isinstance(value, int):
            raise ValueError("not an integer")
        if not lo <= value <= hi:
            raise ValueError(f"out of range {lo}..{hi}")
        return value

    return check


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean (use true or false)")


def comma_list(value: object) -> list[Any]:
    if isinstance(value, str):
        return [p for p in (s.strip() for s in value.split(",")) if p]
    if isinstance(value, Iterable):
        return list(value)
    raise ValueError("expected a comma-separated list")


def _schedule(value: object) -> Schedule:
    """``5s,5m,30m`` (the delays between attempts) or ``exponential(5s,10h,8)``:
    8 attempts, waits growing from 5 s by doubling up to 10 h, each drawn at
    random below that (full jitter)."""
    if isinstance(value, Exponential):
        return value
    m = _EXPONENTIAL_RE.match(value) if isinstance(value, str) else None
    if m is not None:
        first, maximum = _duration(m.group(1).strip()), _duration(m.group(2).strip())
        count = m.group(3).strip()
        if not count.isdigit() or int(count) < 1:
            raise ValueError("the attempt count must be a positive integer")
        if first.total_seconds() <= 0 or maximum < first:
            raise ValueError("need 0 < first delay <= max delay")
        return Exponential(first, maximum, int(count))
    parts = comma_list(value)
    if not parts:
        raise ValueError("empty retry schedule")
    return tuple(_duration(p) for p in parts)


def _max_age(value: object) -> timedelta | None:
    """A duration; zero (the default) means no limit."""
    if value is None:
        return None
    age = _duration(value)
    return age if age.total_seconds() > 0 else None


def _proxy(value: object) -> str | None:
    """An ``http://`` or ``https://`` proxy URL (userinfo allowed), or ``None`` when empty."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ValueError("invalid proxy (use http://host:port or https://host:port)")
    return text


def parse_proxy(text: str) -> str | None:
    """An ``http://`` or ``https://`` proxy URL, or ``None`` when empty."""
    try:
        return _proxy(text)
    except ValueError as exc:
        raise ConfigError(str(exc), field="webhook_proxy", value=hide_password(text)) from None


def hide_password(value: object) -> str:
    """A URL with its password as ``***`` (any other text: ``***`` when unsure)."""
    text = str(value)
    try:
        password = urlsplit(text).password
    except ValueError:
        return "***"
    return text.replace(password, "***") if password else text


def _networks(value: object) -> tuple[Network, ...]:
    nets: list[Network] = []
    for part in comma_list(value):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"invalid network {str(part)!r} (use CIDR, e.g. 10.0.0.0/8)") from None
    return tuple(nets)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
Flag = Annotated[bool, BeforeValidator(_bool)]
RetrySchedule = Annotated[Schedule, NoDecode, BeforeValidator(_schedule)]
Networks = Annotated[tuple[Network, ...], NoDecode, BeforeValidator(_networks)]


# --- groups ----------------------------------------------------------------------


class Group(BaseSettings):
    """One component's settings. Each field is read from ``OUTBOX_<FIELD>``
    unless its ``validation_alias`` names the variable(s)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
    )

    @classmethod
    def variables(cls) -> dict[str, str]:
        """field -> the environment variable that sets it."""
        out = {}
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                out[name] = str(alias.choices[0])
            elif isinstance(alias, str):
                out[name] = alias
            else:
                out[name] = PREFIX + name.upper()
        return out

    @classmethod
    def settings(cls) -> dict[str, str]:
        """setting name -> field. A setting's name is its variable's without
        ``OUTBOX_``, in lower case (``env_`` + the name for a variable that is
        not ours, such as ``DATABASE_URL``)."""
        return {setting_name(var): f for f, var in cls.variables().items()}

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> Self:
        """The group from the environment, ``values`` (by setting name) taking precedence.

        Raises :class:`ConfigError` naming the first bad setting.
        """
        names = cls.settings()
        init = {names[k]: v for k, v in values.items()}
        try:
            return cls(**init)
        except ValidationError as exc:
            raise _config_error(cls, exc, init) from None

    def replace(self, values: Mapping[str, Any]) -> Self:
        """A copy with ``values`` (by setting name) changed, validated again."""
        names = self.settings()
        current = {f: getattr(self, f) for f in type(self).model_fields}
        current.update({names[k]: v for k, v in values.items()})
        try:
            return type(self)(**current)
        except ValidationError as exc:
            raise _config_error(type(self), exc, current) from None


def setting_name(variable: str) -> str:
    """``OUTBOX_LEASE`` -> ``lease``; ``DATABASE_URL`` -> ``env_database_url``."""
    if variable.startswith(PREFIX):
        return variable.removeprefix(PREFIX).lower()
    return "env_" + variable.lower()


def _config_error(cls: type[Group], exc: ValidationError, init: Mapping[str, Any]) -> ConfigError:
    variables = cls.variables()
    by_alias = {
        str(choice): field
        for field, info in cls.model_fields.items()
        if info.validation_alias is not None
        for choice in (
            info.validation_alias.choices
            if isinstance(info.validation_alias, AliasChoices)
            else [info.validation_alias]
        )
    }
    err = exc.errors(include_url=False)[0]
    loc = str(err["loc"][0]) if err["loc"] else ""
    field = by_alias.get(loc, loc)
    reason = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        reason = "unknown setting"
    value = init.get(field, err.get("input"))
    info = cls.model_fields.get(field)
    if info is not None and info.repr is False and value is not None:
        value = hide_password(value)  # a secret field: the error never shows the secret
    var = variables.get(field, PREFIX + field.upper())
    return ConfigError(reason, field=setting_name(var), value=value, variable=var)


class DatabaseSettings(Group):
    """Where the outbox lives (every component connects to it)."""

    named_url: str = Field(
        "",
        repr=False,  # may carry a password
        validation_alias="OUTBOX_DATABASE_URL",
        description="database (then DATABASE_URL, then libpq PG* variables)",
    )
    ambient_url: str = Field(
        "",
        repr=False,
        validation_alias="DATABASE_URL",
        description="the database when OUTBOX_DATABASE_URL is not set",
    )

    @property
    def url(self) -> str:
        """``OUTBOX_DATABASE_URL``, then ``DATABASE_URL``; empty: libpq's ``PG*`` variables."""
        return self.named_url or self.ambient_url


class FeedSettings(Group):
    """The feed reader, the listener and the dispatcher: how new events are found."""

    poll_interval: Annotated[float, BeforeValidator(positive_seconds)] = Field(
        1.0, description="poll for new events this often even without a NOTIFY"
    )
    batch_size: Annotated[int, BeforeValidator(int_between(1, 100_000))] = Field(
        1000, description="feed rows per read"
    )
    notify: Flag = Field(True, description="false: poll only, no LISTEN")
    # /health: how long the feed reader or the dispatcher may go without
    # progress while events wait before the process is degraded (relay/progress.py).
    stall_after: Annotated[float, BeforeValidator(positive_seconds)] = Field(
        30.0, description="/health degraded after no progress this long, events waiting"
    )


class DeliverySettings(Group):
    """Webhook delivery: retries, timeouts, the lease, concurrency, SSRF allowances."""

    retry_schedule: RetrySchedule = Field(
        default_factory=lambda: _schedule(DEFAULT_RETRY_SCHEDULE),
        description="delays between webhook attempts, or exponential(first,max,attempts)",
    )
    retry_max_age: Annotated[timedelta | None, BeforeValidator(_max_age)] = Field(
        None, description="give a delivery up this long after its event (0: no limit)"
    )
    webhook_timeout: Annotated[float, BeforeValidator(seconds_between(0.01, 3600.0))] = Field(
        15.0, description="seconds per attempt"
    )
    disable_after: PositiveDuration = Field(
        timedelta(days=5), description="disable an endpoint failing without a success this long"
    )
    webhook_allow_networks: Networks = Field(
        (), description="CIDRs webhook URLs may resolve to although private or loopback"
    )
    webhook_proxy: Annotated[str | None, BeforeValidator(_proxy)] = Field(
        None,
        repr=False,  # may carry a password
        description="HTTP(S) proxy every webhook request goes through",
    )
    lease: PositiveDuration = Field(
        timedelta(seconds=60), description="how long a claimed delivery is this worker's"
    )
    delivery_concurrency: Annotated[int, BeforeValidator(int_between(1, 10_000))] = Field(
        64, description="webhook requests in flight in this process"
    )
    endpoint_concurrency: Annotated[int, BeforeValidator(int_between(1, 10_000))] = Field(
        16, description="webhook requests in flight per endpoint"
    )
    response_body_cap: Annotated[int, BeforeValidator(int_between(0, 1 << 24))] = Field(
        4096, description="webhook response bytes stored"
    )

    @model_validator(mode="after")
    def _lease_fits_an_attempt(self) -> Self:
        # A claim is released before an attempt that cannot finish within the
        # lease starts (relay/delivery/worker.py): with a lease no longer than one
        # attempt, every delivery would be released unsent, forever.
        # (ConfigError is not a ValueError: it leaves pydantic as it is.)
        if self.lease.total_seconds() <= self.webhook_timeout:
            raise ConfigError(
                f"must exceed {{webhook_timeout}} ({format_duration(self.webhook_timeout)})",
                field="lease",
                value=format_duration(self.lease),
                variable="OUTBOX_LEASE",
                related=("webhook_timeout",),
            )
        return self


class HubSettings(Group):
    """``/ws``: the WebSocket fan-out and the protocol limits uvicorn enforces."""

    ws_max_queue: Annotated[int, BeforeValidator(int_between(1, 10_000_000))] = Field(
        10_000, description="frames queued per client before it is closed (1013)"
    )
    ws_max_queue_bytes: Annotated[int, BeforeValidator(int_between(1024, 1 << 34))] = Field(
        8 * 1024 * 1024, description="bytes queued per client"
    )
    ws_ping_interval: Annotated[float, BeforeValidator(seconds_between(0.1, 3600.0))] = Field(
        20.0, description="protocol pings; a peer silent this long after one is dropped"
    )
    ws_max_message: Annotated[int, BeforeValidator(int_between(128, 1 << 26))] = Field(
        64 * 1024, description="largest inbound /ws message (1009 above it)"
    )
    ws_per_message_deflate: Flag = Field(
        False, validation_alias="OUTBOX_WS_DEFLATE", description="offer permessage-deflate"
    )
    ws_handshake_timeout: Annotated[float, BeforeValidator(positive_seconds)] = Field(
        10.0, description="the /ws handshake waits for nothing longer (a slow database)"
    )


class RetentionSettings(Group):
    """How long events and finished deliveries are kept."""

    retention: PositiveDuration = Field(
        timedelta(days=7), description="keep events and finished deliveries this long"
    )


class RelaySettings(BaseModel):
    """Every group the relay needs (see the module docstring).

    :meth:`load` and :meth:`replace` take settings by name, the variable's
    name without ``OUTBOX_`` in lower case (``poll_interval=``, ``lease=``),
    and hand each to its group.
    """

    model_config = ConfigDict(frozen=True)

    database: DatabaseSettings
    feed: FeedSettings
    delivery: DeliverySettings
    hub: HubSettings
    retention: RetentionSettings

    @classmethod
    def groups(cls) -> dict[str, type[Group]]:
        out = {}
        for name, info in cls.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, Group):
                out[name] = kind
        return out

    @classmethod
    def variables(cls) -> dict[str, str]:
        """setting name -> environment variable, for every group."""
        return {
            setting_name(var): var
            for group in cls.groups().values()
            for var in group.variables().values()
        }

    @classmethod
    def _split(cls, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        parts: dict[str, dict[str, Any]] = {name: {} for name in cls.groups()}
        owners = {s: name for name, g in cls.groups().items() for s in g.settings()}
        for key, value in values.items():
            if key not in owners:
                raise TypeError(f"unknown setting {key!r}")
            parts[owners[key]][key] = value
        return parts

    @classmethod
    def load(cls, **values: Any) -> Self:
        """Read every group from the environment; ``values`` (flags) win."""
        parts = cls._split(values)
        return cls(**{name: g.build(parts[name]) for name, g in cls.groups().items()})

    def replace(self, **values: Any) -> Self:
        """A copy with some settings changed (by name), validated again."""
        parts = self._split(values)
        changed = {name: getattr(self, name).replace(v) for name, v in parts.items() if v}
        return self.model_copy(update=changed)


def database_url() -> str:
    """``OUTBOX_DATABASE_URL``, then ``DATABASE_URL``, then libpq's ``PG*`` defaults."""
    return DatabaseSettings.build({}).url
