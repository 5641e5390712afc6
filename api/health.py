"""``GET /health`` (no auth): is this process able to do its job?

Reports the database, the LISTEN connection, this process's role (leader or
follower), the feed lag (events committed and not yet read by this process,
and the age of the oldest), from the stored dispatcher cursor, how many
events still wait for their delivery rows, and the sinks this process
publishes (state, last error, lag).

HTTP 200 with ``"status": "ok"``; HTTP 503 with ``"status": "degraded"``
while the database is unreachable or the relay is reconnecting. Nothing has
to be reset afterwards: each request checks again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from outbox.api.state import AppState
from outbox.cursor import Cursor
from outbox.errors import CursorError
from outbox.relay.dispatcher import load_cursor
from outbox.relay.feed import measure_lag
from outbox.relay.reconnect import describe

# A health check must answer even when the database does not.
TIMEOUT = 2.0


async def _database(state: AppState, cursor: Cursor | None) -> dict[str, Any]:
    """Lags measured on a pooled connection; raises when the database is unreachable."""
    async with state.pool.connection(timeout=TIMEOUT) as conn:
        feed = (await measure_lag(conn, cursor)).as_dict() if cursor else None
        stored, _ = await load_cursor(conn)
        dispatch = await measure_lag(conn, stored)
    return {"feed_lag": feed, "dispatch_lag": dispatch.as_dict()}


async def health(request: Request) -> JSONResponse:
    state: AppState = request.app.state.outbox
    relay = state.relay.health()
    database: dict[str, Any] = {"status": "ok"}
    lags: dict[str, Any] = {}
    try:
        async with asyncio.timeout(TIMEOUT + 0.5):
            lags = await _database(state, state.relay.cursor)
    except (psycopg.Error, TimeoutError, OSError) as exc:
        database = {"status": "unreachable", "error": describe(exc)}
    except CursorError:
        database = {"status": "ok", "error": "the stored dispatcher cursor is unreadable"}

    problems = []
    if database["status"] != "ok":
        problems.append("database unreachable")
    if relay["listener"] not in ("connected", "disabled"):
        problems.append(f"listener {relay['listener']}")
    if relay["feed"]["state"] != "ok":
        problems.append(f"feed {relay['feed']['state']}")
    feed = dict(relay["feed"])
    if lags.get("feed_lag") is not None:
        feed["lag"] = lags["feed_lag"]
    body = {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "database": database,
        "listener": relay["listener"],
        "role": relay["role"],
        "instance": relay["instance"],
        "feed": feed,
        "dispatcher": {**relay["dispatcher"], "lag": lags.get("dispatch_lag")},
        # Informational: a broker that refuses is the sink's problem (its
        # last_error says why), not this process's, so it does not degrade it.
        "sinks": state.sinks.health(),
    }
    return JSONResponse(body, status_code=503 if problems else 200)


routes: list[BaseRoute] = [Route("/health", health, methods=["GET"], name="health")]
