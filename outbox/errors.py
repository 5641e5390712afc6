"""One exception tree for the whole package; the class docstring is the default message.

    OutboxError                      anything outbox-relay raises on purpose
    ├── ConfigError                  a setting is invalid: .field .value .variable
    │   └── UsageError               ... and a command-line flag set it (exit status 2)
    ├── DatabaseUnavailable          the database is not reachable
    ├── MigrationError               a migration failed
    ├── CaptureError                 a capture rule is invalid: .field
    ├── InvalidEventType             not a lowercase dotted name
    ├── CursorError                  a cursor is malformed
    │   └── CursorExpired            ... or older than retention (410, /ws close 1008)
    ├── RelayError                   the long-running relay (outbox.relay): a part
    │   │                            that ended by itself (relay/service.py)
    │   └── LostLeadership           another relay took over the leader's work
    ├── UnsafeURL                    a webhook URL may not go there (outbox.relay.delivery.ssrf)
    ├── SpecError                    a sink setting is invalid: .field (outbox.relay.sinks.spec)
    ├── BrokerError                  a sink's broker (outbox.relay.sinks.base)
    │   └── BrokerUnavailable, BrokerRefused
    ├── EmbeddedError                the demo's private cluster (outbox.cli.embedded)
    └── ApiError                     an HTTP error the client can act on (outbox.api.errors;
        ├── ValidationFailed         also a Starlette HTTPException): 422 naming the field
        └── BodyTooLarge             413

Library errors speak in settings and fields, never in command-line flags:
every error may carry the offending ``field`` (and :class:`ConfigError` the
value and the variable), and the CLI maps the field to its flag. Webhook
requests fail with httpx's own exception tree (``httpx.HTTPError``; the
three response limits of relay/webhook_client.py subclass
``httpx.RemoteProtocolError``): an attempt's failure is recorded, never
raised out of the sender.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta


class OutboxError(Exception):
    """outbox-relay error.

    ``field`` names the input at fault (``"of"`` for a capture rule's ``of``,
    ``"scope"`` for a token's); ``message`` may name other inputs as
    ``{name}`` (listed in ``related``). The library says the names as they
    are (``of: applies to update rules only``); :meth:`describe` lets a
    caller say them its own way (the CLI: ``--of: applies to --update rules
    only``).
    """

    def __init__(
        self, message: str | None = None, *, field: str | None = None, related: Sequence[str] = ()
    ) -> None:
        self.message = message or (self.__doc__ or "").strip().splitlines()[0]
        self.field = field
        self.related = tuple(related)
        super().__init__(self.describe())

    def describe(self, name_of: Callable[[str], str | None] | None = None) -> str:
        """The message with every input named by ``name_of`` (default: its own name)."""

        def called(name: str) -> str:
            return (name_of(name) if name_of else None) or name

        # Only a message that names other inputs is a template (others may hold braces).
        text = (
            self.message.format_map({f: called(f) for f in self.related})
            if self.related
            else self.message
        )
        return f"{called(self.field)}: {text}" if self.field else text


class ConfigError(OutboxError):
    """Invalid configuration.

    ``field`` is the setting's name (the environment variable without
    ``OUTBOX_``, in lower case: ``lease`` for ``OUTBOX_LEASE``), ``value`` the
    value given, ``variable`` the environment variable. ``reason`` may name
    other settings as ``{name}`` (listed in ``related``); :meth:`describe`
    fills them in with whatever the caller calls them (the CLI: the flag when
    one was given).
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        value: object = None,
        variable: str | None = None,
        related: Sequence[str] = (),
    ) -> None:
        self.reason = reason
        self.value = value
        self.variable = variable or (f"OUTBOX_{field.upper()}" if field else None)
        super().__init__(reason, field=field, related=related)

    def describe(self, name_of: Callable[[str], str | None] | None = None) -> str:
        """One line: ``OUTBOX_LEASE=1ms: must exceed OUTBOX_WEBHOOK_TIMEOUT (15s)``.

        ``name_of(field)`` may return how the caller spells a setting (e.g.
        ``"--lease"``); then the line reads ``--lease 1ms (OUTBOX_LEASE): ...``.
        """

        def env(field: str) -> str:
            return f"OUTBOX_{field.upper()}"

        def called(field: str) -> str:
            return (name_of(field) if name_of else None) or env(field)

        reason = (
            self.reason.format_map({f: called(f) for f in self.related})
            if self.related
            else self.reason
        )
        if self.field is None:
            return reason
        value = _show(self.value)
        flag = name_of(self.field) if name_of else None
        if flag:
            return f"{flag} {value} ({self.variable}): {reason}"
        return f"{self.variable}={value}: {reason}"


def _show(value: object) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else repr(value)
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


class UsageError(ConfigError):
    """A command-line flag has an invalid value."""


class DatabaseUnavailable(OutboxError):
    """The database is not reachable."""


class MigrationError(OutboxError):
    """A migration failed."""


class CaptureError(OutboxError):
    """A capture rule is invalid."""


class InvalidEventType(OutboxError):
    """Event types are lowercase dotted names such as user.created."""


class CursorError(OutboxError):
    """The cursor is malformed."""


class CursorExpired(CursorError):
    """The cursor is older than the retention window."""


class RelayError(OutboxError):
    """The relay failed."""


class LostLeadership(RelayError):
    """Another relay took over the leader's work."""
