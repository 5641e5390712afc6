"""REST pieces the admin console stands on: history newest first with a
seam to /ws, an event's deliveries, newest-first deliveries, replay,
attempts with headers, the rotation switch and /whoami."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import httpx
import psycopg
import pytest
import websockets

import outbox
from outbox.api.config import Settings
from tests.support.api import AUTH, TOKEN, add_delivery, api_client, create_webhook
from tests.support.receivers import running
from tests.support.servers import serve_app
from tests.support.waiting import wait_for


@pytest.fixture
async def client(settings: Settings) -> Any:
    async with api_client(settings) as c:
        yield c


def publish(conn: psycopg.Connection[Any], event_type: str, payload: Any) -> int:
    with conn.transaction():
        return outbox.publish(conn, event_type, payload)


async def ws_events(url: str, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The first ``n`` event messages of a /ws connection."""
    got: list[dict[str, Any]] = []
    async with websockets.connect(url, open_timeout=timeout) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        assert hello["type"] == "connection"
        while len(got) < n:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            if "id" in msg:
                got.append(msg)
    return got


async def test_history_newest_first_meets_the_live_feed_with_no_gap_and_no_repeat(
    settings: Settings, conn: psycopg.Connection[Any], db_url: str
) -> None:
    ids = [publish(conn, "user.created", {"n": i}) for i in range(25)]
    # A transaction that drew its id before the history read and commits after it.
    late = psycopg.connect(db_url)
    late_id = outbox.publish(late, "user.updated", {"late": True})
    after = publish(conn, "user.created", {"n": 25})
    try:
        async with (
            serve_app(settings) as srv,
            httpx.AsyncClient(base_url=srv.base_url, headers=AUTH) as client,
        ):
            page = (await client.get("/events?order=desc&limit=10")).json()
            assert [e["id"] for e in page["items"]] == [after, *ids[::-1][:9]]
            assert page["has_more"] is True
            # Further back, page by page, to the first event.
            seen = [e["id"] for e in page["items"]]
            back = page
            while back["has_more"]:
                back = (
                    await client.get(f"/events?order=desc&limit=10&before={back['prev_cursor']}")
                ).json()
                seen += [e["id"] for e in back["items"]]
            assert seen == [after, *ids[::-1]]
            assert late_id not in seen

            # Live from the history's cursor: the late commit, then what follows.
            late.commit()
            newer = publish(conn, "user.created", {"n": 26})
            live = await ws_events(f"{srv.ws_url}?token={TOKEN}&since={page['next_cursor']}", 2)
            assert [m["id"] for m in live] == [late_id, newer]

            # An item's own cursor resumes right after it.
            mid = page["items"][3]
            rest = (await client.get(f"/events?since={mid['cursor']}&limit=100")).json()
            # (and the late commit, which that cursor saw in progress)
            assert [e["id"] for e in rest["items"]][:4] == [ids[-2], ids[-1], late_id, after]

            # Filters apply to history too.
            only = (await client.get("/events?order=desc&event_type=user.updated")).json()
            assert [e["id"] for e in only["items"]] == [late_id]
            bad = await client.get("/events?order=desc&before=nope")
            assert bad.status_code == 422 and "before" in bad.text
    finally:
        late.close()


async def test_empty_since_is_the_start_on_events_and_now_on_ws(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    first = publish(conn, "user.created", {"n": 1})
    async with (
        serve_app(settings) as srv,
        httpx.AsyncClient(base_url=srv.base_url, headers=AUTH) as client,
    ):
        page = (await client.get("/events?since=")).json()
        assert [e["id"] for e in page["items"]] == [first] and page["has_more"] is False

        async with websockets.connect(f"{srv.ws_url}?token={TOKEN}&since=") as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["type"] == "connection"
            newer = publish(conn, "user.created", {"n": 2})
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert msg["id"] == newer  # from now: the old event is not replayed


async def test_event_deliveries_and_newest_first_delivery_pages(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    a = await create_webhook(client, name="crm", is_active=False)
    b = await create_webhook(client, name="billing", is_active=False)
    d1 = add_delivery(conn, a["id"], status="success", attempts=1)
    d2 = add_delivery(conn, a["id"], status="failed", attempts=2)
    d3 = add_delivery(conn, a["id"], status="success", attempts=1)
    event = conn.execute("SELECT event_id FROM outbox.deliveries WHERE id = %s", (d2,)).fetchone()
    assert event is not None
    conn.execute(
        "INSERT INTO outbox.deliveries (webhook_id, event_id, event_type) VALUES (%s, %s, %s)",
        (b["id"], event[0], "user.created"),
    )

    r = await client.get(f"/events/{event[0]}/deliveries")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(i["webhook_name"], i["status"], i["replay"]) for i in items] == [
        ("crm", "failed", 0),
        ("billing", "pending", 0),
    ]
    assert (await client.get("/events/999999/deliveries")).status_code == 404
    assert (await client.get("/events/x/deliveries")).status_code == 422

    newest = (await client.get(f"/webhooks/{a['id']}/deliveries?order=desc&limit=2")).json()
    assert [d["id"] for d in newest["items"]] == [d3, d2] and newest["total"] == 3
    # The event's own time, where a replay by time of "what failed" starts.
    assert all(d["event_created_at"] for d in newest["items"])
    page2 = await client.get(f"/webhooks/{a['id']}/deliveries?order=desc&limit=2&offset=2")
    assert [d["id"] for d in page2.json()["items"]] == [d1]
    oldest = (await client.get(f"/webhooks/{a['id']}/deliveries")).json()
    assert [d["id"] for d in oldest["items"]] == [d1, d2, d3]
    bad = await client.get(f"/webhooks/{a['id']}/deliveries?order=sideways")
    assert bad.status_code == 422 and "order" in bad.text


async def test_replay_counts_first_then_queues_new_deliveries_also_of_delivered_events(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client, name="crm", event_types=["user.*"], is_active=False)
    other = publish(conn, "ticket.created", {"n": 0})  # not subscribed
    delivered = [add_delivery(conn, hook["id"], status="success", attempts=1) for _ in range(3)]
    failed = add_delivery(conn, hook["id"], status="failed", attempts=2)
    never = publish(conn, "user.deleted", {"n": 9})  # no delivery yet (inactive webhook)
    events = [
        r[0]
        for r in conn.execute(
            "SELECT event_id FROM outbox.deliveries WHERE id = ANY(%s) ORDER BY id",
            ([*delivered, failed],),
        )
    ]
    start = conn.execute("SELECT min(created_at) FROM outbox.events").fetchone()
    assert start is not None
    since = start[0].isoformat()
    url = f"/webhooks/{hook['id']}/replay"

    dry = await client.post(url, json={"since": since, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json() == {"queued": 0, "matched": 5, "dry_run": True}
    count = conn.execute(
        "SELECT count(*) FROM outbox.deliveries WHERE webhook_id = %s", (hook["id"],)
    ).fetchone()
    assert count is not None and count[0] == 4  # the dry run queued nothing

    r = await client.post(url, json={"since": since})
    assert r.status_code == 202, r.text
    assert r.json() == {"queued": 5, "matched": 5, "dry_run": False}
    rows = conn.execute(
        "SELECT event_id, replay, status FROM outbox.deliveries"
        " WHERE webhook_id = %s ORDER BY event_id, replay",
        (hook["id"],),
    ).fetchall()
    replays = {(e, n) for e, n, s in rows if s == "pending"}
    assert replays == {*((e, 1) for e in events), (never, 0)}
    assert other not in {e for e, _, _ in rows}

    # A cursor range: after the first event's cursor, up to the third's.
    page = (await client.get("/events?limit=100")).json()
    by_id = {e["id"]: e for e in page["items"]}
    second = await client.post(
        url, json={"since": by_id[events[0]]["cursor"], "until": by_id[events[2]]["cursor"]}
    )
    assert second.status_code == 202, second.text
    assert second.json()["queued"] == 2
    again = conn.execute(
        "SELECT event_id FROM outbox.deliveries WHERE webhook_id = %s AND replay = 2"
        " ORDER BY event_id",
        (hook["id"],),
    ).fetchall()
    assert [e for (e,) in again] == events[1:3]

    for body, field in [
        ({"since": "yesterday"}, "since"),
        ({}, "since"),
        ({"since": since, "until": "nope"}, "until"),
        ({"since": "2030-01-02T00:00:00", "until": "2030-01-01T00:00:00"}, "until"),
        ({"since": since, "extra": 1}, "extra"),
    ]:
        bad = await client.post(url, json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert field in json.dumps(bad.json()), (body, bad.text)
    missing = await client.post("/webhooks/999999/replay", json={"since": since})
    assert missing.status_code == 404


async def test_attempts_show_headers_redacted_and_the_response_headers(
    settings: Settings,
) -> None:
    async with running() as rx, api_client(settings) as client:
        hook = await create_webhook(client, url=rx.url, event_type="user.created")
        sent = await client.post(f"/webhooks/{hook['id']}/test")
        assert sent.status_code == 202, sent.text
        delivery = sent.json()["id"]

        async def attempts() -> Any:
            r = await client.get(f"/webhooks/{hook['id']}/deliveries/{delivery}/attempts")
            return r.json()["items"]

        items = await wait_for(attempts, timeout=20, what="the test delivery's attempt")
        a = items[0]
        assert a["response_status"] == 200
        req = a["request_headers"]
        assert req["x-webhook-signature"] == "[redacted]"
        assert req["webhook-signature"] == "[redacted]"
        assert req["x-webhook-event"] == "webhook.test"
        assert req["webhook-id"].startswith("evt_")
        assert "content-length" in {k.lower() for k in a["response_headers"]}
        # The real request carried real signatures.
        assert rx.requests[0].headers["x-webhook-signature"].startswith("sha256=")


def seed_sig(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_rotation_keeps_the_seed_header_on_the_old_secret_unless_told(
    settings: Settings,
) -> None:
    async with running() as rx, api_client(settings) as client:
        hook = await create_webhook(client, url=rx.url, event_type="user.created")
        old = hook["secret"]
        r = await client.post(f"/webhooks/{hook['id']}/rotate-secret", json={})
        assert r.status_code == 200, r.text
        body = r.json()
        new = body["secret"]
        assert body["seed_signature"] == "old"
        assert "previous secret until" in body["rotation"]["x_webhook_signature"]
        assert "both secrets until" in body["rotation"]["webhook_signature"]
        assert body["rotation"]["overlap_ends_at"] == body["previous_secret_expires_at"]

        await client.post(f"/webhooks/{hook['id']}/test")
        await wait_for(lambda: len(rx.requests) == 1, timeout=20, what="first test request")
        req = rx.requests[0]
        assert req.headers["x-webhook-signature"] == seed_sig(old, req.body)
        assert len(req.headers["webhook-signature"].split(" ")) == 2

        r = await client.post(
            f"/webhooks/{hook['id']}/rotate-secret", json={"seed_signature": "new"}
        )
        assert r.status_code == 200, r.text
        newest = r.json()["secret"]
        assert r.json()["seed_signature"] == "new"
        assert "new secret from now" in r.json()["rotation"]["x_webhook_signature"]
        await client.post(f"/webhooks/{hook['id']}/test")
        await wait_for(lambda: len(rx.requests) == 2, timeout=20, what="second test request")
        req = rx.requests[1]
        assert req.headers["x-webhook-signature"] == seed_sig(newest, req.body)
        assert new != newest

        none = await client.post(
            f"/webhooks/{hook['id']}/rotate-secret", json={"overlap_seconds": 0}
        )
        assert none.json()["rotation"]["overlap_ends_at"] is None
        bad = await client.post(
            f"/webhooks/{hook['id']}/rotate-secret", json={"seed_signature": "both"}
        )
        assert bad.status_code == 422 and "seed_signature" in bad.text


async def test_whoami_names_the_token_and_its_scope(settings: Settings) -> None:
    async with api_client(settings) as client:
        r = await client.get("/whoami")
        assert r.status_code == 200
        assert r.json() == {"name": "bootstrap", "scope": "admin", "events": None}
    async with api_client(settings, headers={}) as anon:
        assert (await anon.get("/whoami")).status_code == 401
