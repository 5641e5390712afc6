"""What a sink's settings may be: one check shared by ``/sinks`` and ``outbox sink``.

:func:`check_settings` takes the settings as they will be stored (after a
PATCH is merged into the row) and raises :class:`SpecError` naming the
field, so the API answers 422 ``field: why`` and the CLI one line naming
the flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from outbox.cursor import Cursor
from outbox.errors import CursorError, OutboxError
from outbox.events import is_pattern
from outbox.relay.sinks.base import (
    DEFAULT_EXCHANGE,
    DEFAULT_ROUTING_KEY,
    DEFAULT_SUBJECT,
    KINDS,
    Template,
    check_url,
    kind_of_url,
)

STREAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
EXCHANGE_RE = re.compile(r"^[A-Za-z0-9_.:-]{0,255}$")
MAX_TEMPLATE = 200
MAX_PATTERNS = 100
# ``since``: where a new sink (or a PATCHed one) starts reading.
SINCE_NOW = "now"
SINCE_BEGINNING = "beginning"


class SpecError(OutboxError):
    """A sink setting is invalid."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        self.reason = message
        super().__init__(message, field=field)


@dataclass(frozen=True)
class SinkSettings:
    """The user-set part of a sink (a row of outbox.sinks without the bookkeeping)."""

    name: str
    kind: str | None
    url: str
    event_types: tuple[str, ...] = ("*",)
    subject: str | None = None
    stream: str | None = None
    exchange: str | None = None
    routing_key: str | None = None


def check_settings(s: SinkSettings) -> SinkSettings:
    """Validate ``s``; returns it with the kind inferred and the defaults filled in."""
    if not s.name.strip():
        raise SpecError("name", "must not be blank")
    kind = s.kind or kind_of_url(s.url)
    if kind is None:
        raise SpecError("kind", "give kind (nats or amqp) or a nats:// or amqp:// URL")
    if kind not in KINDS:
        raise SpecError("kind", f"must be one of {', '.join(KINDS)}")
    try:
        check_url(kind, s.url)
    except ValueError as exc:
        raise SpecError("url", str(exc)) from None
    if not s.event_types:
        raise SpecError("event_types", "give at least one event type or pattern")
    if len(s.event_types) > MAX_PATTERNS:
        raise SpecError("event_types", f"at most {MAX_PATTERNS} patterns")
    for p in s.event_types:
        if not is_pattern(p):
            raise SpecError(
                "event_types",
                f"invalid event type pattern {p!r}: use a lowercase dotted name "
                "(user.created), a prefix (user.*) or *",
            )
    if kind == "nats":
        for field in ("exchange", "routing_key"):
            if getattr(s, field) is not None:
                raise SpecError(field, "applies to amqp sinks only (nats sinks use subject)")
        subject = s.subject if s.subject is not None else DEFAULT_SUBJECT
        _template("subject", subject).check_subject_or_raise()
        if s.stream is not None and not STREAM_RE.match(s.stream):
            raise SpecError(
                "stream", "must be 1-255 letters, digits, '-' or '_' (a JetStream stream name)"
            )
        return replace(s, kind=kind, subject=subject)
    for field in ("subject", "stream"):
        if getattr(s, field) is not None:
            raise SpecError(field, "applies to nats sinks only (amqp sinks use exchange)")
    exchange = s.exchange if s.exchange is not None else DEFAULT_EXCHANGE
    if not EXCHANGE_RE.match(exchange):
        raise SpecError(
            "exchange", "must be at most 255 letters, digits, '-', '_', '.' or ':' ('' = default)"
        )
    routing_key = s.routing_key if s.routing_key is not None else DEFAULT_ROUTING_KEY
    _template("routing_key", routing_key).check_routing_key_or_raise()
    return replace(s, kind=kind, exchange=exchange, routing_key=routing_key)


class _Checked:
    def __init__(self, field: str, template: Template) -> None:
        self.field, self.template = field, template

    def check_subject_or_raise(self) -> None:
        try:
            self.template.check_subject()
        except ValueError as exc:
            raise SpecError(self.field, str(exc)) from None

    def check_routing_key_or_raise(self) -> None:
        try:
            self.template.check_routing_key()
        except ValueError as exc:
            raise SpecError(self.field, str(exc)) from None


def _template(field: str, text: str) -> _Checked:
    if len(text) > MAX_TEMPLATE:
        raise SpecError(field, f"at most {MAX_TEMPLATE} characters")
    try:
        return _Checked(field, Template(text))
    except ValueError as exc:
        raise SpecError(field, str(exc)) from None


def start_cursor(since: str | None, head: Cursor) -> Cursor:
    """Where reading starts: ``now`` (None: the head of the feed), ``beginning``,
    or a cursor from ``/events``, ``/ws`` or another sink."""
    if since is None or since == SINCE_NOW:
        return head
    if since == SINCE_BEGINNING:
        return Cursor(0)
    try:
        return Cursor.decode(since)
    except CursorError:
        raise SpecError(
            "since", "must be 'now', 'beginning' or a cursor (from /events, /ws or a sink)"
        ) from None
