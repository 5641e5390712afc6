"""Helpers for the REST API tests: a client of a real server, and fixture rows."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from outbox.api.config import Settings
from tests.support.servers import serve_app

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Loopback is allowed by the test settings; port 9 (discard) refuses at once.
HOOK_URL = "http://127.0.0.1:9/hook"


@contextlib.asynccontextmanager
async def api_client(
    settings: Settings, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of the whole app running under a real uvicorn."""
    async with (
        serve_app(settings) as server,
        httpx.AsyncClient(
            base_url=server.base_url, headers=AUTH if headers is None else headers, timeout=10
        ) as client,
    ):
        yield client


async def create_webhook(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "hook", "url": HOOK_URL, "event_type": "user.created", **fields}
    resp = await client.post("/webhooks", json=body)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


def add_delivery(
    conn: psycopg.Connection[Any],
    webhook_id: int,
    *,
    status: str = "failed",
    event_type: str = "user.created",
    payload: Any = None,
    attempts: int = 0,
) -> int:
    """An event and its delivery in one transaction (so a running dispatcher
    sees them together and its own insert is a no-op), with ``attempts``
    recorded attempts."""
    payload = {"user_id": webhook_id} if payload is None else payload
    with conn.transaction():
        row = conn.execute(
            "WITH e AS (SELECT outbox.publish(%s, %s) AS id)"
            " INSERT INTO outbox.deliveries (webhook_id, event_id, event_type, status,"
            " attempt_number, delivered_at, response_status, error_message)"
            " SELECT %s, e.id, %s, %s, %s, CASE WHEN %s = 'success' THEN now() END,"
            " CASE WHEN %s = 'success' THEN 200 ELSE 500 END,"
            " CASE WHEN %s = 'failed' THEN 'HTTP 500' END FROM e"
            " RETURNING id",
            (
                event_type,
                Jsonb(payload),
                webhook_id,
                event_type,
                status,
                attempts,
                status,
                status,
                status,
            ),
        ).fetchone()
        assert row is not None
        last = status if status in ("success", "failed") else "retry"
        for n in range(1, attempts + 1):
            outcome = last if n == attempts else "retry"
            conn.execute(
                "INSERT INTO outbox.delivery_attempts (delivery_id, attempt_number, started_at,"
                " duration_ms, outcome, response_status, response_body)"
                " VALUES (%s, %s, now(), 12.5, %s, %s, 'body')",
                (row[0], n, outcome, 200 if outcome == "success" else 500),
            )
    return int(row[0])
