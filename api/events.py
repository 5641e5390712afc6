"""``/events`` (replay and backfill), ``/event-types`` and ``/metrics``.

``GET /events`` reads the log with the relay's own feed reader, so it never
skips an event that commits late, and its cursors are the WebSocket's: a
client may backfill here and resume live on ``/ws?since=`` (or the other way
round) without a gap.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from outbox.api.endpoint import Doc, endpoint, json_response, parse_query, sql, state_of
from outbox.api.errors import ApiError, ValidationFailed
from outbox.api.schemas import (
    EventOut,
    EventPage,
    EventQuery,
    EventTypeList,
    EventTypeOut,
    TrackedRule,
)
from outbox.cursor import Cursor
from outbox.errors import CursorError
from outbox.events import Matcher
from outbox.relay.feed import read_batch
from outbox.relay.retention import cursor_expired

# With a filter that matches little, keep reading until something matches,
# but never scan more than this many pages in one request.
MAX_PAGES_PER_REQUEST = 10
# /event-types looks at this many of the most recent events.
EVENT_TYPES_WINDOW = 100_000
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
EXPIRED = (
    "cursor expired: events after it were removed by retention (OUTBOX_RETENTION); "
    "start again without since= (from the oldest retained event)"
)


@endpoint(
    Doc(
        "Read the event log from a cursor",
        {200: EventPage},
        query=EventQuery,
        errors={410: "the cursor is older than retention"},
        description="No since= starts at the oldest retained event. Pass next_cursor "
        "as since= to continue; the cursors are the same as /ws's, so "
        "/ws?since=next_cursor continues live. Events may repeat (same id), "
        "never go missing. event_type takes comma-separated names or "
        "patterns (user.*, *). 410 when the cursor is older than retention.",
    )
)
async def list_events(request: Request) -> Response:
    q = parse_query(request, EventQuery)
    cursor = Cursor(0)
    if q.since:
        try:
            cursor = Cursor.decode(q.since)
        except CursorError:
            raise ValidationFailed.one(
                "since", "malformed cursor: use an event's cursor or a next_cursor"
            ) from None
    match = Matcher(q.patterns())
    items: list[EventOut] = []
    has_more = True
    async with state_of(request).pool.connection() as db:
        if q.since and await cursor_expired(db, cursor):
            raise ApiError(410, EXPIRED)
        for _ in range(MAX_PAGES_PER_REQUEST):
            batch = await read_batch(db, cursor, q.limit)
            cursor = batch.end
            items += [EventOut.model_validate(e.as_dict()) for e in batch.events if match(e.type)]
            if not batch.events:
                has_more = False
                break
            if items:
                break
    return json_response(EventPage(items=items, next_cursor=cursor.encode(), has_more=has_more))


@endpoint(
    Doc(
        "Event types seen recently and tracked by capture rules",
        {200: EventTypeList},
        description=f"seen: among the {EVENT_TYPES_WINDOW} most recent events; "
        "tracked: the capture rules (outbox track) that produce the type.",
    )
)
async def list_event_types(request: Request) -> Response:
    found: dict[str, EventTypeOut] = {}
    async with state_of(request).pool.connection() as db:
        cur = await db.execute(sql("event_types_seen"), {"window": EVENT_TYPES_WINDOW})
        for event_type, last_seen_at, _ in await cur.fetchall():
            found[event_type] = EventTypeOut(
                event_type=event_type, seen=True, last_seen_at=last_seen_at, tracked=[]
            )
        cur = await db.execute(sql("event_types_tracked"))
        for event_type, schema, table, operation in await cur.fetchall():
            entry = found.setdefault(
                event_type,
                EventTypeOut(event_type=event_type, seen=False, last_seen_at=None, tracked=[]),
            )
            entry.tracked.append(TrackedRule(table=f"{schema}.{table}", operation=operation))
    items = [found[k] for k in sorted(found)]
    return json_response(EventTypeList(items=items, window=EVENT_TYPES_WINDOW))


@endpoint(
    Doc(
        "Prometheus metrics",
        {200: PROMETHEUS},
        description="The process's counters and gauges (events read, feed lag, "
        "attempt latency, WebSocket clients, ...) plus delivery rows by status "
        "and the delivery queue depth from the database.",
    )
)
async def metrics(request: Request) -> Response:
    st = state_of(request)
    text = st.metrics.render()
    async with st.pool.connection() as db:
        cur = await db.execute(sql("metrics_deliveries"))
        row = await cur.fetchone()
    assert row is not None
    pending, success, failed, due = row
    text += _gauge(
        text,
        "outbox_deliveries",
        "Delivery rows by status (within the retention window)",
        {'status="pending"': pending, 'status="success"': success, 'status="failed"': failed},
    )
    text += _gauge(
        text, "outbox_delivery_queue_depth", "Pending deliveries that are due now", {"": due}
    )
    return Response(text, media_type=PROMETHEUS)


def _gauge(existing: str, name: str, help: str, values: dict[str, int]) -> str:
    """Prometheus lines for a gauge, unless a component already exports ``name``."""
    if f"# TYPE {name} " in existing:
        return ""
    lines = [f"# HELP {name} {help}", f"# TYPE {name} gauge"]
    lines += [
        f"{name}{{{labels}}} {v}" if labels else f"{name} {v}" for labels, v in values.items()
    ]
    return "\n".join(lines) + "\n"


routes: list[BaseRoute] = [
    Route("/events", list_events, methods=["GET"]),
    Route("/event-types", list_event_types, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
