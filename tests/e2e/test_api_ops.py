"""REST: the operator's verbs (test, retry, attempts, recover, rotate-secret),
and one end-to-end delivery through a real receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from standardwebhooks import Webhook as StandardWebhook

import outbox
from outbox.api.config import Settings
from tests.support.api import add_delivery, api_client, create_webhook
from tests.support.receivers import running
from tests.support.waiting import wait_for


@pytest.fixture
async def client(settings: Settings) -> Any:
    async with api_client(settings) as c:
        yield c


async def test_send_test_queues_a_webhook_test_delivery(client: httpx.AsyncClient) -> None:
    hook = await create_webhook(client)
    resp = await client.post(f"/webhooks/{hook['id']}/test")
    assert resp.status_code == 202, resp.text
    delivery = resp.json()
    assert (delivery["webhook_id"], delivery["event_type"]) == (hook["id"], "webhook.test")
    assert delivery["payload"]["webhook_id"] == hook["id"]
    listed = (await client.get(f"/webhooks/{hook['id']}/deliveries")).json()
    assert [d["id"] for d in listed["items"]] == [delivery["id"]]

    await client.patch(f"/webhooks/{hook['id']}", json={"is_active": False})
    resp = await client.post(f"/webhooks/{hook['id']}/test")
    assert resp.status_code == 409 and "inactive" in resp.json()["detail"]
    resp = await client.post("/webhooks/999/test")
    assert (resp.status_code, resp.json()) == (404, {"detail": "Webhook not found"})


async def test_retry_makes_a_failed_delivery_due_now(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    # Inactive: the sender leaves its deliveries alone, so the state is stable.
    hook = await create_webhook(client, is_active=False)
    other = await create_webhook(client, is_active=False)
    failed = add_delivery(conn, hook["id"], status="failed", attempts=3)
    foreign = add_delivery(conn, other["id"], status="failed")

    resp = await client.post(f"/webhooks/{hook['id']}/deliveries/{failed}/retry")
    assert resp.status_code == 202, resp.text
    got = resp.json()
    assert (got["id"], got["status"], got["attempt_number"]) == (failed, "pending", 3)
    due = conn.execute(
        "SELECT due_at <= now() FROM outbox.deliveries WHERE id = %s", (failed,)
    ).fetchone()
    assert due == (True,)

    for path, detail in [
        (f"/webhooks/{hook['id']}/deliveries/{foreign}/retry", "Delivery not found"),
        (f"/webhooks/{hook['id']}/deliveries/99999/retry", "Delivery not found"),
        (f"/webhooks/999/deliveries/{failed}/retry", "Webhook not found"),
    ]:
        resp = await client.post(path)
        assert (resp.status_code, resp.json()["detail"]) == (404, detail), path
    resp = await client.post(f"/webhooks/{hook['id']}/deliveries/x/retry")
    assert resp.status_code == 422 and resp.json()["detail"].startswith("delivery_id:")


async def test_attempts_of_a_delivery_in_order(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client, is_active=False)
    other = await create_webhook(client, is_active=False)
    delivery = add_delivery(conn, hook["id"], status="failed", attempts=3)
    foreign = add_delivery(conn, other["id"], attempts=1)

    resp = await client.get(f"/webhooks/{hook['id']}/deliveries/{delivery}/attempts")
    assert resp.status_code == 200
    items = resp.json()["items"]
    assert [(a["attempt_number"], a["outcome"]) for a in items] == [
        (1, "retry"),
        (2, "retry"),
        (3, "failed"),
    ]
    assert items[0].keys() == {
        "id",
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
    }
    assert (items[0]["delivery_id"], items[0]["duration_ms"]) == (delivery, 12.5)
    empty = add_delivery(conn, hook["id"], status="pending")
    url = f"/webhooks/{hook['id']}/deliveries/{empty}/attempts"
    assert (await client.get(url)).json() == {"items": []}

    for path, detail in [
        (f"/webhooks/{hook['id']}/deliveries/{foreign}/attempts", "Delivery not found"),
        (f"/webhooks/999/deliveries/{delivery}/attempts", "Webhook not found"),
    ]:
        resp = await client.get(path)
        assert (resp.status_code, resp.json()["detail"]) == (404, detail)


async def test_recover_requeues_failed_deliveries_since(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client, is_active=False)
    old = add_delivery(conn, hook["id"], status="failed")
    new = add_delivery(conn, hook["id"], status="failed")
    ok = add_delivery(conn, hook["id"], status="success")
    conn.execute(
        "UPDATE outbox.deliveries SET created_at = now() - interval '2 days' WHERE id = %s",
        (old,),
    )
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    resp = await client.post(f"/webhooks/{hook['id']}/recover", json={"since": since})
    assert (resp.status_code, resp.json()) == (200, {"recovered": 1})
    statuses = dict(conn.execute("SELECT id, status FROM outbox.deliveries").fetchall())
    assert statuses == {old: "failed", new: "pending", ok: "success"}

    # A timestamp without a zone is UTC, as the seed wrote them.
    naive = (datetime.now(UTC) - timedelta(days=3)).replace(tzinfo=None).isoformat()
    resp = await client.post(f"/webhooks/{hook['id']}/recover", json={"since": naive})
    assert resp.json() == {"recovered": 1}

    for body, field in [
        ({}, "since: field required"),
        ({"since": "yesterday"}, "since:"),
        ({"since": since, "until": since}, "until: unknown field"),
    ]:
        resp = await client.post(f"/webhooks/{hook['id']}/recover", json=body)
        assert resp.status_code == 422 and resp.json()["detail"].startswith(field), body
    resp = await client.post("/webhooks/999/recover", json={"since": since})
    assert resp.status_code == 404


async def test_rotate_secret_keeps_the_old_one_for_the_overlap(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client, secret="old-secret")
    resp = await client.post(f"/webhooks/{hook['id']}/rotate-secret")
    assert resp.status_code == 200, resp.text
    rotated = resp.json()
    assert rotated["secret"].startswith("whsec_") and rotated["id"] == hook["id"]
    ends = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(hours=23) < ends - datetime.now(UTC) <= timedelta(hours=24)
    row = conn.execute(
        "SELECT secret, previous_secret FROM outbox.webhooks WHERE id = %s", (hook["id"],)
    ).fetchone()
    assert row == (rotated["secret"], "old-secret")
    assert "secret" not in (await client.get(f"/webhooks/{hook['id']}")).json()

    resp = await client.post(f"/webhooks/{hook['id']}/rotate-secret", json={"overlap_seconds": 60})
    ends = datetime.fromisoformat(resp.json()["previous_secret_expires_at"])
    assert ends - datetime.now(UTC) <= timedelta(seconds=60)
    resp = await client.post(f"/webhooks/{hook['id']}/rotate-secret", json={"overlap_seconds": 0})
    assert resp.json()["previous_secret_expires_at"] is None

    for body, field in [
        ({"overlap_seconds": -1}, "overlap_seconds:"),
        ({"overlap_seconds": "soon"}, "overlap_seconds:"),
        ({"overlap": 5}, "overlap: unknown field"),
    ]:
        resp = await client.post(f"/webhooks/{hook['id']}/rotate-secret", json=body)
        assert resp.status_code == 422 and resp.json()["detail"].startswith(field), body
    resp = await client.post("/webhooks/999/rotate-secret")
    assert (resp.status_code, resp.json()["detail"]) == (404, "Webhook not found")


async def test_changes_apply_from_the_next_dispatch(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    """A deactivated webhook gets no new deliveries; a changed subscription
    applies to the next events. The always-on webhook is the witness that the
    dispatcher has handled each event before the others are checked."""
    witness = await create_webhook(client, name="witness", event_type="*")
    hook = await create_webhook(client, event_type="user.created")

    async def dispatched(event_id: int) -> dict[int, int]:
        rows = conn.execute(
            "SELECT webhook_id, count(*) FROM outbox.deliveries WHERE event_id = %s"
            " GROUP BY webhook_id",
            (event_id,),
        ).fetchall()
        return dict(rows) if witness["id"] in dict(rows) else {}

    async def publish_and_wait(event_type: str) -> dict[int, int]:
        with conn.transaction():
            event_id = outbox.publish(conn, event_type, {})
        got: dict[int, int] = await wait_for(
            lambda: dispatched(event_id), timeout=20, what="dispatch"
        )
        return got

    assert hook["id"] in await publish_and_wait("user.created")
    await client.patch(f"/webhooks/{hook['id']}", json={"is_active": False})
    assert hook["id"] not in await publish_and_wait("user.created")
    await client.patch(
        f"/webhooks/{hook['id']}", json={"is_active": True, "event_type": "ticket.*"}
    )
    assert hook["id"] not in await publish_and_wait("user.created")
    assert hook["id"] in await publish_and_wait("ticket.created")


async def test_end_to_end_delivery_through_the_api(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    """Subscribe through the API, commit an event, see it arrive signed with
    the secret the API showed once, and read its delivery and attempt back."""
    async with running() as receiver, api_client(settings) as client:
        hook = await create_webhook(client, url=receiver.url, event_types=["user.*"])
        with conn.transaction():
            outbox.publish(conn, "user.created", {"user_id": 123, "username": "testuser"})

        async def delivered() -> Any:
            resp = await client.get(f"/webhooks/{hook['id']}/deliveries?status=success")
            return resp.json()["items"]

        [delivery] = await wait_for(delivered, timeout=20, what="a successful delivery")
        assert (delivery["payload"], delivery["response_status"]) == (
            {"user_id": 123, "username": "testuser"},
            200,
        )
        attempts = (
            await client.get(f"/webhooks/{hook['id']}/deliveries/{delivery['id']}/attempts")
        ).json()["items"]
        assert [a["outcome"] for a in attempts] == ["success"]
        stats = (await client.get("/webhooks/stats")).json()
        assert (stats["successful_deliveries"], stats["success_rate"]) == (1, 100.0)

    [request] = receiver.requests
    secret = hook["secret"]
    # The seed's verifier: HMAC-SHA256 over json.dumps(payload, sort_keys=True).
    expected = hmac.new(
        secret.encode(),
        json.dumps(json.loads(request.body), sort_keys=True).encode(),
        hashlib.sha256,
    ).hexdigest()
    assert request.headers["x-webhook-signature"] == f"sha256={expected}"
    assert request.headers["x-webhook-event"] == "user.created"
    assert request.headers["x-webhook-id"] == str(hook["id"])
    # And a Standard Webhooks verifier with the same secret.
    verified = StandardWebhook(secret).verify(request.body, request.headers)
    assert verified == {"user_id": 123, "username": "testuser"}
    assert base64.b64decode(secret.removeprefix("whsec_"))
