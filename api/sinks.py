"""``/sinks``: broker subscriptions (NATS JetStream, RabbitMQ) and their progress.

A sink's settings are checked by ``outbox.relay.sinks.spec`` (the same check
``outbox sink add`` runs), stored in ``outbox.sinks``, and picked up by the
publishers' supervisors within a second (relay/sinks/runner.py); a change
restarts the sink's publisher with the new settings. Creating, changing and
deleting a sink needs an admin token (broker URLs are operator
configuration). The URL's password is never shown: responses mask it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
from psycopg.rows import dict_row
from pydantic import Field
from sqlmodel import SQLModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from outbox.api.endpoint import (
    Doc,
    endpoint,
    json_response,
    parse_body,
    parse_query,
    path_id,
    state_of,
)
from outbox.api.errors import ApiError, ValidationFailed
from outbox.api.schemas import (
    Description,
    EventPattern,
    Limit,
    Name,
    Offset,
    QueryModel,
    RequestModel,
)
from outbox.cursor import Cursor
from outbox.errors import CursorError
from outbox.relay.feed import head, measure_lag
from outbox.relay.sinks.base import redact_url
from outbox.relay.sinks.spec import SinkSettings, SpecError, check_settings, start_cursor
from outbox.sqlfiles import query

AsyncConn = psycopg.AsyncConnection[Any]
SINK_NOT_FOUND = "Sink not found"
NOT_FOUND = {404: SINK_NOT_FOUND}
NAME_TAKEN = "a sink with this name exists"

Template = Annotated[str, Field(max_length=255)]
Since = Annotated[
    str,
    Field(
        max_length=8192,
        description="where reading starts: 'now' (default), 'beginning', or a cursor "
        "(from /events, /ws or another sink)",
    ),
]


def sql(name: str) -> str:
    return query(name, "sinks.sql")


# -- models -------------------------------------------------------------------------


class SinkCreate(RequestModel):
    """``POST /sinks``. ``kind`` follows from the URL's scheme when omitted.

    nats: ``subject`` (default ``outbox.{type}``), ``stream`` (expected, and
    created when missing). amqp: ``exchange`` (default ``amq.topic``; ``""``
    is the default exchange) and ``routing_key`` (default ``{type}``).
    Templates take ``{type}`` and ``{key}``.
    """

    name: Name
    kind: Literal["nats", "amqp"] | None = None
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    event_types: Annotated[list[EventPattern], Field(min_length=1, max_length=100)] = ["*"]
    subject: Template | None = None
    stream: Annotated[str, Field(max_length=255)] | None = None
    exchange: Annotated[str, Field(max_length=255)] | None = None
    routing_key: Template | None = None
    description: Description | None = None
    is_active: bool = True
    since: Since | None = None


class SinkUpdate(RequestModel):
    """``PATCH /sinks/{id}``: only the fields given change (``kind`` cannot).

    ``since`` moves the cursor (replay from a cursor or the beginning, or skip
    to now); the publisher restarts from there.
    """

    name: Name | None = None
    url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    event_types: Annotated[list[EventPattern], Field(min_length=1, max_length=100)] | None = None
    subject: Template | None = None
    stream: Annotated[str, Field(max_length=255)] | None = None
    exchange: Annotated[str, Field(max_length=255)] | None = None
    routing_key: Template | None = None
    description: Description | None = None
    is_active: bool | None = None
    since: Since | None = None


class SinkQuery(QueryModel):
    limit: Limit = 50
    offset: Offset = 0


class LagOut(SQLModel):
    events: int = Field(description="events committed after the cursor (any type), up to a cap")
    oldest_seconds: float
    capped: bool


class SinkOut(SQLModel):
    """A sink: its settings (the URL without its password) and its progress."""

    id: int
    name: str
    kind: str
    url: str = Field(description="the broker URL, its password masked")
    event_types: list[str]
    subject: str | None
    stream: str | None
    exchange: str | None
    routing_key: str | None
    description: str | None
    is_active: bool
    cursor: str = Field(
        description="where the publisher resumes; moves only after the broker acked"
    )
    lag: LagOut | None = Field(description="how far the cursor is behind the feed")
    published_count: int
    rate: float = Field(description="events/s published over the last few seconds")
    last_published_at: datetime | None
    last_error: str | None = Field(description="why publishing fails now (null once it works)")
    last_error_at: datetime | None
    owner: str | None = Field(description="the outbox serve process that publishes it")
    owner_seen_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SinkPage(SQLModel):
    items: list[SinkOut]
    total: int
    limit: int
    offset: int


# -- helpers ------------------------------------------------------------------------


def _checked(settings: SinkSettings) -> SinkSettings:
    try:
        return check_settings(settings)
    except SpecError as exc:
        raise ValidationFailed.one(exc.field, exc.reason) from None


async def _out(db: AsyncConn, row: dict[str, Any]) -> SinkOut:
    try:
        lag = (await measure_lag(db, Cursor.decode(row["cursor"]))).as_dict()
    except CursorError:
        lag = None
    return SinkOut.model_validate(
        {
            **row,
            "url": redact_url(row["url"]),
            "rate": row["publish_rate"],
            "lag": lag,
        }
    )


async def _fetch(db: AsyncConn, sink_id: int) -> dict[str, Any]:
    async with db.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql("sink_get"), {"id": sink_id})
        row = await cur.fetchone()
    if row is None:
        raise ApiError(404, SINK_NOT_FOUND)
    return row


async def _cursor(db: AsyncConn, since: str | None) -> str:
    try:
        return start_cursor(since, await head(db)).encode()
    except SpecError as exc:
        raise ValidationFailed.one(exc.field, exc.reason) from None


def _name_taken(exc: psycopg.errors.UniqueViolation) -> ApiError:
    if exc.diag.constraint_name == "sinks_name_key":
        return ValidationFailed.one("name", NAME_TAKEN)
    raise exc


# -- routes -------------------------------------------------------------------------


@endpoint(
    Doc(
        "Create a sink (admin)",
        {201: SinkOut},
        body=SinkCreate,
        admin=True,
        description="Events matching event_types, committed after `since` (default: now), "
        "are published in commit order, at least once; the cursor moves only after the "
        "broker acknowledged.",
    )
)
async def create_sink(request: Request) -> Response:
    st = state_of(request)
    body = await parse_body(request, SinkCreate)
    assert body is not None
    s = _checked(
        SinkSettings(
            name=body.name,
            kind=body.kind,
            url=body.url,
            event_types=tuple(dict.fromkeys(body.event_types)),
            subject=body.subject,
            stream=body.stream,
            exchange=body.exchange,
            routing_key=body.routing_key,
        )
    )
    async with st.pool.connection() as db:
        params = {
            "name": s.name,
            "kind": s.kind,
            "url": s.url,
            "event_types": list(s.event_types),
            "subject": s.subject,
            "stream": s.stream,
            "exchange": s.exchange,
            "routing_key": s.routing_key,
            "description": body.description,
            "is_active": body.is_active,
            "cursor": await _cursor(db, body.since),
        }
        try:
            cur = await db.execute(sql("sink_insert"), params)
        except psycopg.errors.UniqueViolation as exc:
            raise _name_taken(exc) from None
        row = await cur.fetchone()
        assert row is not None
        out = await _out(db, await _fetch(db, int(row[0])))
    st.sinks.recheck()
    return json_response(out, 201)


@endpoint(Doc("List sinks", {200: SinkPage}, query=SinkQuery, description="Ordered by id."))
async def list_sinks(request: Request) -> Response:
    q = parse_query(request, SinkQuery)
    async with state_of(request).pool.connection() as db:
        async with db.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql("sink_list"), {"limit": q.limit, "offset": q.offset})
            rows = await cur.fetchall()
        cur2 = await db.execute(sql("sink_count"))
        total = await cur2.fetchone()
        items = [await _out(db, r) for r in rows]
    assert total is not None
    return json_response(SinkPage(items=items, total=total[0], limit=q.limit, offset=q.offset))


@endpoint(Doc("Get a sink", {200: SinkOut}, errors=NOT_FOUND))
async def get_sink(request: Request) -> Response:
    sink_id = path_id(request, "sink_id")
    async with state_of(request).pool.connection() as db:
        out = await _out(db, await _fetch(db, sink_id))
    return json_response(out)


@endpoint(
    Doc(
        "Change a sink (admin)",
        {200: SinkOut},
        body=SinkUpdate,
        admin=True,
        errors=NOT_FOUND,
        description="Only the fields given change; the sink's publisher restarts with "
        "them within a second. `since` moves its cursor (a replay, or a skip to now).",
    )
)
async def update_sink(request: Request) -> Response:
    st = state_of(request)
    sink_id = path_id(request, "sink_id")
    body = await parse_body(request, SinkUpdate)
    assert body is not None
    given = body.model_fields_set
    async with st.pool.connection() as db, db.transaction():
        row = await _fetch(db, sink_id)
        merged = _checked(
            SinkSettings(
                name=body.name if body.name is not None else row["name"],
                kind=row["kind"],
                url=body.url if body.url is not None else row["url"],
                event_types=tuple(dict.fromkeys(body.event_types or row["event_types"])),
                subject=body.subject if body.subject is not None else row["subject"],
                stream=body.stream if "stream" in given else row["stream"],
                exchange=body.exchange if body.exchange is not None else row["exchange"],
                routing_key=body.routing_key
                if body.routing_key is not None
                else row["routing_key"],
            )
        )
        params = {
            "id": sink_id,
            "name": body.name,
            "url": body.url,
            "event_types": list(merged.event_types) if body.event_types else None,
            "subject": body.subject,
            "set_stream": "stream" in given,
            "stream": merged.stream,
            "exchange": body.exchange,
            "routing_key": body.routing_key,
            "set_description": "description" in given,
            "description": body.description,
            "is_active": body.is_active,
            "cursor": await _cursor(db, body.since) if body.since is not None else None,
        }
        try:
            await db.execute(sql("sink_update"), params)
        except psycopg.errors.UniqueViolation as exc:
            raise _name_taken(exc) from None
        out = await _out(db, await _fetch(db, sink_id))
    st.sinks.recheck()
    return json_response(out)


@endpoint(
    Doc(
        "Delete a sink (admin)",
        {204: None},
        admin=True,
        errors=NOT_FOUND,
        description="Its publisher stops within a second; what the broker has stays there.",
    )
)
async def delete_sink(request: Request) -> Response:
    st = state_of(request)
    sink_id = path_id(request, "sink_id")
    async with st.pool.connection() as db:
        cur = await db.execute(sql("sink_delete"), {"id": sink_id})
    if cur.rowcount == 0:
        raise ApiError(404, SINK_NOT_FOUND)
    st.sinks.recheck()
    return Response(status_code=204)


routes: list[BaseRoute] = [
    Route("/sinks", create_sink, methods=["POST"]),
    Route("/sinks", list_sinks, methods=["GET"]),
    Route("/sinks/{sink_id}", get_sink, methods=["GET"]),
    Route("/sinks/{sink_id}", update_sink, methods=["PATCH"]),
    Route("/sinks/{sink_id}", delete_sink, methods=["DELETE"]),
]
