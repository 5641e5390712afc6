"""REST for per-key order: the ``ordering`` field, the blocked-keys view, and
retry / skip on a key's queue (real uvicorn, real Postgres). The webhooks are
inactive, so the app's own relay leaves their queues as the test and the
verbs make them."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from outbox.api.config import Settings
from tests.support.api import api_client, create_webhook
from tests.support.ordering import interleaved, queue_keyed

Conn = psycopg.Connection[Any]


@pytest.fixture
async def client(settings: Settings) -> Any:
    async with api_client(settings) as c:
        yield c


async def test_ordering_is_created_shown_patched_and_validated(client: httpx.AsyncClient) -> None:
    plain = await create_webhook(client)
    assert plain["ordering"] == "none"
    hook = await create_webhook(client, ordering="key")
    assert hook["ordering"] == "key"
    got = (await client.get(f"/webhooks/{hook['id']}")).json()
    assert got["ordering"] == "key"
    listed = (await client.get("/webhooks")).json()["items"]
    assert [h["ordering"] for h in listed] == ["none", "key"]

    resp = await client.patch(f"/webhooks/{plain['id']}", json={"ordering": "key"})
    assert resp.status_code == 200 and resp.json()["ordering"] == "key"
    for bad in ("fifo", None, 1):
        resp = await client.patch(f"/webhooks/{plain['id']}", json={"ordering": bad})
        assert resp.status_code == 422, resp.text
        assert "ordering" in resp.text
    resp = await client.post(
        "/webhooks", json={"name": "x", "url": hook["url"], "event_type": "a.b", "ordering": "x"}
    )
    assert resp.status_code == 422 and "ordering" in resp.text


async def _ids(conn: Conn, webhook_id: int) -> dict[tuple[str, int], int]:
    rows = conn.execute(
        "SELECT e.key, (e.payload ->> 'seq')::int, d.id FROM outbox.deliveries d"
        " JOIN outbox.events e ON e.id = d.event_id WHERE d.webhook_id = %s",
        (webhook_id,),
    ).fetchall()
    return {(k, s): i for k, s, i in rows}


async def test_blocked_keys_retry_and_skip(
    client: httpx.AsyncClient, conn: Conn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    hook = await create_webhook(client, ordering="key", event_type="order.changed", is_active=False)
    wid = hook["id"]
    await queue_keyed(aconn, wid, interleaved(["a", "b", "c"], 4))
    ids = await _ids(conn, wid)
    # a's and b's heads have failed (as a worker would have recorded); c's not yet.
    conn.execute(
        "UPDATE outbox.deliveries SET attempt_number = 3, error_message = 'HTTP 500',"
        " response_status = 500, next_retry_at = now() + interval '1 hour',"
        " due_at = now() + interval '1 hour' WHERE id = ANY(%s)",
        ([ids[("a", 0)], ids[("b", 0)]],),
    )
    view = (await client.get(f"/webhooks/{wid}/blocked-keys")).json()
    assert view["ordering"] == "key"
    assert (view["queues"], view["waiting"]) == (3, 9)
    assert (view["blocked_keys"], view["blocked_waiting"]) == (2, 6)
    assert [(i["key"], i["delivery_id"], i["waiting"]) for i in view["items"]] == [
        ("a", ids[("a", 0)], 3),
        ("b", ids[("b", 0)], 3),
    ]
    assert view["oldest_head"]["delivery_id"] == ids[("a", 0)]
    assert view["oldest_head"]["attempt_number"] == 3
    assert view["oldest_head"]["error_message"] == "HTTP 500"
    page2 = (await client.get(f"/webhooks/{wid}/blocked-keys?limit=1&offset=1")).json()
    assert [i["key"] for i in page2["items"]] == ["b"]
    assert page2["oldest_head"]["key"] == "a"

    metrics = (await client.get("/metrics")).text
    assert "outbox_deliveries_waiting 9.0\n" in metrics

    # The deliveries list says which wait.
    listed = (await client.get(f"/webhooks/{wid}/deliveries?limit=200")).json()["items"]
    waiting = {(d["key"], d["payload"]["seq"]) for d in listed if d["waiting"]}
    assert waiting == {(k, n) for k in "abc" for n in (1, 2, 3)}

    # Retry: a waiting delivery is refused (409 naming its head); the head goes now.
    resp = await client.post(f"/webhooks/{wid}/deliveries/{ids[('a', 1)]}/retry")
    assert resp.status_code == 409, resp.text
    assert f"behind delivery {ids[('a', 0)]}" in resp.json()["detail"]
    resp = await client.post(f"/webhooks/{wid}/deliveries/{ids[('a', 0)]}/retry")
    assert resp.status_code == 202, resp.text
    assert resp.json()["next_retry_at"] is None
    due = conn.execute(
        "SELECT due_at <= now() FROM outbox.deliveries WHERE id = %s", (ids[("a", 0)],)
    ).fetchone()
    assert due == (True,)

    # Skip: b's head ends failed with the reason; b1 is b's head now.
    resp = await client.post(
        f"/webhooks/{wid}/deliveries/{ids[('b', 0)]}/skip", json={"reason": "bad data"}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (
        body["status"] == "failed" and body["error_message"] == "skipped by an operator: bad data"
    )
    b1 = (await client.get(f"/webhooks/{wid}/deliveries?status=pending&limit=200")).json()
    assert not next(d for d in b1["items"] if d["id"] == ids[("b", 1)])["waiting"]
    failed = conn.execute(
        "SELECT payload FROM outbox.events WHERE event_type = 'webhook.delivery_failed'"
    ).fetchall()
    assert [(p["delivery_id"], p["key"], p["skipped"]) for (p,) in failed] == [
        (ids[("b", 0)], "b", True)
    ]
    view = (await client.get(f"/webhooks/{wid}/blocked-keys")).json()
    assert view["blocked_keys"] == 1 and view["waiting"] == 8

    # Skip without a body; skip of a finished one is a 409; unknown ids 404.
    resp = await client.post(f"/webhooks/{wid}/deliveries/{ids[('c', 3)]}/skip")
    assert resp.status_code == 200 and resp.json()["status"] == "failed"
    resp = await client.post(f"/webhooks/{wid}/deliveries/{ids[('c', 3)]}/skip")
    assert resp.status_code == 409 and "already failed" in resp.json()["detail"]
    resp = await client.post(f"/webhooks/{wid}/deliveries/999999/skip")
    assert resp.status_code == 404
    resp = await client.post(f"/webhooks/{wid}/deliveries/{ids[('c', 2)]}/skip", json={"x": 1})
    assert resp.status_code == 422
    assert (await client.get("/webhooks/999999/blocked-keys")).status_code == 404


async def test_patch_to_none_sends_what_waits(
    client: httpx.AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    hook = await create_webhook(client, ordering="key", event_type="order.changed", is_active=False)
    await queue_keyed(aconn, hook["id"], interleaved(["a"], 5))
    resp = await client.patch(f"/webhooks/{hook['id']}", json={"ordering": "none"})
    assert resp.status_code == 200 and resp.json()["ordering"] == "none"
    listed = (await client.get(f"/webhooks/{hook['id']}/deliveries")).json()["items"]
    assert [d["waiting"] for d in listed] == [False] * 5
    view = (await client.get(f"/webhooks/{hook['id']}/blocked-keys")).json()
    assert view["ordering"] == "none" and view["waiting"] == 0
