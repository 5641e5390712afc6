"""``/webhooks...``: subscriptions, their deliveries, and the operator's verbs.

The seed's routes keep the seed's shapes and status codes (create 201,
delete 204, ``{items, total, limit, offset}`` lists, 404 "Webhook not
found"). Changes take effect at the next dispatch: the dispatcher and the
sender read ``is_active`` and ``event_types`` from the table on every batch.
The secret leaves the server only in the responses of create and
rotate-secret.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import dict_row, scalar_row
from psycopg.types.json import Jsonb
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
    sql,
    state_of,
)
from outbox.api.errors import NOT_FOUND, ApiError, ValidationFailed
from outbox.api.schemas import (
    AttemptList,
    AttemptOut,
    BlockedKeyOut,
    BlockedKeys,
    DeliveryOut,
    DeliveryPage,
    DeliveryQuery,
    PageQuery,
    RecoverRequest,
    RecoverResult,
    ReplayRequest,
    ReplayResult,
    RotatedWebhook,
    RotateRequest,
    RotationOut,
    SkipRequest,
    WebhookCreate,
    WebhookOut,
    WebhookPage,
    WebhookQuery,
    WebhookStats,
    WebhookUpdate,
    WebhookWithSecret,
    merge_patterns,
)
from outbox.cursor import Cursor, sql_params
from outbox.errors import CursorError
from outbox.relay.config import DeliverySettings
from outbox.relay.delivery import ops
from outbox.relay.delivery import store as delivery_db
from outbox.relay.delivery.signing import generate_secret
from outbox.relay.delivery.ssrf import UnsafeURL, check_url
from outbox.rows import record_row

AsyncConn = psycopg.AsyncConnection[Any]
DELIVERY_NOT_FOUND = "Delivery not found"
WEBHOOK_NOT_FOUND = {404: NOT_FOUND}
BOTH_NOT_FOUND = {404: f"{NOT_FOUND} / {DELIVERY_NOT_FOUND}"}
# A name server that does not answer must not hold the request: the sender
# checks every address it connects to anyway.
URL_CHECK_TIMEOUT = 5.0


async def _check_url(url: str, settings: DeliverySettings) -> None:
    try:
        async with asyncio.timeout(URL_CHECK_TIMEOUT):
            await check_url(url, settings.webhook_allow_networks)
    except UnsafeURL as exc:
        raise ValidationFailed.one("url", exc.reason) from None
    except TimeoutError:
        return


async def _fetch_webhook(db: AsyncConn, webhook_id: int, *, secret: bool = False) -> dict[str, Any]:
    name = "webhook_get_with_secret" if secret else "webhook_get"
    async with db.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql(name), {"id": webhook_id})
        row = await cur.fetchone()
    if row is None:
        raise ApiError(404, NOT_FOUND)
    return row


async def _require_webhook(db: AsyncConn, webhook_id: int) -> None:
    cur = await db.execute(sql("webhook_exists"), {"id": webhook_id})
    if await cur.fetchone() is None:
        raise ApiError(404, NOT_FOUND)


async def _fetch_delivery(db: AsyncConn, webhook_id: int, delivery_id: int) -> DeliveryOut:
    async with db.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql("delivery_one"), {"webhook_id": webhook_id, "id": delivery_id})
        row = await cur.fetchone()
    if row is None:
        raise ApiError(404, DELIVERY_NOT_FOUND)
    return DeliveryOut.model_validate(row)


# -- the seed's routes --------------------------------------------------------


@endpoint(
    Doc(
        "Create a webhook",
        {201: WebhookWithSecret},
        body=WebhookCreate,
        description="The response is the only place the secret is ever shown "
        "(a secret is generated when none is given).",
    )
)
async def create_webhook(request: Request) -> Response:
    st = state_of(request)
    body = await parse_body(request, WebhookCreate)
    assert body is not None
    patterns = merge_patterns(body.event_type, body.event_types)
    if patterns is None:
        raise ValidationFailed.one("event_type", "give event_type or event_types")
    await _check_url(body.url, st.settings.delivery)
    params = {
        "name": body.name,
        "url": body.url,
        "event_types": patterns,
        "secret": body.secret or generate_secret(),
        "payload_format": body.payload_format,
        "description": body.description,
        "is_active": body.is_active,
        "headers": Jsonb(body.headers),
        "ordering": body.ordering,
    }
    async with st.pool.connection() as db, db.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql("webhook_insert"), params)
        row = await cur.fetchone()
    assert row is not None
    out = WebhookWithSecret.from_row(row)
    return json_response(out, 201)


@endpoint(
    Doc(
        "List webhooks",
        {200: WebhookPage},
        query=WebhookQuery,
        description="Ordered by id. event_type=NAME finds the webhooks that receive "
        "NAME (through exact, prefix.* or * subscriptions); a pattern finds itself.",
    )
)
async def list_webhooks(request: Request) -> Response:
    q = parse_query(request, WebhookQuery)
    params = {
        "is_active": q.is_active,
        "event_type": q.event_type,
        "exact": q.event_type is not None and not q.event_type.endswith("*"),
        "limit": q.limit,
        "offset": q.offset,
    }
    async with state_of(request).pool.connection() as db:
        async with db.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql("webhook_list"), params)
            rows = await cur.fetchall()
        async with db.cursor(row_factory=scalar_row) as count:
            await count.execute(sql("webhook_count"), params)
            total = await count.fetchone()
    assert total is not None
    page = WebhookPage(
        items=[WebhookOut.from_row(r) for r in rows],
        total=total,
        limit=q.limit,
        offset=q.offset,
    )
    return json_response(page)


@endpoint(Doc("Webhook and delivery totals", {200: WebhookStats}))
async def webhook_stats(request: Request) -> Response:
    async with (
        state_of(request).pool.connection() as db,
        db.cursor(row_factory=dict_row) as cur,
    ):
        await cur.execute(sql("webhook_stats"))
        row = await cur.fetchone()
    assert row is not None
    finished = row["successful_deliveries"] + row["failed_deliveries"]
    rate = round(100.0 * row["successful_deliveries"] / finished, 2) if finished else 0.0
    return json_response(WebhookStats(**row, success_rate=rate))


@endpoint(Doc("Get a webhook (never its secret)", {200: WebhookOut}, errors=WEBHOOK_NOT_FOUND))
async def get_webhook(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    async with state_of(request).pool.connection() as db:
        row = await _fetch_webhook(db, webhook_id)
    return json_response(WebhookOut.from_row(row))


@endpoint(
    Doc(
        "Update a webhook",
        {200: WebhookOut},
        body=WebhookUpdate,
        errors=WEBHOOK_NOT_FOUND,
        description="Only the fields given change; the change applies from the "
        "next dispatch. A new secret replaces the old one at once (use "
        "rotate-secret for an overlap).",
    )
)
async def update_webhook(request: Request) -> Response:
    st = state_of(request)
    webhook_id = path_id(request, "webhook_id")
    body = await parse_body(request, WebhookUpdate)
    assert body is not None
    given = body.model_fields_set
    if "event_type" in given and "event_types" not in given:
        patterns: list[str] | None = [body.event_type] if body.event_type else None
    else:
        patterns = merge_patterns(body.event_type, body.event_types)
    if body.url is not None:
        await _check_url(body.url, st.settings.delivery)
    params = {
        "id": webhook_id,
        "name": body.name,
        "url": body.url,
        "event_types": patterns,
        "secret": body.secret,
        "set_description": "description" in given,
        "description": body.description,
        "payload_format": body.payload_format,
        "is_active": body.is_active,
        "headers": None if body.headers is None else Jsonb(body.headers),
        "ordering": body.ordering,
    }
    async with st.pool.connection() as db, db.transaction():
        cur = await db.execute(sql("webhook_update"), params)
        if cur.rowcount == 0:
            raise ApiError(404, NOT_FOUND)
        if body.ordering == "none":
            # The UPDATE above holds the webhook's lock (per-key order).
            await ops.unorder_waiting(db, webhook_id)
        row = await _fetch_webhook(db, webhook_id)
    return json_response(WebhookOut.from_row(row))


@endpoint(
    Doc(
        "Delete a webhook with its delivery history",
        {204: None},
        errors=WEBHOOK_NOT_FOUND,
        description="Deliveries and attempts of the webhook are deleted with it "
        "(the schema cascades). Deactivate it instead to keep the history.",
    )
)
async def delete_webhook(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    async with state_of(request).pool.connection() as db:
        cur = await db.execute(sql("webhook_delete"), {"id": webhook_id})
    if cur.rowcount == 0:
        raise ApiError(404, NOT_FOUND)
    return Response(status_code=204)


@endpoint(
    Doc(
        "List a webhook's deliveries",
        {200: DeliveryPage},
        query=DeliveryQuery,
        errors=WEBHOOK_NOT_FOUND,
        description="Ordered by id: oldest first (order=asc, the default), so pages "
        "stay put while new deliveries arrive, or newest first (order=desc); "
        "payload comes from the event.",
    )
)
async def list_deliveries(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    q = parse_query(request, DeliveryQuery)
    params = {"webhook_id": webhook_id, "status": q.status, "limit": q.limit, "offset": q.offset}
    statement = "delivery_page_desc" if q.order == "desc" else "delivery_page"
    async with state_of(request).pool.connection() as db:
        await _require_webhook(db, webhook_id)
        async with db.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql(statement), params)
            rows = await cur.fetchall()
        async with db.cursor(row_factory=scalar_row) as count:
            await count.execute(sql("delivery_count"), params)
            total = await count.fetchone()
    assert total is not None
    page = DeliveryPage(
        items=[DeliveryOut.model_validate(r) for r in rows],
        total=total,
        limit=q.limit,
        offset=q.offset,
    )
    return json_response(page)


# -- beyond the seed ----------------------------------------------------------


@endpoint(
    Doc(
        "Send a webhook.test event to this webhook now",
        {202: DeliveryOut},
        errors={404: NOT_FOUND, 409: "the webhook is inactive"},
    )
)
async def send_test(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    async with state_of(request).pool.connection() as db:
        async with db.cursor(row_factory=scalar_row) as cur:
            await cur.execute(sql("webhook_is_active"), {"id": webhook_id})
            is_active = await cur.fetchone()
        if is_active is None:
            raise ApiError(404, NOT_FOUND)
        if not is_active:
            raise ApiError(409, "Webhook is inactive: activate it before sending a test")
        delivery_id = await ops.send_test(db, webhook_id)
        if delivery_id is None:
            raise ApiError(404, NOT_FOUND)
        out = await _fetch_delivery(db, webhook_id, delivery_id)
    return json_response(out, 202)


@endpoint(
    Doc(
        "Retry one delivery now",
        {202: DeliveryOut},
        errors={**BOTH_NOT_FOUND, 409: "the delivery waits behind the head of its key"},
        description="The delivery becomes pending and due now, even if it failed "
        "or succeeded; its attempt count continues. Ordering 'key': the head of a "
        "key's queue is retried now (ahead of its retry schedule); a finished "
        "keyed delivery joins its key's queue again (sent now if nothing of that "
        "key is pending, else after what comes before it); one that waits in the "
        "queue is refused (409: retry or skip its head).",
    )
)
async def retry_delivery(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    delivery_id = path_id(request, "delivery_id")
    async with state_of(request).pool.connection() as db:
        await _require_webhook(db, webhook_id)
        try:
            if await ops.retry_delivery(db, webhook_id, delivery_id) is None:
                raise ApiError(404, DELIVERY_NOT_FOUND)
        except ops.Refused as exc:
            raise ApiError(409, str(exc)) from None
        out = await _fetch_delivery(db, webhook_id, delivery_id)
    return json_response(out, 202)


@endpoint(
    Doc(
        "Skip a pending delivery: end it failed, unsent",
        {200: DeliveryOut},
        body=SkipRequest,
        body_required=False,
        errors={**BOTH_NOT_FOUND, 409: "finished, or being sent right now"},
        description="The delivery ends `failed` with the reason as its error_message "
        "and webhook.delivery_failed is published for it. Ordering 'key': skipping "
        "the head of a key's queue unblocks the key, and the next delivery of the "
        "key is sent at once. A delivery a worker is sending right now is refused "
        "(409): try again when the attempt has ended.",
    )
)
async def skip_delivery(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    delivery_id = path_id(request, "delivery_id")
    body = await parse_body(request, SkipRequest, required=False)
    reason = body.reason if body is not None else None
    async with state_of(request).pool.connection() as db:
        await _require_webhook(db, webhook_id)
        try:
            if await ops.skip_delivery(db, webhook_id, delivery_id, reason) is None:
                raise ApiError(404, DELIVERY_NOT_FOUND)
        except ops.Refused as exc:
            raise ApiError(409, str(exc)) from None
        out = await _fetch_delivery(db, webhook_id, delivery_id)
    return json_response(out)


@endpoint(
    Doc(
        "Keys held back by a failing head (ordering 'key')",
        {200: BlockedKeys},
        query=PageQuery,
        errors=WEBHOOK_NOT_FOUND,
        description="For a webhook ordered by key: how many keys have pending "
        "deliveries, how many deliveries wait, and the keys whose head (the "
        "delivery being attempted for that key) has failed at least once, oldest "
        "first, with how many deliveries wait behind each. Unblock one by "
        "retrying its head now (POST .../deliveries/{id}/retry) or skipping it "
        "(POST .../deliveries/{id}/skip).",
    )
)
async def blocked_keys(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    q = parse_query(request, PageQuery)
    params = {"webhook_id": webhook_id, "limit": q.limit, "offset": q.offset}
    async with state_of(request).pool.connection() as db, db.transaction():
        row = await _fetch_webhook(db, webhook_id)
        async with db.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql("blocked_keys_summary"), params)
            summary = await cur.fetchone()
            await cur.execute(sql("blocked_keys_page"), params)
            items = [BlockedKeyOut.model_validate(r) for r in await cur.fetchall()]
            oldest = items[0] if items and q.offset == 0 else None
            if oldest is None and q.offset > 0:
                await cur.execute(sql("blocked_keys_page"), {**params, "limit": 1, "offset": 0})
                first = await cur.fetchone()
                oldest = BlockedKeyOut.model_validate(first) if first else None
    assert summary is not None
    out = BlockedKeys(
        webhook_id=webhook_id,
        ordering=row["ordering"],
        **summary,
        oldest_head=oldest,
        items=items,
        limit=q.limit,
        offset=q.offset,
    )
    return json_response(out)


@endpoint(
    Doc(
        "List a delivery's attempts",
        {200: AttemptList},
        errors=BOTH_NOT_FOUND,
    )
)
async def list_attempts(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    delivery_id = path_id(request, "delivery_id")
    async with state_of(request).pool.connection() as db:
        await _require_webhook(db, webhook_id)
        await _fetch_delivery(db, webhook_id, delivery_id)
        async with db.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql("attempt_list"), {"delivery_id": delivery_id})
            rows = await cur.fetchall()
    return json_response(AttemptList(items=[AttemptOut.model_validate(r) for r in rows]))


@endpoint(
    Doc(
        "Re-send the failed deliveries created since a time",
        {200: RecoverResult},
        body=RecoverRequest,
        errors=WEBHOOK_NOT_FOUND,
    )
)
async def recover(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    body = await parse_body(request, RecoverRequest)
    assert body is not None
    async with state_of(request).pool.connection() as db:
        await _require_webhook(db, webhook_id)
        count = await ops.recover_failed(db, webhook_id, body.since)
    return json_response(RecoverResult(recovered=count))


@endpoint(
    Doc(
        "Rotate the signing secret",
        {200: RotatedWebhook},
        body=RotateRequest,
        body_required=False,
        errors=WEBHOOK_NOT_FOUND,
        description="Returns the new secret, shown this once, and `rotation`: when "
        "each signature header switches. During the overlap (overlap_seconds, "
        "default OUTBOX_ROTATION_OVERLAP) webhook-signature carries a signature "
        "with each secret; X-Webhook-Signature has room for one: with "
        "seed_signature 'old' (the default) the previous secret signs it until "
        "the overlap ends, with 'new' the new secret signs it at once. Overlap 0: "
        "both switch now.",
    )
)
async def rotate_secret(request: Request) -> Response:
    st = state_of(request)
    webhook_id = path_id(request, "webhook_id")
    body = await parse_body(request, RotateRequest, required=False)
    overlap = st.settings.api.rotation_overlap
    seed = "old"
    if body is not None and body.overlap_seconds is not None:
        overlap = timedelta(seconds=body.overlap_seconds)
    if body is not None and body.seed_signature is not None:
        seed = body.seed_signature
    async with st.pool.connection() as db, db.transaction():
        if await ops.rotate_secret(db, webhook_id, overlap) is None:
            raise ApiError(404, NOT_FOUND)
        await db.execute(
            sql("webhook_set_seed_signature"), {"id": webhook_id, "seed_signature": seed}
        )
        row = await _fetch_webhook(db, webhook_id, secret=True)
    ends = row["previous_secret_expires_at"]
    now_text = "now (no overlap)"
    at = f"at {ends.isoformat()}" if ends else now_text
    rotation = RotationOut(
        overlap_ends_at=ends,
        webhook_signature=(
            f"signed with both secrets until {ends.isoformat()}, then with the new one only"
            if ends
            else "signed with the new secret only, from now"
        ),
        x_webhook_signature=(
            f"signed with the previous secret until {ends.isoformat()}, then with the new one"
            if ends and seed == "old"
            else f"signed with the new secret from now (the previous one stops {at})"
            if ends
            else "signed with the new secret from now"
        ),
    )
    out = RotatedWebhook.model_validate(
        {**WebhookWithSecret.from_row(row).model_dump(), "rotation": rotation}
    )
    return json_response(out)


# Replays bigger than this are refused (422 naming since): narrow the range.
MAX_REPLAY = 100_000


class _Replayed(NamedTuple):
    """A ``replay_range`` row: an event to deliver again, and its replay number."""

    id: int
    event_type: str
    replay: int
    key: str | None  # set when the webhook is ordered by key (its queue)


def _bound(text: str, field: str) -> tuple[Cursor | None, datetime | None]:
    """A replay bound: a cursor, or else an ISO 8601 time (UTC without a zone)."""
    try:
        return Cursor.decode(text), None
    except CursorError:
        pass
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValidationFailed.one(
            field, "use an event's cursor (or a next_cursor) or an ISO 8601 time"
        ) from None
    return None, at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@endpoint(
    Doc(
        "Replay a range of events to this webhook",
        {202: ReplayResult, 200: ReplayResult},
        body=ReplayRequest,
        errors=WEBHOOK_NOT_FOUND,
        description="New deliveries of the events in the range that this webhook "
        "subscribes to now, also those already delivered (each a new delivery, "
        f"replay n > 0; at most {MAX_REPLAY} per request). dry_run: true counts "
        "them (200) without queueing anything. Deliveries of an inactive webhook "
        "wait until it is active again.",
    )
)
async def replay(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    body = await parse_body(request, ReplayRequest)
    assert body is not None
    since_c, since_t = _bound(body.since, "since")
    until_c, until_t = (None, None) if body.until is None else _bound(body.until, "until")
    if since_t and until_t and until_t <= since_t:
        raise ValidationFailed.one("until", "must be after since")
    params: dict[str, Any] = {
        "webhook_id": webhook_id,
        **sql_params(since_c, prefix="since_"),
        **sql_params(until_c, prefix="until_"),
        "since_time": since_t,
        "until_time": until_t,
        "cap": MAX_REPLAY + 1,
    }
    async with state_of(request).pool.connection() as db, db.transaction():
        await _require_webhook(db, webhook_id)
        # Per-key order: keyed replays join their queues (sql/012_key_ordering.sql).
        await delivery_db.lock_webhooks(db, [webhook_id])
        async with db.cursor(row_factory=record_row(_Replayed)) as cur:
            await cur.execute(sql("replay_range"), params)
            rows = await cur.fetchall()
        if len(rows) > MAX_REPLAY:
            raise ValidationFailed.one(
                "since", f"the range holds more than {MAX_REPLAY} events: narrow it (until)"
            )
        if body.dry_run:
            return json_response(ReplayResult(queued=0, matched=len(rows), dry_run=True))
        queued = 0
        if rows:
            ins = await db.execute(
                sql("replay_insert"),
                {
                    "webhook_id": webhook_id,
                    "event_ids": [r.id for r in rows],
                    "event_types": [r.event_type for r in rows],
                    "replays": [r.replay for r in rows],
                    "keys": [r.key for r in rows],
                },
            )
            keys = sorted({k for (k,) in await ins.fetchall() if k is not None})
            queued = ins.rowcount
            await delivery_db.promote(db, [(webhook_id, k) for k in keys])
            if queued:
                await ops.wake(db)
    return json_response(ReplayResult(queued=queued, matched=len(rows), dry_run=False), 202)


routes: list[BaseRoute] = [
    Route("/webhooks", create_webhook, methods=["POST"]),
    Route("/webhooks", list_webhooks, methods=["GET"]),
    Route("/webhooks/stats", webhook_stats, methods=["GET"]),
    Route("/webhooks/{webhook_id}", get_webhook, methods=["GET"]),
    Route("/webhooks/{webhook_id}", update_webhook, methods=["PATCH"]),
    Route("/webhooks/{webhook_id}", delete_webhook, methods=["DELETE"]),
    Route("/webhooks/{webhook_id}/deliveries", list_deliveries, methods=["GET"]),
    Route("/webhooks/{webhook_id}/test", send_test, methods=["POST"]),
    Route(
        "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]
    ),
    Route("/webhooks/{webhook_id}/deliveries/{delivery_id}/skip", skip_delivery, methods=["POST"]),
    Route(
        "/webhooks/{webhook_id}/deliveries/{delivery_id}/attempts", list_attempts, methods=["GET"]
    ),
    Route("/webhooks/{webhook_id}/blocked-keys", blocked_keys, methods=["GET"]),
    Route("/webhooks/{webhook_id}/recover", recover, methods=["POST"]),
    Route("/webhooks/{webhook_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/webhooks/{webhook_id}/replay", replay, methods=["POST"]),
]
