"""One small exception hierarchy; the class docstring is the default message."""

from __future__ import annotations


class OutboxError(Exception):
    """outbox-relay error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(OutboxError):
    """Invalid configuration."""


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
