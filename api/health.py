"""``GET /health`` (no auth): is this process able to do its job?

Reports the database, the LISTEN connection, this process's role (leader or
follower), the feed lag (events committed and not yet read by this process,
and the age of the oldest), from the stored dispatcher cursor, how many
events still wait for their delivery rows, and the sinks this process
publishes (state, last error, lag).

HTTP 200 with ``"status": "ok"``; HTTP 503 with ``"status": "degraded"``
while the database is unreachable or the relay is reconnecting, and also
when a part makes no progress (relay/progress.py): the feed reader or the
dispatcher has not moved forward for ``OUTBOX_STALL_AFTER`` while events
wait (its reads fail or time out, its statement hangs, the leadership keeps
changing hands), or event ids went backwards. Each problem names the part
and why. Nothing has to be reset afterwards: each request checks again.
``/metrics`` exports the same verdicts (:func:`assess`).

The body is :class:`outbox.api.schemas.HealthOut`, built from the service's
one typed snapshot (``Service.status()``, relay/service.py) and what the
database says.

``capture``: the last check of every capture rule's trigger (relay/
capture_check.py). A rule whose trigger is missing, stale or disabled, or
whose table was dropped, makes the status ``degraded`` and is named in
``problems`` — but the answer stays HTTP 200 when nothing else is wrong:
this process still serves and delivers, and a load balancer must not take
every copy out of service for a trigger only ``outbox track`` can restore.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from outbox.api.schemas import HealthDispatcher, HealthOut
from outbox.api.state import AppState
from outbox.cursor import Cursor
from outbox.errors import CursorError
from outbox.names import DISPATCHER_STATE
from outbox.relay.feed import measure_lag
from outbox.relay.progress import ids_went_backwards, sequence_high
from outbox.relay.reconnect import describe
from outbox.sqlfiles import query

# A health check must answer even when the database does not.
TIMEOUT = 2.0


async def _database(state: AppState, cursor: Cursor | None) -> dict[str, Any]:
    """Lags measured on a pooled connection; raises when the database is unreachable."""
    async with state.pool.connection(timeout=TIMEOUT) as conn:
        feed = (await measure_lag(conn, cursor)).as_dict() if cursor else None
        cur = await conn.execute(
            query("dispatcher_state_age", "progress.sql"), {"name": DISPATCHER_STATE}
        )
        row = await cur.fetchone()
        stored = Cursor.decode(row[0]) if row else Cursor(0)
        dispatch = await measure_lag(conn, stored)
        high = await sequence_high(conn)
    return {
        "feed_lag": feed,
        "dispatch_lag": dispatch.as_dict(),
        "dispatch_cursor": stored,
        "dispatch_age": float(row[1]) if row else None,
        "id_high": high,
    }


def _feed_problem(state: AppState, lag: dict[str, Any] | None) -> str | None:
    """The feed reader has read nothing for too long while events wait."""
    progress = state.service.feed.progress
    waiting = lag["events"] if lag else 0
    # Stalled only if the events have waited that long too (not just arrived).
    stalled = min(progress.since_ok(), lag["oldest_seconds"] if lag else 0.0)
    if not waiting or stalled < state.settings.feed.stall_after:
        return None
    why = progress.why()
    return f"feed: no progress for {stalled:.0f}s while {waiting} events wait" + (
        f" ({why})" if why else ""
    )


def _dispatcher_problem(state: AppState, lags: dict[str, Any]) -> str | None:
    """Ids went backwards, or the stored dispatcher cursor has not moved for
    too long while events wait for their delivery rows (judged from the
    database, so every process sees it, leader or not)."""
    stored: Cursor = lags["dispatch_cursor"]
    backwards = ids_went_backwards(lags["id_high"], stored.after)
    if backwards:
        return f"dispatcher: {backwards}"
    waiting = lags["dispatch_lag"]["events"]
    age = lags["dispatch_age"]
    if age is None:  # never dispatched: count from this process's start
        age = state.service.dispatcher.progress.since_ok()
    # After a quiet hour the cursor's last move is old: stalled only if the
    # events have been waiting that long as well.
    age = min(age, lags["dispatch_lag"]["oldest_seconds"])
    if not waiting or age < state.settings.feed.stall_after:
        return None
    relay = state.service
    reasons = []
    flips = relay.leadership.recent_terms.recent()
    if flips >= 3:
        reasons.append(f"the leadership changed hands {flips} times in the last minute")
    if relay.leadership.is_leader:
        why = relay.dispatcher.progress.why()
        if why:
            reasons.append(why)
    else:
        reasons.append(
            "this process is a follower: the leader's /health and log say more"
            + (
                f"; last leader error here: {relay.leadership.last_error}"
                if relay.leadership.last_error
                else ""
            )
        )
    return f"dispatcher: no progress for {age:.0f}s while {waiting} events wait" + (
        f" ({'; '.join(reasons)})" if reasons else ""
    )


@dataclass(frozen=True)
class Verdict:
    """What :func:`assess` finds: the problems, which parts are degraded, the body."""

    problems: list[str]
    parts: dict[str, bool]
    body: HealthOut
    capture: int  # how many of the problems are capture rules'


async def assess(state: AppState) -> Verdict:
    """The health verdict (``/health`` and ``/metrics``' ``outbox_degraded``)."""
    status = state.service.status()
    database: dict[str, str] = {"status": "ok"}
    lags: dict[str, Any] = {}
    try:
        async with asyncio.timeout(TIMEOUT + 0.5):
            lags = await _database(state, state.service.cursor)
    except (psycopg.Error, TimeoutError, OSError) as exc:
        database = {"status": "unreachable", "error": describe(exc)}
    except CursorError:
        database = {"status": "ok", "error": "the stored dispatcher cursor is unreadable"}

    problems = []
    parts: dict[str, bool] = {"database": False, "listener": False, "feed": False}
    parts["dispatcher"] = False
    if database["status"] != "ok":
        problems.append("database unreachable")
        parts["database"] = True
    if status.listener not in ("connected", "disabled"):
        problems.append(f"listener {status.listener}")
        parts["listener"] = True
    if status.feed.state != "ok":
        problems.append(f"feed {status.feed.state}")
        parts["feed"] = True
    if lags:
        feed_stall = _feed_problem(state, lags.get("feed_lag"))
        if feed_stall:
            problems.append(feed_stall)
            parts["feed"] = True
        dispatch_stall = _dispatcher_problem(state, lags)
        if dispatch_stall:
            problems.append(dispatch_stall)
            parts["dispatcher"] = True
    capture_problems = len(status.capture["problems"])
    for p in status.capture["problems"]:
        problems.append(f"capture rule {p['rule']} {p['state']}")
    feed = status.feed
    if lags.get("feed_lag") is not None:
        feed = feed.model_copy(update={"lag": lags["feed_lag"]})
    body = HealthOut(
        status="degraded" if problems else "ok",
        problems=problems,
        database=database,
        listener=status.listener,
        role=status.role,
        instance=status.instance,
        feed=feed,
        dispatcher=HealthDispatcher(**status.dispatcher.model_dump(), lag=lags.get("dispatch_lag")),
        # Informational: a broker that refuses is the sink's problem (its
        # last_error says why), not this process's, so it does not degrade it.
        sinks=status.sinks,
        capture=status.capture,
    )
    return Verdict(problems, parts, body, capture_problems)


async def health(request: Request) -> JSONResponse:
    verdict = await assess(request.app.state.outbox)
    # Capture problems alone degrade the status, not the HTTP answer.
    serious = len(verdict.problems) > verdict.capture
    return JSONResponse(verdict.body.model_dump(mode="json"), status_code=503 if serious else 200)


routes: list[BaseRoute] = [Route("/health", health, methods=["GET"], name="health")]
