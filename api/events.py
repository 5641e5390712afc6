"""``/events`` (replay and backfill), ``/event-types`` and ``/metrics``.

``GET /events`` reads the log with the relay's own feed reader, so it never
skips an event that commits late, and its cursors are the WebSocket's: a
client may backfill here and resume live on ``/ws?since=`` (or the other way
round) without a gap.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from outbox.api import health
from outbox.api.endpoint import (
    Doc,
    endpoint,
    json_response,
    parse_query,
    path_id,
    principal_of,
    sql,
    state_of,
)
from outbox.api.errors import ApiError, ValidationFailed
from outbox.api.schemas import (
    EventDeliveryList,
    EventDeliveryOut,
    EventOut,
    EventPage,
    EventQuery,
    EventTypeList,
    EventTypeOut,
    TrackedRule,
)
from outbox.api.state import AppState
from outbox.cursor import Cursor, sql_params
from outbox.errors import CursorError, CursorExpired
from outbox.events import Matcher, restrict
from outbox.relay.feed import head, read_batch
from outbox.relay.metrics import CONTENT_TYPE
from outbox.relay.retention import check_cursor
from outbox.rows import record_row

# With a filter that matches little, keep reading until something matches,
# but never scan more than this many pages in one request.
MAX_PAGES_PER_REQUEST = 10
# /event-types looks at this many of the most recent events.
EVENT_TYPES_WINDOW = 100_000
EVENT_NOT_FOUND = "Event not found"
PROMETHEUS = CONTENT_TYPE
EXPIRED = (
    "cursor expired: events after it were removed by retention (OUTBOX_RETENTION); "
    "start again without since= (from the oldest retained event)"
)


class _Seen(NamedTuple):
    event_type: str
    last_seen_at: datetime
    recent: int


class _Tracked(NamedTuple):
    event_type: str
    table_schema: str
    table_name: str
    operation: str


class _DeliveryCounts(NamedTuple):
    pending: int
    success: int
    failed: int
    due: int
    waiting: int


@endpoint(
    Doc(
        "Read the event log from a cursor",
        {200: EventPage},
        query=EventQuery,
        errors={410: "the cursor is older than retention"},
        description="No since= (or an empty one) starts at the oldest retained event. "
        "Pass next_cursor as since= to continue; the cursors are the same as /ws's, so "
        "/ws?since=next_cursor continues live. Events may repeat (same id), "
        "never go missing. event_type takes comma-separated names or "
        "patterns (user.*, *). 410 when the cursor is older than retention. "
        "order=desc reads history newest first: the newest events that before= "
        "(default: now) has emitted; its next_cursor continues live on /ws with no "
        "gap and no repeat, its prev_cursor (as before=) pages further back.",
    )
)
async def list_events(request: Request) -> Response:
    q = parse_query(request, EventQuery)
    if q.order == "desc":
        return await _list_newest_first(request, q)
    # An empty since= (a client's empty saved cursor) is the start, like none.
    cursor = _cursor(q.since, "since") if q.since else Cursor(0)
    match = _visible(request, Matcher(q.patterns()))
    items: list[EventOut] = []
    has_more = True
    async with state_of(request).pool.connection() as db:
        if q.since:
            try:
                await check_cursor(db, cursor)
            except CursorExpired:
                raise ApiError(410, EXPIRED) from None
        for _ in range(MAX_PAGES_PER_REQUEST):
            batch = await read_batch(db, cursor, q.limit)
            cursor = batch.end
            items += [EventOut.model_validate(e.as_dict()) for e in batch.events if match(e.type)]
            # A short page is the end of the log as of this read (a full one
            # may be followed by more, so only it says has_more).
            if not batch.more:
                has_more = False
                break
            if items:
                break
    return json_response(EventPage(items=items, next_cursor=cursor.encode(), has_more=has_more))


def _visible(request: Request, match: Matcher) -> Matcher:
    """A feed token with event patterns sees only those types."""
    principal = principal_of(request)
    return restrict(match, principal.sees() if principal else None)


def _cursor(text: str, field: str) -> Cursor:
    try:
        return Cursor.decode(text)
    except CursorError:
        raise ValidationFailed.one(
            field, "malformed cursor: use an event's cursor or a next_cursor"
        ) from None


async def _list_newest_first(request: Request, q: EventQuery) -> Response:
    """History for a console: the newest events ``before`` has emitted, newest first.

    Without ``before``, the cursor is "now" (:func:`head`) and comes back as
    ``next_cursor``: ``/ws?since=next_cursor`` then sends exactly the events
    this answer could not contain. ``prev_cursor`` continues further back.
    """
    match = _visible(request, Matcher(q.patterns()))
    items: list[EventOut] = []
    async with state_of(request).pool.connection() as db:
        top = _cursor(q.before, "before") if q.before else await head(db)
        cursor = top
        has_more = True
        for _ in range(MAX_PAGES_PER_REQUEST):
            async with db.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    sql("events_emitted_desc"), {**sql_params(cursor), "limit": q.limit}
                )
                rows = await cur.fetchall()
            for r in rows:
                if match(r["type"]):
                    # Resuming after this event: everything above its id, and
                    # whatever top saw in progress.
                    after = Cursor(r["id"], top.xmax, top.pending).encode()
                    items.append(
                        EventOut.model_validate(
                            {**r, "timestamp": r["created_at"].isoformat(), "cursor": after}
                        )
                    )
            if rows:
                cursor = Cursor(rows[-1]["id"] - 1, top.xmax, top.pending)
            if len(rows) < q.limit:
                has_more = False
                break
            if items:
                break
    return json_response(
        EventPage(
            items=items[: q.limit],
            next_cursor=top.encode(),
            has_more=has_more,
            prev_cursor=cursor.encode() if has_more else None,
        )
    )


@endpoint(
    Doc(
        "The deliveries of one event, to every webhook",
        {200: EventDeliveryList},
        errors={404: "Event not found"},
        description="Replays included (replay > 0). Empty when no webhook matched "
        "the event (or its deliveries were removed by retention).",
    )
)
async def event_deliveries(request: Request) -> Response:
    event_id = path_id(request, "event_id")
    async with state_of(request).pool.connection() as db:
        async with db.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql("event_deliveries"), {"id": event_id})
            rows = await cur.fetchall()
        if not rows:
            exists = await db.execute(sql("event_exists"), {"id": event_id})
            if await exists.fetchone() is None:
                raise ApiError(404, EVENT_NOT_FOUND)
    return json_response(
        EventDeliveryList(items=[EventDeliveryOut.model_validate(r) for r in rows])
    )


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
        async with db.cursor(row_factory=record_row(_Seen)) as seen:
            await seen.execute(sql("event_types_seen"), {"window": EVENT_TYPES_WINDOW})
            for s in await seen.fetchall():
                found[s.event_type] = EventTypeOut(
                    event_type=s.event_type, seen=True, last_seen_at=s.last_seen_at, tracked=[]
                )
        async with db.cursor(row_factory=record_row(_Tracked)) as tracked:
            await tracked.execute(sql("event_types_tracked"))
            for t in await tracked.fetchall():
                entry = found.setdefault(
                    t.event_type,
                    EventTypeOut(
                        event_type=t.event_type, seen=False, last_seen_at=None, tracked=[]
                    ),
                )
                entry.tracked.append(
                    TrackedRule(table=f"{t.table_schema}.{t.table_name}", operation=t.operation)
                )
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
    async with (
        st.pool.connection() as db,
        db.cursor(row_factory=record_row(_DeliveryCounts)) as cur,
    ):
        await cur.execute(sql("metrics_deliveries"))
        n = await cur.fetchone()
    assert n is not None
    # The same verdicts as /health: a part that makes no progress is degraded.
    verdict = await health.assess(st)
    # No await from here to the render: the callback gauges read this scrape.
    scrape = st.scrape
    scrape.deliveries = {"pending": n.pending, "success": n.success, "failed": n.failed}
    scrape.due = n.due
    scrape.waiting = n.waiting
    scrape.degraded = {part: float(bad) for part, bad in verdict.parts.items()}
    return Response(st.metrics.render(), media_type=PROMETHEUS)


def export_database_gauges(state: AppState) -> None:
    """The gauges ``GET /metrics`` reads from the database at each scrape,
    exported as callback gauges over what that scrape read."""
    scrape = state.scrape
    state.metrics.gauge(
        "outbox_deliveries",
        "Delivery rows by status (within the retention window)",
        lambda: {f"status={k}": float(v) for k, v in scrape.deliveries.items()},
    )
    state.metrics.gauge(
        "outbox_delivery_queue_depth",
        "Pending deliveries that are due now",
        lambda: float(scrape.due),
    )
    state.metrics.gauge(
        "outbox_deliveries_waiting",
        "Pending deliveries waiting behind the head of their key (ordering key)",
        lambda: float(scrape.waiting),
    )
    state.metrics.gauge(
        "outbox_degraded",
        "1 while the part is degraded (no progress while events wait, ids went backwards,"
        " unreachable); /health says why",
        lambda: {f"part={k}": v for k, v in scrape.degraded.items()},
    )


routes: list[BaseRoute] = [
    Route("/events", list_events, methods=["GET"]),
    Route("/events/{event_id}/deliveries", event_deliveries, methods=["GET"]),
    Route("/event-types", list_event_types, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
