"""The delivery worker's SQL: claim due deliveries, record what happened.

A claim is one statement (``delivery_claim``); a flush records a whole
batch of attempts in one transaction of a few statements, whatever the
batch size: attempt rows, delivery rows (fenced by the claim's lease),
webhook counters, disabling, the promotion of the next delivery of each
key queue whose head ended (per-key order, ``sql/012_key_ordering.sql``),
and the ``webhook.disabled`` / ``webhook.delivery_failed`` events, which
commit or roll back with them.
No HTTP request ever runs while this module holds a transaction open.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import class_row, scalar_row

from outbox.relay.delivery.retry import AttemptResult
from outbox.relay.delivery.signing import render_body
from outbox.rows import record_row
from outbox.sqlfiles import query

AsyncConn = psycopg.AsyncConnection[Any]
State = Literal["success", "retry", "failed", "hold"]
_SQL = "delivery.sql"


@functools.lru_cache(maxsize=10_000)
def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


@dataclass(slots=True)
class Job:
    """One claimed delivery and everything needed to send it (a ``delivery_claim`` row)."""

    id: int
    webhook_id: int
    event_id: int
    event_type: str
    attempt: int  # the number of the next attempt
    lease: datetime  # due_at set by the claim: the fencing token
    payload: Any
    created_at: datetime | None  # None: the event no longer exists
    url: str
    secret: str
    previous_secret: str | None
    payload_format: str
    seed_secret: str | None = None  # signs X-Webhook-Signature (rotation choice)
    key: str | None = None
    traceparent: str | None = None  # the writer's W3C trace context
    tracestate: str | None = None
    headers: dict[str, str] | None = None  # the webhook's custom request headers
    _body: bytes | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        """Per-endpoint limits apply per scheme://host:port, across webhooks."""
        return _endpoint(self.url)

    def age(self, now: float) -> float:
        """Seconds since the event was created (what ``OUTBOX_RETRY_MAX_AGE`` measures)."""
        return now - self.created_at.timestamp() if self.created_at is not None else 0.0

    @property
    def body(self) -> bytes:
        if self._body is None:
            assert self.created_at is not None
            self._body = render_body(
                self.payload,
                payload_format=self.payload_format,
                event_id=self.event_id,
                event_type=self.event_type,
                created_at=self.created_at,
                key=self.key,
            )
        return self._body


@dataclass(slots=True)
class Outcome:
    """A delivery after one attempt: the attempt row and the delivery's new state."""

    job: Job
    result: AttemptResult
    state: State
    delay: float | None = None  # until the next attempt (retry, hold)


@dataclass(slots=True)
class Release:
    job: Job
    delay: float = 0.0


@dataclass(slots=True)
class Flushed:
    recorded: int = 0  # delivery rows written (fenced-out ones are not)
    failed: list[int] = field(default_factory=list)  # moved to failed now
    disabled: int = 0  # webhooks disabled now
    promoted: int = 0  # waiting deliveries that became the head of their key queue


class _Recorded(NamedTuple):
    """A delivery row ``delivery_record`` wrote (fenced-out ones return none)."""

    id: int
    status: str
    webhook_id: int
    key: str | None


class Promoted(NamedTuple):
    """A waiting delivery ``delivery_promote`` made the head of its queue."""

    id: int
    webhook_id: int
    key: str


async def promote(conn: AsyncConn, queues: list[tuple[int, str]]) -> list[Promoted]:
    """Give each ``(webhook_id, key)`` queue without a head its next delivery.

    The caller's transaction must already hold the lock on those webhook
    rows, taken by an earlier statement (``delivery_lock_webhooks``,
    ``delivery_webhook_stats`` or ``dispatch_batch``): see ``delivery_promote``.
    """
    if not queues:
        return []
    cur = conn.cursor(row_factory=record_row(Promoted))
    await cur.execute(
        query("delivery_promote", _SQL),
        {"webhook_id": [w for w, _ in queues], "key": [k for _, k in queues]},
    )
    return await cur.fetchall()


async def lock_webhooks(conn: AsyncConn, ids: list[int]) -> None:
    """Take the per-key order lock of these webhooks (until the transaction ends)."""
    await conn.execute(query("delivery_lock_webhooks", _SQL), {"ids": sorted(set(ids))})


async def claim(
    conn: AsyncConn, *, worker: str, limit: int, lease: timedelta, skip: list[int]
) -> list[Job]:
    cur = conn.cursor(row_factory=class_row(Job))
    await cur.execute(
        query("delivery_claim", _SQL),
        {"worker": worker, "limit": limit, "lease": lease, "skip": skip},
    )
    return await cur.fetchall()


def _json(headers: dict[str, str] | None) -> str | None:
    return None if headers is None else json.dumps(headers)


def _columns(rows: list[tuple[Any, ...]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {n: [] for n in names}
    for row in rows:
        for n, v in zip(names, row, strict=True):
            cols[n].append(v)
    return cols


_ATTEMPT_COLS = (
    "delivery_id",
    "attempt_number",
    "started_at",
    "duration_ms",
    "outcome",
    "response_status",
    "response_body",
    "error_class",
    "error_message",
    "request_headers",
    "response_headers",
)
_RECORD_COLS = (
    "id",
    "lease",
    "status",
    "attempt_number",
    "delay",
    "hold",
    "response_status",
    "response_body",
    "error_message",
)
_RELEASE_COLS = ("id", "lease", "delay")
_STATS_COLS = (
    "webhook_id",
    "ok",
    "failed",
    "last_at",
    "last_ok_at",
    "first_fail_at",
    "fail_after_ok",
)
_ROW_STATUS = {"success": "success", "failed": "failed", "retry": "pending", "hold": "pending"}
_ATTEMPT_OUTCOME = {"success": "success", "failed": "failed", "retry": "retry", "hold": "retry"}


def _webhook_stats(outcomes: list[Outcome]) -> list[tuple[Any, ...]]:
    per: dict[int, list[AttemptResult]] = {}
    for o in outcomes:
        per.setdefault(o.job.webhook_id, []).append(o.result)
    rows = []
    for webhook_id, results in sorted(per.items()):
        results.sort(key=lambda r: r.started_at)
        oks = [r.started_at for r in results if r.ok]
        fails = [r.started_at for r in results if not r.ok]
        last_ok = oks[-1] if oks else None
        after_ok = [t for t in fails if last_ok is not None and t > last_ok]
        rows.append(
            (
                webhook_id,
                len(oks),
                len(fails),
                results[-1].started_at,
                last_ok,
                fails[0] if fails else None,
                after_ok[0] if after_ok else None,
            )
        )
    return rows


async def flush(
    conn: AsyncConn,
    outcomes: list[Outcome],
    releases: list[Release],
    *,
    disable_after: timedelta,
) -> Flushed:
    """Record ``outcomes`` and ``releases`` in one transaction."""
    done = Flushed()
    latest: dict[int, Outcome] = {}
    for o in outcomes:
        # Several attempts of one delivery may share a flush: the row keeps the last.
        latest[o.job.id] = o
    async with conn.transaction():
        if outcomes:
            await conn.execute(
                query("delivery_insert_attempts", _SQL),
                _columns(
                    [
                        (
                            o.job.id,
                            o.result.attempt,
                            o.result.started_at,
                            o.result.duration * 1000.0,
                            _ATTEMPT_OUTCOME[o.state],
                            o.result.status,
                            o.result.body,
                            o.result.error_class,
                            o.result.error_message,
                            _json(o.result.request_headers),
                            _json(o.result.response_headers),
                        )
                        for o in outcomes
                    ],
                    _ATTEMPT_COLS,
                ),
            )
            recorded = conn.cursor(row_factory=record_row(_Recorded))
            await recorded.execute(
                query("delivery_record", _SQL),
                _columns(
                    [
                        (
                            o.job.id,
                            o.job.lease,
                            _ROW_STATUS[o.state],
                            o.result.attempt,
                            o.delay,
                            o.state == "hold",
                            o.result.status,
                            o.result.body,
                            o.result.error_message,
                        )
                        for o in latest.values()
                    ],
                    _RECORD_COLS,
                ),
            )
            rows = await recorded.fetchall()
            done.recorded = len(rows)
            done.failed = sorted(r.id for r in rows if r.status == "failed")
            await conn.execute(
                query("delivery_webhook_stats", _SQL),
                _columns(_webhook_stats(outcomes), _STATS_COLS),
            )
            # Only a webhook with a failed attempt in this flush can be due for
            # disabling: one whose attempts here all succeeded has just had a
            # success (its failing_since is now NULL, or a failure newer than
            # that success). Most flushes at load skip the statement.
            failing = sorted({o.job.webhook_id for o in outcomes if not o.result.ok})
            if failing:
                gone = sorted({o.job.webhook_id for o in outcomes if o.result.gone})
                cur = await conn.execute(
                    query("delivery_disable_webhooks", _SQL),
                    {"ids": failing, "gone": gone, "disable_after": disable_after},
                )
                done.disabled = len(await cur.fetchall())
            # delivery_webhook_stats (above) locked these webhooks' rows.
            ended = sorted(
                {(r.webhook_id, r.key) for r in rows if r.key is not None and r.status != "pending"}
            )
            done.promoted = len(await promote(conn, ended))
            if done.failed:
                await conn.execute(query("delivery_publish_failed", _SQL), {"ids": done.failed})
        if releases:
            await conn.execute(
                query("delivery_release", _SQL),
                _columns([(r.job.id, r.job.lease, r.delay) for r in releases], _RELEASE_COLS),
            )
    return done


async def pending_count(conn: AsyncConn) -> int:
    cur = conn.cursor(row_factory=scalar_row)
    await cur.execute(query("delivery_pending_count", _SQL))
    count = await cur.fetchone()
    return int(count) if count is not None else 0
