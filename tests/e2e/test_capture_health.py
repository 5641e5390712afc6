"""No silent stop (issue 21, item 4): outbox serve checks every capture
rule's trigger at start and periodically; /health and /metrics show a rule
that is not capturing, naming it, until it captures again."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from outbox.capture import Rule, track
from tests.support.servers import serve_app
from tests.support.waiting import wait_for


async def test_health_and_metrics_name_a_rule_that_does_not_capture(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("CREATE TABLE public.tickets (id serial PRIMARY KEY, title text)")
    [rule] = track(conn, [Rule("tickets", "insert", "ticket.created")])
    track(conn, [Rule("tickets", "delete", "ticket.deleted")])
    conn.execute(f"ALTER TABLE tickets DISABLE TRIGGER {rule.trigger_name}")
    async with serve_app(settings) as srv, httpx.AsyncClient(base_url=srv.base_url) as client:
        relay = srv.app.state.outbox.service

        async def checked() -> Any:
            r = await client.get("/health")
            body = r.json()
            return (
                (r, body)
                if body["capture"]["checked_at"] and body["listener"] == "connected"
                else None
            )

        r, body = await wait_for(checked, timeout=10, what="the first capture check")
        assert r.status_code == 200  # this process still serves and delivers
        assert body["status"] == "degraded"
        assert body["problems"] == ["capture rule public.tickets insert -> ticket.created disabled"]
        assert body["capture"]["rules"] == 2
        [problem] = body["capture"]["problems"]
        assert problem["state"] == "disabled" and rule.trigger_name in problem["detail"]
        text = (await client.get("/metrics", headers={"X-API-Key": "test-token"})).text
        assert 'outbox_capture_rules{state="disabled"} 1.0' in text
        assert 'outbox_capture_rules{state="ok"} 1.0' in text

        conn.execute(f"ALTER TABLE tickets ENABLE TRIGGER {rule.trigger_name}")
        relay.capture_check.wake()

        async def healthy() -> Any:
            body = (await client.get("/health")).json()
            return body if body["status"] == "ok" else None

        body = await wait_for(healthy, timeout=10, what="capturing again")
        assert body["capture"]["problems"] == []
        text = (await client.get("/metrics", headers={"X-API-Key": "test-token"})).text
        assert 'outbox_capture_rules{state="ok"} 2.0' in text
