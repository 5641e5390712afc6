"""The whole path in one `outbox serve` app: a webhook created through the
REST API, an event published in a transaction, a signed POST received."""

from __future__ import annotations

import json
from typing import Any

import httpx
import psycopg
from standardwebhooks.webhooks import Webhook

from outbox.publish import apublish
from tests.support.receivers import running
from tests.support.servers import serve_app
from tests.support.waiting import wait_for

AUTH = {"Authorization": "Bearer test-token"}


async def test_published_event_reaches_the_receiver_signed(
    settings: Any, aconn: psycopg.AsyncConnection[Any]
) -> None:
    async with (
        running() as rx,
        serve_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, headers=AUTH) as api,
    ):
        resp = await api.post(
            "/webhooks",
            json={
                "name": "crm",
                "url": rx.url,
                "event_type": "user.created",
            },
        )
        assert resp.status_code == 201, resp.text
        hook = resp.json()
        async with aconn.transaction():
            event_id = await apublish(aconn, "user.created", {"user_id": 5, "name": "Ann"})
        await wait_for(lambda: len(rx.requests) == 1, timeout=20, what="webhook POST")

        req = rx.requests[0]
        assert json.loads(req.body) == {"user_id": 5, "name": "Ann"}
        assert req.headers["webhook-id"] == f"evt_{event_id}"
        assert Webhook(hook["secret"]).verify(req.body, req.headers)

        async def recorded() -> Any:
            r = await api.get(f"/webhooks/{hook['id']}/deliveries")
            items = r.json()["items"]
            return items and items[0]["status"] == "success" and items[0]

        delivery = await wait_for(recorded, timeout=10, what="delivery recorded")
        assert delivery["attempt_number"] == 1 and delivery["response_status"] == 200
