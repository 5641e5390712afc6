"""GET /health and the relay through a network outage: Postgres behind a TCP
proxy that cuts every connection and refuses new ones, then comes back."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from tests.support.relay import TcpProxy, add_webhook, deliveries_summary
from tests.support.servers import serve_app
from tests.support.waiting import wait_for


async def test_health_reports_listener_role_and_lag(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    async with serve_app(settings) as srv, httpx.AsyncClient(base_url=srv.base_url) as client:

        async def ok() -> httpx.Response | None:
            r = await client.get("/health")  # no auth needed
            # 503 "listener starting" for the first moments after start.
            return r if r.status_code == 200 else None

        r = await wait_for(ok, timeout=5, what="healthy")
        body = r.json()
        assert body["status"] == "ok" and body["problems"] == []
        assert body["database"] == {"status": "ok"}
        assert body["listener"] == "connected"
        assert body["role"] in ("leader", "follower")
        assert body["feed"]["lag"] == {"events": 0, "oldest_seconds": 0.0, "capped": False}
        assert body["feed"]["cursor"]
        await wait_for(
            lambda: srv.app.state.outbox.service.leadership.is_leader, timeout=5, what="leader"
        )
        r = await client.get("/health")
        assert r.json()["role"] == "leader"
        assert r.json()["dispatcher"]["lag"]["events"] == 0
        metrics = srv.app.state.outbox.metrics.render()
        for gauge in (
            "outbox_relay_leader 1.0",
            "outbox_listener_connected 1.0",
            "outbox_feed_lag_events 0.0",
        ):
            assert gauge in metrics


async def test_outage_degrades_health_costs_no_event_and_recovers_by_itself(
    settings: Any, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    add_webhook(conn, ["*"])
    async with TcpProxy() as proxy:
        behind = settings.replace(database_url=proxy.url_for(db_url))
        async with (
            serve_app(behind) as srv,
            httpx.AsyncClient(base_url=srv.base_url, timeout=10) as client,
        ):

            async def status() -> tuple[int, dict[str, Any]]:
                r = await client.get("/health")
                return r.status_code, r.json()

            await wait_for(
                lambda: srv.app.state.outbox.service.leadership.is_leader, timeout=5, what="leader"
            )
            conn.execute("SELECT outbox.publish('t.before', '{}')")
            await wait_for(lambda: deliveries_summary(conn)[0] == 1, timeout=5, what="dispatch")

            proxy.cut()
            # Committed while the relay cannot reach the server.
            for i in range(20):
                conn.execute(
                    "SELECT outbox.publish('t.during', jsonb_build_object('i', %s::int))", (i,)
                )

            async def degraded() -> dict[str, Any] | None:
                code, body = await status()
                return body if code == 503 else None

            body = await wait_for(degraded, timeout=10, interval=0.1, what="503 degraded")
            assert body["status"] == "degraded"
            assert body["database"]["status"] == "unreachable"
            assert body["listener"] != "connected"

            proxy.restore()

            async def healthy() -> bool:
                code, _ = await status()
                return code == 200

            await wait_for(healthy, timeout=20, interval=0.2, what="recovery")
            await wait_for(
                lambda: deliveries_summary(conn) == (21, 21, 0),
                timeout=15,
                what="every event dispatched once after the outage",
            )
            _, body = await status()
            assert body["status"] == "ok" and body["listener"] == "connected"
            relay = srv.app.state.outbox.service
            assert relay.listener.reconnects >= 1
