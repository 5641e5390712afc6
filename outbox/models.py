"""SQLModel table models for schema ``outbox``: a typed view of the SQL.

``sql/001_schema.sql`` is the one source of truth: these classes only map
onto it (``tests/db/test_models.py`` proves that columns, types, nullability,
identities and primary keys agree with the live schema). Never call
``SQLModel.metadata.create_all`` for them; run ``outbox migrate``.

Database defaults are declared as ``server_default`` so that an INSERT
through a session leaves them to Postgres (ids, ``created_at``, the event's
``xid``) instead of sending a Python value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Identity,
    Integer,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, OID, TIMESTAMP
from sqlalchemy.types import UserDefinedType
from sqlmodel import Field, SQLModel

SCHEMA = "outbox"


class XID8(UserDefinedType[int]):
    """Postgres ``xid8`` (a 64-bit transaction id). psycopg has no loader for
    it and returns text, so values are converted to ``int`` on the way out."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: Any) -> int | None:
            return None if value is None else int(value)

        return process


def _ts(*, nullable: bool, now: bool = False) -> Any:
    return Column(
        TIMESTAMP(timezone=True), nullable=nullable, server_default=func.now() if now else None
    )


def _text(*, nullable: bool) -> Any:
    return Column(Text, nullable=nullable)


def _text_array(*, nullable: bool, empty_default: bool = False) -> Any:
    return Column(
        ARRAY(Text), nullable=nullable, server_default=text("'{}'") if empty_default else None
    )


def _attnums() -> Any:
    """Columns by identity (``pg_attribute.attnum``), so renames do not matter."""
    return Column(ARRAY(SmallInteger), nullable=False, server_default=text("'{}'"))


def _count(default: str = "0") -> Any:
    return Column(BigInteger, nullable=False, server_default=text(default))


def _int(*, nullable: bool, default: str | None = None) -> Any:
    return Column(Integer, nullable=nullable, server_default=text(default) if default else None)


def _owner(target: str) -> Any:
    """A required reference to the owning row; the schema cascades deletes."""
    return Column(BigInteger, ForeignKey(target, ondelete="CASCADE"), nullable=False)


def _identity_pk(*, always: bool) -> Any:
    return Column(BigInteger, Identity(always=always), primary_key=True)


class Event(SQLModel, table=True):
    """``outbox.events``: the log. Write it with ``outbox.publish``."""

    __tablename__ = "events"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger, primary_key=True, server_default=text("outbox.next_event_id()")
        ),
    )
    xid: int | None = Field(
        default=None,
        sa_column=Column(XID8(), nullable=False, server_default=text("pg_current_xact_id()")),
    )
    event_type: str = Field(sa_column=_text(nullable=False))
    payload: Any = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    key: str | None = Field(default=None, sa_column=_text(nullable=True))
    traceparent: str | None = Field(default=None, sa_column=_text(nullable=True))
    tracestate: str | None = Field(default=None, sa_column=_text(nullable=True))


class CaptureTable(SQLModel, table=True):
    """``outbox.capture_tables``: a tracked table by identity (``relid``, NULL
    once dropped) and its column policy, shared by all of its rules."""

    __tablename__ = "capture_tables"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(default=None, sa_column=_identity_pk(always=True))
    relid: int | None = Field(default=None, sa_column=Column(OID, nullable=True, unique=True))
    table_schema: str = Field(sa_column=_text(nullable=False))
    table_name: str = Field(sa_column=_text(nullable=False))
    previous_names: list[str] = Field(
        default_factory=list, sa_column=_text_array(nullable=False, empty_default=True)
    )
    policy: str = Field(
        default="all", sa_column=Column(Text, nullable=False, server_default=text("'all'"))
    )
    policy_attnums: list[int] = Field(default_factory=list, sa_column=_attnums())
    policy_columns: list[str] = Field(
        default_factory=list, sa_column=_text_array(nullable=False, empty_default=True)
    )
    columns_seen: Any = Field(
        default=None, sa_column=Column(JSONB, nullable=False, server_default=text("'[]'"))
    )
    retired_exclusions: list[str] = Field(
        default_factory=list, sa_column=_text_array(nullable=False, empty_default=True)
    )
    created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    updated_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))


class CaptureRule(SQLModel, table=True):
    """``outbox.capture_rules``: written by ``outbox track``, one trigger per row.
    ``*_attnums`` hold the columns by identity; ``*_columns`` their current names."""

    __tablename__ = "capture_rules"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(default=None, sa_column=_identity_pk(always=True))
    table_schema: str = Field(sa_column=_text(nullable=False))
    table_name: str = Field(sa_column=_text(nullable=False))
    operation: str = Field(sa_column=_text(nullable=False))
    event_type: str = Field(sa_column=_text(nullable=False))
    of_columns: list[str] = Field(
        default_factory=list, sa_column=_text_array(nullable=False, empty_default=True)
    )
    when_sql: str | None = Field(default=None, sa_column=_text(nullable=True))
    trigger_name: str = Field(sa_column=_text(nullable=False))
    function_name: str = Field(sa_column=_text(nullable=False))
    definition_hash: str = Field(sa_column=_text(nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    key_columns: list[str] = Field(
        default_factory=list, sa_column=_text_array(nullable=False, empty_default=True)
    )
    table_id: int = Field(sa_column=_owner("outbox.capture_tables.id"))
    level: str = Field(sa_column=_text(nullable=False))
    of_attnums: list[int] = Field(default_factory=list, sa_column=_attnums())
    key_attnums: list[int] = Field(default_factory=list, sa_column=_attnums())


class Webhook(SQLModel, table=True):
    """``outbox.webhooks``: one subscription. ``secret`` never leaves via the API
    except on create and rotate."""

    __tablename__ = "webhooks"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(default=None, sa_column=_identity_pk(always=False))
    name: str = Field(sa_column=_text(nullable=False))
    url: str = Field(sa_column=_text(nullable=False))
    event_types: list[str] = Field(sa_column=_text_array(nullable=False))
    secret: str = Field(sa_column=_text(nullable=False))
    previous_secret: str | None = Field(default=None, sa_column=_text(nullable=True))
    previous_secret_expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    payload_format: str = Field(
        default="raw", sa_column=Column(Text, nullable=False, server_default=text("'raw'"))
    )
    description: str | None = Field(default=None, sa_column=_text(nullable=True))
    is_active: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default=text("true"))
    )
    disabled_reason: str | None = Field(default=None, sa_column=_text(nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    updated_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    last_triggered_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_success_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    failing_since: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    success_count: int = Field(default=0, sa_column=_count())
    failure_count: int = Field(default=0, sa_column=_count())
    seed_signature: str = Field(
        default="old", sa_column=Column(Text, nullable=False, server_default=text("'old'"))
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        sa_column=Column(JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    )
    # 'key': deliveries of keyed events go one at a time per key (sql/012).
    ordering: str = Field(
        default="none", sa_column=Column(Text, nullable=False, server_default=text("'none'"))
    )


class Delivery(SQLModel, table=True):
    """``outbox.deliveries``: one event for one webhook. The payload is not
    copied here; join ``outbox.events`` on ``event_id``."""

    __tablename__ = "deliveries"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(default=None, sa_column=_identity_pk(always=False))
    webhook_id: int = Field(sa_column=_owner("outbox.webhooks.id"))
    event_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    event_type: str = Field(sa_column=_text(nullable=False))
    status: str = Field(
        default="pending",
        sa_column=Column(Text, nullable=False, server_default=text("'pending'")),
    )
    attempt_number: int = Field(default=0, sa_column=_int(nullable=False, default="0"))
    due_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    next_retry_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    locked_by: str | None = Field(default=None, sa_column=_text(nullable=True))
    response_status: int | None = Field(default=None, sa_column=_int(nullable=True))
    response_body: str | None = Field(default=None, sa_column=_text(nullable=True))
    error_message: str | None = Field(default=None, sa_column=_text(nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    updated_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    delivered_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    replay: int = Field(default=0, sa_column=_int(nullable=False, default="0"))
    # The (webhook, key) queue this delivery is in: set only for webhooks with
    # ordering 'key'; while it waits behind the queue's head, due_at is infinity.
    key: str | None = Field(default=None, sa_column=_text(nullable=True))


class DeliveryAttempt(SQLModel, table=True):
    """``outbox.delivery_attempts``: one HTTP attempt of a delivery."""

    __tablename__ = "delivery_attempts"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(default=None, sa_column=_identity_pk(always=True))
    delivery_id: int = Field(sa_column=_owner("outbox.deliveries.id"))
    attempt_number: int = Field(sa_column=_int(nullable=False))
    started_at: datetime = Field(sa_column=_ts(nullable=False))
    duration_ms: float = Field(sa_column=Column(Double, nullable=False))
    outcome: str = Field(sa_column=_text(nullable=False))
    response_status: int | None = Field(default=None, sa_column=_int(nullable=True))
    response_body: str | None = Field(default=None, sa_column=_text(nullable=True))
    error_class: str | None = Field(default=None, sa_column=_text(nullable=True))
    error_message: str | None = Field(default=None, sa_column=_text(nullable=True))
    request_headers: dict[str, str] | None = Field(
        default=None, sa_column=Column(JSONB, nullable=True)
    )
    response_headers: dict[str, str] | None = Field(
        default=None, sa_column=Column(JSONB, nullable=True)
    )


class ApiToken(SQLModel, table=True):
    """``outbox.api_tokens``: only the SHA-256 of a token is stored."""

    __tablename__ = "api_tokens"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(default=None, sa_column=_identity_pk(always=True))
    name: str = Field(sa_column=_text(nullable=False))
    token_hash: str = Field(sa_column=_text(nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    last_used_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    scope: str = Field(
        default="admin", sa_column=Column(Text, nullable=False, server_default=text("'admin'"))
    )
    event_types: list[str] | None = Field(default=None, sa_column=_text_array(nullable=True))


class RelayState(SQLModel, table=True):
    """``outbox.relay_state``: the dispatcher's cursor and the retention watermark."""

    __tablename__ = "relay_state"
    __table_args__ = {"schema": SCHEMA}

    name: str = Field(sa_column=Column(Text, primary_key=True))
    value: str = Field(sa_column=_text(nullable=False))
    updated_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))


class Sink(SQLModel, table=True):
    """``outbox.sinks``: the feed published to a broker (relay/sinks/). ``url``
    may hold a password: the API masks it."""

    __tablename__ = "sinks"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(default=None, sa_column=_identity_pk(always=False))
    name: str = Field(sa_column=_text(nullable=False))
    kind: str = Field(sa_column=_text(nullable=False))
    url: str = Field(sa_column=_text(nullable=False))
    event_types: list[str] = Field(sa_column=_text_array(nullable=False))
    subject: str | None = Field(default=None, sa_column=_text(nullable=True))
    stream: str | None = Field(default=None, sa_column=_text(nullable=True))
    exchange: str | None = Field(default=None, sa_column=_text(nullable=True))
    routing_key: str | None = Field(default=None, sa_column=_text(nullable=True))
    description: str | None = Field(default=None, sa_column=_text(nullable=True))
    is_active: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default=text("true"))
    )
    cursor: str = Field(sa_column=_text(nullable=False))
    published_count: int = Field(default=0, sa_column=_count())
    publish_rate: float = Field(
        default=0.0, sa_column=Column(Double, nullable=False, server_default=text("0"))
    )
    last_published_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_error: str | None = Field(default=None, sa_column=_text(nullable=True))
    last_error_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    owner: str | None = Field(default=None, sa_column=_text(nullable=True))
    owner_seen_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))
    updated_at: datetime | None = Field(default=None, sa_column=_ts(nullable=False, now=True))


TABLE_MODELS: tuple[type[SQLModel], ...] = (
    Event,
    CaptureTable,
    CaptureRule,
    Webhook,
    Delivery,
    DeliveryAttempt,
    ApiToken,
    RelayState,
    Sink,
)
