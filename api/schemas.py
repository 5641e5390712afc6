"""Request and response models of the REST API (SQLModel, i.e. pydantic).

Requests forbid unknown fields, so a typo is a 422 naming it rather than a
silently ignored setting. Query models ignore unknown parameters (caches and
proxies add their own). Responses list exactly what a client sees: webhook
responses never carry the secret except :class:`WebhookWithSecret`, which
only create and rotate-secret return. ``api/openapi.py`` publishes the JSON
schemas of these classes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, Field, field_validator
from sqlmodel import SQLModel

from outbox.events import PATTERN_RE, is_pattern
from outbox.relay.delivery import headers as webhook_headers
from outbox.relay.delivery.signing import check_secret
from outbox.relay.delivery.ssrf import UnsafeURL, split_url
from outbox.relay.runtime import FeedStatus
from outbox.relay.service import DispatcherStatus

MAX_BIGINT = 2**63 - 1
MAX_OFFSET = 1_000_000_000
MAX_OVERLAP_SECONDS = 30 * 86400


def _pattern(value: str) -> str:
    if not is_pattern(value):
        raise ValueError(
            f"invalid event type pattern {value!r}: use a lowercase dotted name "
            "(user.created), a prefix (user.*) or *"
        )
    return value


def _url(value: str) -> str:
    try:
        split_url(value)
    except UnsafeURL as exc:
        raise ValueError(exc.reason) from None
    return value


def _secret(value: str) -> str:
    check_secret(value)
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


EventPattern = Annotated[
    str,
    Field(max_length=255, json_schema_extra={"pattern": PATTERN_RE.pattern}),
    AfterValidator(_pattern),
]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_not_blank)]
Url = Annotated[
    str,
    Field(
        max_length=2048, json_schema_extra={"format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}
    ),
    AfterValidator(_url),
]
Secret = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_secret)]
Description = Annotated[str, Field(max_length=2000)]
CustomHeaders = Annotated[
    dict[str, str],
    AfterValidator(webhook_headers.check),
    Field(
        description="sent with every request; not hop-by-hop, Host, Content-*, "
        "X-Webhook-*, webhook-* or trace headers",
        examples=[{"Authorization": "Bearer receiver-token"}],
    ),
]
PayloadFormat = Literal["raw", "envelope"]
Ordering = Literal["none", "key"]
ORDERING_DOC = (
    "'key': for one key, a delivery is not attempted before the previous one "
    "succeeded or ended failed; other keys and keyless events are not held "
    "back; 'none' (the default): no order"
)
SeedSignature = Literal["old", "new"]
Order = Literal["asc", "desc"]
DeliveryStatus = Literal["pending", "success", "failed"]
Limit = Annotated[int, Field(ge=1, le=200)]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET)]


def merge_patterns(one: str | None, many: list[str] | None) -> list[str] | None:
    """The seed's ``event_type`` first, then ``event_types``, without repeats."""
    merged: list[str] = []
    for p in ([one] if one else []) + (many or []):
        if p not in merged:
            merged.append(p)
    return merged or None


class RequestModel(SQLModel):
    model_config = SQLModel.model_config | {"extra": "forbid"}


class QueryModel(SQLModel):
    model_config = SQLModel.model_config | {"extra": "ignore"}


def _drop_null(schema: dict[str, Any], cls: type) -> None:
    """In the JSON schema, fields listed in ``__not_null__`` accept no null:
    they are optional (omit to keep the value) but null is refused."""
    for name in getattr(cls, "__not_null__", ()):
        prop = schema["properties"][name]
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            prop.update(options[0])
        elif options:
            prop["anyOf"] = options
        prop.pop("default", None)


# -- requests ---------------------------------------------------------------


class WebhookCreate(RequestModel):
    """``POST /webhooks``: the seed's fields, plus ``event_types`` and ``payload_format``.

    Give ``event_type`` (one type or pattern, as the seed did), ``event_types``
    (a list), or both; ``secret`` is generated when omitted.
    """

    model_config = RequestModel.model_config | {
        "json_schema_extra": {
            "anyOf": [{"required": ["event_type"]}, {"required": ["event_types"]}]
        }
    }

    name: Name
    url: Url
    event_type: EventPattern | None = None
    event_types: list[EventPattern] | None = Field(default=None, min_length=1, max_length=100)
    secret: Secret | None = None
    description: Description | None = None
    payload_format: PayloadFormat = "raw"
    is_active: bool = True
    headers: CustomHeaders = Field(default_factory=dict)
    ordering: Ordering = Field(default="none", description=ORDERING_DOC)


class WebhookUpdate(RequestModel):
    """``PATCH /webhooks/{id}``: only the fields given change. ``event_type``
    alone replaces the subscription with that one type. ``description`` may
    be null to clear it; the other fields may be omitted but not null."""

    model_config = RequestModel.model_config | {"json_schema_extra": _drop_null}
    __not_null__: ClassVar[tuple[str, ...]] = (
        "name",
        "url",
        "event_type",
        "event_types",
        "secret",
        "payload_format",
        "is_active",
        "headers",
        "ordering",
    )

    name: Name | None = None
    url: Url | None = None
    event_type: EventPattern | None = None
    event_types: list[EventPattern] | None = Field(default=None, min_length=1, max_length=100)
    secret: Secret | None = None
    description: Description | None = None
    payload_format: PayloadFormat | None = None
    is_active: bool | None = None
    headers: CustomHeaders | None = Field(
        default=None, description="replaces the webhook's custom headers ({} removes them)"
    )
    ordering: Ordering | None = Field(
        default=None,
        description=ORDERING_DOC + ". To 'none': what waits in key queues is sent at once; "
        "to 'key': deliveries created from then on are ordered",
    )

    @field_validator(*__not_null__, mode="before")
    @classmethod
    def _refuse_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null (omit the field to keep its value)")
        return value


class RecoverRequest(RequestModel):
    """``POST /webhooks/{id}/recover``: re-send failed deliveries created at or after ``since``
    (a timestamp without a zone is read as UTC)."""

    since: datetime

    @field_validator("since")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class SkipRequest(RequestModel):
    """``POST /webhooks/{id}/deliveries/{delivery_id}/skip``: why (kept as its error)."""

    reason: Annotated[str, Field(max_length=500)] | None = None


class RotateRequest(RequestModel):
    """``POST /webhooks/{id}/rotate-secret``: how long the old secret keeps signing too,
    and which secret signs the seed's ``X-Webhook-Signature`` meanwhile."""

    overlap_seconds: int | None = Field(default=None, ge=0, le=MAX_OVERLAP_SECONDS)
    seed_signature: SeedSignature | None = Field(
        default=None,
        description="'old' (default): X-Webhook-Signature keeps the previous secret until "
        "the overlap ends, then switches; 'new': it switches now",
    )


class ReplayRequest(RequestModel):
    """``POST /webhooks/{id}/replay``: new deliveries of the events in a range.

    ``since``/``until`` are each a cursor (an event's ``cursor`` or a
    ``next_cursor``: the events after it / up to it, exactly as ``/ws`` and
    ``/events`` read them) or an ISO 8601 time (``created_at >= since``,
    ``< until``; without a zone, UTC). ``dry_run`` counts without queueing.
    """

    since: Annotated[str, Field(min_length=1, max_length=8192)]
    until: Annotated[str, Field(min_length=1, max_length=8192)] | None = None
    dry_run: bool = False


# -- queries ----------------------------------------------------------------


class WebhookQuery(QueryModel):
    event_type: EventPattern | None = None
    is_active: bool | None = None
    limit: Limit = 50
    offset: Offset = 0


class PageQuery(QueryModel):
    limit: Limit = 50
    offset: Offset = 0


class DeliveryQuery(QueryModel):
    status: DeliveryStatus | None = None
    order: Order = Field(
        default="asc", description="by id: asc (the seed's) or desc (newest first)"
    )
    limit: Limit = 50
    offset: Offset = 0


class EventQuery(QueryModel):
    # Bounded so that a URL stays within what the HTTP server accepts (16 KiB).
    since: str | None = Field(
        default=None, max_length=8192, description="asc: start after this cursor (empty: the start)"
    )
    before: str | None = Field(
        default=None,
        max_length=8192,
        description="desc: the newest events this cursor has emitted (empty or absent: now)",
    )
    order: Order = Field(
        default="asc",
        description="asc: oldest first from since=; desc: newest first, for history "
        "(next_cursor then continues live on /ws, prev_cursor pages further back)",
    )
    event_type: str | None = Field(default=None, max_length=2048)
    limit: Annotated[int, Field(ge=1, le=1000)] = 100

    @field_validator("event_type")
    @classmethod
    def _patterns(cls, value: str | None) -> str | None:
        if value is not None:
            for p in value.split(","):
                _pattern(p.strip())
        return value

    def patterns(self) -> list[str] | None:
        if not self.event_type:
            return None
        return [p.strip() for p in self.event_type.split(",")]


# -- responses --------------------------------------------------------------


class WebhookOut(SQLModel):
    """A webhook as every read returns it: never the secret."""

    id: int
    name: str
    url: str
    event_type: str = Field(description="the first of event_types (the seed's single type)")
    event_types: list[str]
    payload_format: PayloadFormat
    is_active: bool
    description: str | None
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_triggered_at: datetime | None
    last_success_at: datetime | None
    failing_since: datetime | None
    success_count: int
    failure_count: int
    previous_secret_expires_at: datetime | None = Field(
        description="while set and in the future, the previous secret signs too"
    )
    seed_signature: SeedSignature = Field(
        default="old",
        description="during a rotation overlap, the secret that signs X-Webhook-Signature",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="custom headers sent with every request"
    )
    ordering: Ordering = Field(default="none", description=ORDERING_DOC)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        return cls.model_validate({**row, "event_type": row["event_types"][0]})


class WebhookWithSecret(WebhookOut):
    """Returned only by create and rotate-secret: the signing secret, shown this once."""

    secret: str


class RotationOut(SQLModel):
    """When each signature header switches to the new secret."""

    overlap_ends_at: datetime | None = Field(
        description="until then the previous secret still signs; null: no overlap"
    )
    webhook_signature: str = Field(description="Standard Webhooks webhook-signature")
    x_webhook_signature: str = Field(description="the seed's X-Webhook-Signature")


class RotatedWebhook(WebhookWithSecret):
    """rotate-secret: the new secret (shown this once) and when each header switches."""

    rotation: RotationOut


class WebhookPage(SQLModel):
    items: list[WebhookOut]
    total: int
    limit: int
    offset: int


class WebhookStats(SQLModel):
    total_webhooks: int
    active_webhooks: int
    total_deliveries: int
    successful_deliveries: int
    failed_deliveries: int
    pending_deliveries: int
    success_rate: float = Field(description="percent of finished deliveries that succeeded")


class DeliveryOut(SQLModel):
    id: int
    webhook_id: int
    event_id: int
    event_type: str
    payload: Any = Field(description="the event's payload; null once retention removed it")
    response_status: int | None
    response_body: str | None
    status: DeliveryStatus
    error_message: str | None
    attempt_number: int
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    next_retry_at: datetime | None
    replay: int = Field(default=0, description="0: the delivery; n: the n-th replay of the event")
    event_created_at: datetime | None = Field(
        default=None,
        description="when the event was written (a replay by time starts from it); "
        "null once retention removed the event",
    )
    key: str | None = Field(default=None, description="the event's key")
    waiting: bool = Field(
        default=False,
        description="ordering 'key': pending behind an earlier delivery of the same key "
        "(not attempted until that one succeeded or ended failed)",
    )


class EventDeliveryOut(DeliveryOut):
    webhook_name: str


class EventDeliveryList(SQLModel):
    items: list[EventDeliveryOut]


class DeliveryPage(SQLModel):
    items: list[DeliveryOut]
    total: int
    limit: int
    offset: int


class AttemptOut(SQLModel):
    id: int
    delivery_id: int
    attempt_number: int
    started_at: datetime
    duration_ms: float
    outcome: Literal["success", "retry", "failed"]
    response_status: int | None
    response_body: str | None
    error_class: str | None
    error_message: str | None
    request_headers: dict[str, str] | None = Field(
        default=None, description="as sent, signature values redacted; null before 004"
    )
    response_headers: dict[str, str] | None = Field(
        default=None, description="as received (lower-case names)"
    )


class AttemptList(SQLModel):
    items: list[AttemptOut]


class ReplayResult(SQLModel):
    queued: int = Field(description="new deliveries created (0 on a dry run)")
    matched: int = Field(description="events in the range that this webhook subscribes to")
    dry_run: bool


class WhoAmI(SQLModel):
    """What the presented token may do, so a client (the console) can adapt."""

    name: str = Field(description="the token's name (bootstrap: OUTBOX_API_TOKEN)")
    scope: Literal["admin", "read", "feed"]
    events: list[str] | None = Field(
        default=None, description="feed tokens: the event patterns it may read (null: all)"
    )


class BlockedKeyOut(SQLModel):
    """The head of a key's queue that has failed at least once, holding its key back."""

    key: str
    delivery_id: int
    event_id: int
    event_type: str
    attempt_number: int = Field(description="attempts so far, all failed")
    created_at: datetime
    next_retry_at: datetime | None = Field(description="its next attempt (its retry schedule)")
    response_status: int | None
    error_message: str | None
    waiting: int = Field(description="deliveries of this key waiting behind it")


class BlockedKeys(SQLModel):
    """``GET /webhooks/{id}/blocked-keys``: per-key order, the operator's view."""

    webhook_id: int
    ordering: Ordering
    queues: int = Field(description="keys with a pending delivery")
    waiting: int = Field(description="deliveries waiting behind the head of their key")
    blocked_keys: int = Field(description="keys whose head has failed at least once")
    blocked_waiting: int = Field(description="deliveries waiting behind those heads")
    oldest_head: BlockedKeyOut | None = Field(description="the oldest failing head")
    items: list[BlockedKeyOut] = Field(description="the failing heads, oldest first")
    limit: int
    offset: int


class RecoverResult(SQLModel):
    recovered: int = Field(description="failed deliveries queued again")


class EventOut(SQLModel):
    """The WebSocket's event message, minus nothing."""

    id: int
    type: str
    payload: Any
    timestamp: str
    cursor: str
    key: str | None = Field(description="the event's key (outbox track --key, publish key=)")
    traceparent: str | None = Field(
        description="the writer's W3C trace context (SET LOCAL outbox.traceparent)"
    )


class EventPage(SQLModel):
    items: list[EventOut]
    next_cursor: str = Field(description="pass as since= to continue; same cursor as /ws")
    has_more: bool = Field(
        description="asc: false once the page reached the end of the log; "
        "desc: false once no older event is left"
    )
    prev_cursor: str | None = Field(
        default=None, description="desc: pass as before= for the next older page"
    )


class TrackedRule(SQLModel):
    table: str
    operation: Literal["insert", "update", "delete"]


class EventTypeOut(SQLModel):
    event_type: str
    seen: bool = Field(description="among the most recent events")
    last_seen_at: datetime | None
    tracked: list[TrackedRule]


class EventTypeList(SQLModel):
    items: list[EventTypeOut]
    window: int = Field(description="how many of the most recent events were looked at")


class FieldError(SQLModel):
    field: str
    message: str


class ErrorOut(SQLModel):
    detail: str
    errors: list[FieldError] | None = None


# --- /health --------------------------------------------------------------------


class HealthDispatcher(DispatcherStatus):
    """The dispatcher as this process sees it, with the database's lag behind it."""

    lag: dict[str, Any] | None


class HealthOut(BaseModel):
    """``GET /health``: ``Service.status()`` (relay/service.py) plus the database's view."""

    status: Literal["ok", "degraded"]
    problems: list[str]
    database: dict[str, str]
    listener: str
    role: str
    instance: str
    feed: FeedStatus
    dispatcher: HealthDispatcher
    sinks: dict[str, Any]
    capture: dict[str, Any]
