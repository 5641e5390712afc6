"""The sink interface, and what every kind of broker shares.

A kind of broker is one module here (``nats.py``, ``amqp.py``) with one
class that implements :class:`Publisher`:

* ``connect()`` opens the connection and checks that the target exists
  (stream, exchange); it may create what the sink's settings say to create;
* ``publish(messages)`` sends a batch, in order, and returns only when the
  broker has acknowledged **every** message of it (JetStream: a PubAck per
  message; AMQP: a publisher confirm per message), else raises
  :class:`BrokerError`. It returns how many of them the broker reported as
  duplicates (0 where it cannot tell);
* ``close()`` closes whatever is open and never raises.

Everything else is the same for every kind and lives outside the module:
reading the feed from the sink's cursor, the filter, the order, the message
(:func:`build_messages`: body = the envelope, headers, id), retries with
backoff, storing the cursor only after ``publish`` returned, one publisher
per sink (relay/sinks/worker.py and runner.py). A ``publish`` that fails part
way is simply called again with the same batch: the broker (JetStream's
``Nats-Msg-Id``) or the consumer (AMQP ``message_id``) drops the repeats.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

from outbox.errors import OutboxError
from outbox.events import Matcher

if TYPE_CHECKING:
    from outbox.relay.feed import Event

KINDS = ("nats", "amqp")
URL_SCHEMES = {"nats": ("nats", "tls", "ws", "wss"), "amqp": ("amqp", "amqps")}
DEFAULT_SUBJECT = "outbox.{type}"
DEFAULT_EXCHANGE = "amq.topic"
DEFAULT_ROUTING_KEY = "{type}"
# AMQP 0-9-1 caps routing keys (shortstr) at 255 bytes.
MAX_ROUTING_KEY = 255

HEADER_EVENT_ID = "Outbox-Event-Id"
HEADER_EVENT_TYPE = "Outbox-Event-Type"
HEADER_KEY = "Outbox-Key"
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"


class BrokerError(OutboxError):
    """The broker did not acknowledge the messages."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached or did not answer in time."""


class BrokerRefused(BrokerError):
    """The broker refused: a missing stream or exchange, permissions, limits."""


class Message(NamedTuple):
    """One event as a broker message (a named tuple: immutable, and cheap to
    build a thousand of per batch)."""

    event_id: int
    msg_id: str  # evt_<id>: the broker's (JetStream) or consumer's (AMQP) de-duplication key
    destination: str  # the subject or routing key, rendered from the template
    body: bytes
    headers: dict[str, str]


class Publisher(Protocol):
    """What one kind of broker implements (see the module docstring)."""

    async def connect(self) -> None: ...

    async def publish(self, messages: Sequence[Message]) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """A sink's settings as its publisher needs them (a row of outbox.sinks)."""

    id: int
    name: str
    kind: str
    url: str
    event_types: tuple[str, ...]
    subject: str | None = None
    stream: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    version: datetime | None = None  # updated_at: a change restarts the publisher

    @property
    def destination_template(self) -> str:
        template = self.subject if self.kind == "nats" else self.routing_key
        return template or (DEFAULT_SUBJECT if self.kind == "nats" else DEFAULT_ROUTING_KEY)

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)


# --- templates -------------------------------------------------------------------

_PLACEHOLDER_RE = re.compile(r"\{(type|key)\}")
# What may not appear in a rendered NATS subject token or AMQP topic word:
# separators, wildcards (NATS * >, AMQP * #) and whitespace.
_UNSAFE_KEY_RE = re.compile(r"[\s.*>#]")
_NATS_LITERAL_RE = re.compile(r"^[^\s*>{}]*$")


class Template:
    """A subject / routing-key template with ``{type}`` and ``{key}``.

    ``{type}`` is the event type (``ticket.created``: dotted, so it spans
    tokens); ``{key}`` is the event's key with separators, wildcards and
    whitespace replaced by ``_`` (``_`` alone when the event has no key), so
    a key can never add a token or become a wildcard.
    """

    __slots__ = ("_parts", "text", "uses_key")

    def __init__(self, text: str) -> None:
        self.text = text
        pieces = _PLACEHOLDER_RE.split(text)
        # pieces: literal, name, literal, name, ..., literal
        literals = pieces[0::2]
        for lit in literals:
            if "{" in lit or "}" in lit:
                raise ValueError("only the placeholders {type} and {key} are allowed")
        self._parts: tuple[str, ...] = tuple(pieces)
        self.uses_key = "key" in pieces[1::2]

    def render(self, event_type: str, key: str | None) -> str:
        parts = self._parts
        if len(parts) == 1:
            return parts[0]
        out = []
        for i, piece in enumerate(parts):
            if i % 2 == 0:
                out.append(piece)
            elif piece == "type":
                out.append(event_type)
            else:
                out.append(safe_key(key))
        return "".join(out)

    def check_subject(self) -> None:
        """A NATS subject template: dot-separated non-empty tokens, no wildcards,
        beginning with a fixed token (the stream's subject is derived from it)."""
        sample = self.render("a.b", "k")
        if not sample or any(not t for t in sample.split(".")):
            raise ValueError("must be dot-separated tokens, none empty (e.g. outbox.{type})")
        if not all(_NATS_LITERAL_RE.match(lit) for lit in self._parts[0::2]):
            raise ValueError("must not contain whitespace or the wildcards * and >")
        if self.text.startswith("{"):
            raise ValueError("must begin with a fixed token (e.g. outbox.{type})")

    def check_routing_key(self) -> None:
        if len(self._parts[0].encode()) + sum(len(p.encode()) for p in self._parts[2::2]) > 200:
            raise ValueError("is too long (a routing key is at most 255 bytes)")

    def stream_subject(self) -> str:
        """The subject filter a stream needs to capture every rendering:
        the fixed tokens before the first placeholder, then ``>``."""
        fixed = self.text.split("{", 1)[0]
        if "{" not in self.text:
            return self.text
        tokens = fixed.split(".")[:-1]  # the token holding the placeholder goes
        return ".".join([*tokens, ">"])


def safe_key(key: str | None) -> str:
    if not key:
        return "_"
    return _UNSAFE_KEY_RE.sub("_", key)


def check_url(kind: str, url: str) -> str:
    """The broker URL's scheme fits the kind and it names a host; returns it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    schemes = URL_SCHEMES[kind]
    if parts.scheme not in schemes:
        wanted = ", ".join(f"{s}://" for s in schemes)
        raise ValueError(f"a {kind} sink needs a {wanted} URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    return url


def kind_of_url(url: str) -> str | None:
    """The kind a URL's scheme implies (for the CLI), or None."""
    scheme = urlsplit(url).scheme
    for kind, schemes in URL_SCHEMES.items():
        if scheme in schemes:
            return kind
    return None


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``: what is shown and logged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<invalid url>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact(text: str, url: str) -> str:
    """``text`` (an error message) with the URL's password removed, wherever it appears."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    return text


# --- messages --------------------------------------------------------------------


def envelope(
    event_id: int, event_type: str, timestamp: str, key: str | None, payload_json: str
) -> bytes:
    """``{"id","type","timestamp","key","data"}`` as JSON bytes; ``data`` is the
    payload as stored (jsonb text), spliced in, not parsed and dumped again."""
    return (
        '{"id":"evt_'
        + str(event_id)
        + '","type":'
        + json.dumps(event_type)
        + ',"timestamp":"'
        + timestamp
        + '","key":'
        + ("null" if key is None else json.dumps(key, ensure_ascii=False))
        + ',"data":'
        + payload_json
        + "}"
    ).encode()


def build_messages(events: Iterable[Event], matcher: Matcher, template: Template) -> list[Message]:
    """The messages for the events of a batch that match, in the batch's order.

    The same bytes as :func:`envelope` and ``template.render`` give, built
    with what a batch repeats worked out once per batch: per event type the
    filter's answer, the type as JSON and (for a template without ``{key}``)
    the destination; per run of events with one ``created_at`` (a
    transaction's events share it) the timestamp text. At B6's rates this
    was a fifth of the sink's own CPU per event next to nats-py's publish.
    """
    out: list[Message] = []
    append = out.append
    # event type -> (matches, the type as JSON, the destination or None when it has {key})
    types: dict[str, tuple[bool, str, str | None]] = {}
    uses_key = template.uses_key
    render = template.render
    dumps = json.dumps
    last_created: object = None
    stamp = ""
    for e in events:
        etype = e.type
        known = types.get(etype)
        if known is None:
            known = types[etype] = (
                matcher(etype),
                dumps(etype),
                None if uses_key else render(etype, None),
            )
        matches, type_json, destination = known
        if not matches:
            continue
        key = e.key
        created = e.created_at
        if created != last_created:
            last_created, stamp = created, created.isoformat()
        msg_id = f"evt_{e.id}"
        headers = {HEADER_EVENT_ID: msg_id, HEADER_EVENT_TYPE: etype}
        if key is None:
            key_json = "null"
        else:
            headers[HEADER_KEY] = key
            key_json = dumps(key, ensure_ascii=False)
        trace = e.traceparent
        if trace:
            # The writer's context; with an SDK installed the worker makes it
            # the publish span's (relay/tracing.py).
            headers[HEADER_TRACEPARENT] = trace
            if e.tracestate:
                headers[HEADER_TRACESTATE] = e.tracestate
        append(
            Message(
                e.id,
                msg_id,
                destination if destination is not None else render(etype, key),
                f'{{"id":"{msg_id}","type":{type_json},"timestamp":"{stamp}",'
                f'"key":{key_json},"data":{e.payload_json}}}'.encode(),
                headers,
            )
        )
    return out


def destinations(messages: Sequence[Message]) -> set[str]:
    return {m.destination for m in messages}
