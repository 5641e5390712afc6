"""REST: the seed's webhook routes, their shapes, validation and pagination."""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from outbox.api.config import Settings
from tests.support.api import HOOK_URL, add_delivery, api_client, create_webhook

# The seed's webhook fields (a client written for the seed reads these).
SEED_WEBHOOK_KEYS = {
    "id",
    "name",
    "url",
    "event_type",
    "is_active",
    "description",
    "created_at",
    "updated_at",
    "last_triggered_at",
    "failure_count",
    "success_count",
}
SEED_DELIVERY_KEYS = {
    "id",
    "webhook_id",
    "event_type",
    "payload",
    "response_status",
    "response_body",
    "status",
    "error_message",
    "attempt_number",
    "created_at",
    "delivered_at",
    "next_retry_at",
}
SEED_STATS_KEYS = {
    "total_webhooks",
    "active_webhooks",
    "total_deliveries",
    "successful_deliveries",
    "failed_deliveries",
    "success_rate",
}


@pytest.fixture
async def client(settings: Settings) -> Any:
    async with api_client(settings) as c:
        yield c


async def test_create_has_the_seed_shape_and_shows_the_secret_once(
    client: httpx.AsyncClient,
) -> None:
    seed_body = {
        "name": "My Webhook",
        "url": HOOK_URL,
        "event_type": "user.created",
        "secret": "optional-secret-for-signing",
        "description": "Webhook for new users",
    }
    resp = await client.post("/webhooks", json=seed_body)
    assert resp.status_code == 201
    created = resp.json()
    assert created.keys() >= SEED_WEBHOOK_KEYS
    assert created["secret"] == "optional-secret-for-signing"
    assert {k: created[k] for k in seed_body if k != "secret"} == {
        k: v for k, v in seed_body.items() if k != "secret"
    }
    assert created["event_types"] == ["user.created"]
    assert (created["is_active"], created["payload_format"]) == (True, "raw")
    assert (created["success_count"], created["failure_count"]) == (0, 0)

    got = (await client.get(f"/webhooks/{created['id']}")).json()
    assert "secret" not in got and "previous_secret" not in got
    assert got == {k: v for k, v in created.items() if k != "secret"}


async def test_create_generates_a_standard_webhooks_secret(client: httpx.AsyncClient) -> None:
    created = await create_webhook(client)
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    other = await create_webhook(client)
    assert other["secret"] != secret


SUBSCRIPTIONS: list[tuple[dict[str, Any], str, list[str]]] = [
    ({"event_type": "user.*"}, "user.*", ["user.*"]),
    ({"event_types": ["ticket.*", "*"]}, "ticket.*", ["ticket.*", "*"]),
    (
        {"event_type": "user.created", "event_types": ["ticket.created", "user.created"]},
        "user.created",
        ["user.created", "ticket.created"],
    ),
]


async def test_create_accepts_event_type_event_types_or_both(client: httpx.AsyncClient) -> None:
    for fields, event_type, event_types in SUBSCRIPTIONS:
        resp = await client.post("/webhooks", json={"name": "h", "url": HOOK_URL, **fields})
        assert resp.status_code == 201, resp.text
        got = resp.json()
        assert (got["event_type"], got["event_types"]) == (event_type, event_types), fields


GOOD = {"name": "h", "url": HOOK_URL, "event_type": "user.created"}


BAD_CREATES = [
    ({k: v for k, v in GOOD.items() if k != "name"}, "name: field required"),
    ({**GOOD, "name": "   "}, "name: must not be blank"),
    ({**GOOD, "url": "ftp://example.com/x"}, "url: URL scheme must be http or https"),
    ({**GOOD, "url": "not a url"}, "url:"),
    ({**GOOD, "url": "http://10.1.2.3/hook"}, "url: address 10.1.2.3 is a private"),
    ({**GOOD, "url": "http://169.254.169.254/"}, "url: address 169.254.169.254 is a link-local"),
    ({**GOOD, "event_type": "User.Created"}, "event_type: invalid event type pattern"),
    ({**GOOD, "event_types": []}, "event_types: List should have at least 1 item"),
    ({**GOOD, "event_types": ["ok.one", "bad one"]}, "event_types.1: invalid event type"),
    ({"name": "h", "url": HOOK_URL}, "event_type: give event_type or event_types"),
    ({**GOOD, "payload_format": "xml"}, "payload_format: Input should be 'raw' or"),
    ({**GOOD, "secret": "whsec_!!!"}, "secret: a secret starting with whsec_"),
    ({**GOOD, "secret": ""}, "secret: String should have at least 1 character"),
    ({**GOOD, "is_active": "maybe"}, "is_active: Input should be a valid boolean"),
    ({**GOOD, "colour": "red"}, "colour: unknown field"),
    ({**GOOD, "name": "x" * 201}, "name: String should have at most 200 characters"),
]


async def test_create_rejects_bad_input_naming_the_field(client: httpx.AsyncClient) -> None:
    for body, field in BAD_CREATES:
        resp = await client.post("/webhooks", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["detail"].startswith(field), resp.json()
        first = field.split(":")[0]
        assert first in [e["field"] for e in resp.json()["errors"]]
    assert (await client.get("/webhooks")).json()["total"] == 0


MALFORMED_BODIES = [
    (b"{not json", 400, "invalid JSON body: "),
    (b"\xff\xfe\x00garbage", 400, "invalid JSON body: "),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid JSON body: "),
    (b"", 422, "body: a JSON object is required"),
    (b"[1, 2]", 422, "body: must be a JSON object"),
    (b'"text"', 422, "body: must be a JSON object"),
    (b"null", 422, "body: must be a JSON object"),
]


async def test_malformed_bodies_are_4xx_never_5xx(client: httpx.AsyncClient) -> None:
    for content, status, detail in MALFORMED_BODIES:
        for path in ("/webhooks", "/webhooks/1"):
            send = client.post if path == "/webhooks" else client.patch
            resp = await send(path, content=content, headers={"Content-Type": "application/json"})
            assert resp.status_code == status, (content[:20], resp.text)
            assert resp.json()["detail"].startswith(detail)


async def test_get_unknown_or_malformed_id(client: httpx.AsyncClient) -> None:
    resp = await client.get("/webhooks/12345")
    assert (resp.status_code, resp.json()) == (404, {"detail": "Webhook not found"})
    for bad in ("abc", "0", "-1", "1.5", "99999999999999999999"):
        resp = await client.get(f"/webhooks/{bad}")
        assert resp.status_code == 422, bad
        assert resp.json()["detail"].startswith("webhook_id: must be an integer")


async def test_list_filters_by_event_type_and_is_active(client: httpx.AsyncClient) -> None:
    exact = await create_webhook(client, name="exact", event_type="user.created")
    prefix = await create_webhook(client, name="prefix", event_type="user.*")
    every = await create_webhook(client, name="all", event_type="*")
    other = await create_webhook(client, name="other", event_type="ticket.created")
    off = await create_webhook(client, name="off", event_type="user.created", is_active=False)

    async def names(query: str) -> list[str]:
        resp = await client.get(f"/webhooks?{query}")
        assert resp.status_code == 200, resp.text
        return [w["name"] for w in resp.json()["items"]]

    # An exact type finds every webhook that would receive it.
    assert await names("event_type=user.created") == ["exact", "prefix", "all", "off"]
    assert await names("event_type=user.created&is_active=true") == ["exact", "prefix", "all"]
    # A pattern finds webhooks subscribed to that pattern (and to *).
    assert await names("event_type=user.*") == ["prefix", "all"]
    assert await names("event_type=ticket.created") == ["all", "other"]
    assert await names("is_active=false") == ["off"]
    assert len({exact["id"], prefix["id"], every["id"], other["id"], off["id"]}) == 5

    resp = await client.get("/webhooks?event_type=Not-A-Type")
    assert resp.status_code == 422 and resp.json()["detail"].startswith("event_type:")


async def test_pagination_bounds_and_stable_pages(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await create_webhook(client, name=f"w{i}")
    first = (await client.get("/webhooks?limit=2&offset=0")).json()
    assert (first["total"], first["limit"], first["offset"]) == (5, 2, 0)
    assert [w["name"] for w in first["items"]] == ["w0", "w1"]
    # A webhook created while the client pages does not shift later pages.
    await create_webhook(client, name="late")
    second = (await client.get("/webhooks?limit=2&offset=2")).json()
    assert [w["name"] for w in second["items"]] == ["w2", "w3"]
    assert second["total"] == 6
    last = (await client.get("/webhooks?limit=200&offset=4")).json()
    assert [w["name"] for w in last["items"]] == ["w4", "late"]
    beyond = (await client.get("/webhooks?offset=100")).json()
    assert (beyond["items"], beyond["total"]) == ([], 6)
    default = (await client.get("/webhooks")).json()
    assert (default["limit"], default["offset"]) == (50, 0)

    for query, field in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("is_active=perhaps", "is_active"),
    ]:
        resp = await client.get(f"/webhooks?{query}")
        assert resp.status_code == 422, query
        assert resp.json()["detail"].startswith(f"{field}:"), resp.json()


async def test_patch_changes_only_the_given_fields(client: httpx.AsyncClient) -> None:
    hook = await create_webhook(client, description="keep me", event_types=["a.b", "c.*"])
    url = f"/webhooks/{hook['id']}"

    resp = await client.patch(url, json={"name": "Updated Name", "is_active": False})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert (got["name"], got["is_active"], got["description"]) == ("Updated Name", False, "keep me")
    assert got["event_types"] == ["user.created", "a.b", "c.*"]
    assert got["updated_at"] > hook["updated_at"]
    assert "secret" not in got

    # The seed's single event_type replaces the subscription.
    got = (await client.patch(url, json={"event_type": "ticket.created"})).json()
    assert (got["event_type"], got["event_types"]) == ("ticket.created", ["ticket.created"])
    got = (await client.patch(url, json={"event_types": ["x.y", "*"]})).json()
    assert (got["event_type"], got["event_types"]) == ("x.y", ["x.y", "*"])
    got = (await client.patch(url, json={"description": None, "payload_format": "envelope"})).json()
    assert (got["description"], got["payload_format"]) == (None, "envelope")
    assert (await client.patch(url, json={})).json()["name"] == "Updated Name"
    assert (await client.get(url)).json()["payload_format"] == "envelope"

    for body, field in [
        ({"name": None}, "name: must not be null"),
        ({"is_active": None}, "is_active: must not be null"),
        ({"url": "gopher://x"}, "url: URL scheme must be http or https"),
        ({"url": "http://192.168.1.1/"}, "url: address 192.168.1.1 is a private"),
        ({"event_types": ["Bad"]}, "event_types.0: invalid event type pattern"),
        ({"id": 7}, "id: unknown field"),
        ({"secret": "   "}, "secret: secret must not be empty"),
    ]:
        resp = await client.patch(url, json=body)
        assert resp.status_code == 422, body
        assert resp.json()["detail"].startswith(field), resp.json()

    resp = await client.patch("/webhooks/999", json={"name": "x"})
    assert (resp.status_code, resp.json()["detail"]) == (404, "Webhook not found")


async def test_custom_headers_on_create_patch_and_get(client: httpx.AsyncClient) -> None:
    hook = await create_webhook(client, headers={"Authorization": "Bearer rx", "X-Tenant": "a"})
    assert hook["headers"] == {"Authorization": "Bearer rx", "X-Tenant": "a"}
    url = f"/webhooks/{hook['id']}"
    assert (await client.get(url)).json()["headers"] == hook["headers"]
    # Other fields leave them alone; "headers" replaces them; {} removes them.
    assert (await client.patch(url, json={"name": "n"})).json()["headers"] == hook["headers"]
    got = (await client.patch(url, json={"headers": {"X-Other": "1"}})).json()
    assert got["headers"] == {"X-Other": "1"}
    assert (await client.patch(url, json={"headers": {}})).json()["headers"] == {}
    assert (await create_webhook(client))["headers"] == {}
    listed = (await client.get("/webhooks")).json()["items"]
    assert all("headers" in item for item in listed)

    for name in ("Connection", "Content-Type", "X-Webhook-Signature", "webhook-id", "Host"):
        for resp in (
            await client.post(
                "/webhooks",
                json={"name": "h", "url": HOOK_URL, "event_type": "a.b", "headers": {name: "v"}},
            ),
            await client.patch(url, json={"headers": {name: "v"}}),
        ):
            assert resp.status_code == 422, resp.text
            detail = resp.json()["detail"]
            assert detail.startswith("headers:") and repr(name) in detail, detail
    resp = await client.patch(url, json={"headers": None})
    assert resp.json()["detail"].startswith("headers: must not be null")
    resp = await client.patch(url, json={"headers": {"X-A": 1}})
    assert resp.status_code == 422 and resp.json()["detail"].startswith("headers.X-A")
    assert (await client.get(url)).json()["headers"] == {}


async def test_patch_secret_replaces_it_without_showing_it(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client, secret="first-secret")
    conn.execute(
        "UPDATE outbox.webhooks SET previous_secret = 'old',"
        " previous_secret_expires_at = now() + interval '1 hour' WHERE id = %s",
        (hook["id"],),
    )
    resp = await client.patch(f"/webhooks/{hook['id']}", json={"secret": "second-secret"})
    assert resp.status_code == 200 and "second-secret" not in resp.text
    assert resp.json()["previous_secret_expires_at"] is None
    row = conn.execute(
        "SELECT secret, previous_secret FROM outbox.webhooks WHERE id = %s", (hook["id"],)
    ).fetchone()
    assert row == ("second-secret", None)


async def test_reactivating_clears_the_disabled_state(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client)
    conn.execute(
        "UPDATE outbox.webhooks SET is_active = false, disabled_reason = 'HTTP 410 Gone',"
        " failing_since = now() WHERE id = %s",
        (hook["id"],),
    )
    got = (await client.get(f"/webhooks/{hook['id']}")).json()
    assert (got["is_active"], got["disabled_reason"]) == (False, "HTTP 410 Gone")
    got = (await client.patch(f"/webhooks/{hook['id']}", json={"is_active": True})).json()
    assert (got["is_active"], got["disabled_reason"], got["failing_since"]) == (True, None, None)


async def test_delete_removes_the_webhook_and_its_history(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client, is_active=False)
    keep = await create_webhook(client, is_active=False)
    add_delivery(conn, hook["id"], attempts=2)
    kept = add_delivery(conn, keep["id"], attempts=1)

    resp = await client.delete(f"/webhooks/{hook['id']}")
    assert (resp.status_code, resp.content) == (204, b"")
    assert (await client.get(f"/webhooks/{hook['id']}")).status_code == 404
    assert (await client.delete(f"/webhooks/{hook['id']}")).status_code == 404
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM outbox.deliveries WHERE webhook_id = %s),"
        " (SELECT array_agg(delivery_id) FROM outbox.delivery_attempts)",
        (hook["id"],),
    ).fetchone()
    assert counts == (0, [kept])


async def test_stats_has_the_seed_shape(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    empty = (await client.get("/webhooks/stats")).json()
    assert empty.keys() >= SEED_STATS_KEYS
    assert empty["success_rate"] == 0.0 and empty["total_webhooks"] == 0

    a = await create_webhook(client, is_active=False)
    await create_webhook(client, is_active=False)
    for status in ("success", "success", "failed", "pending"):
        add_delivery(conn, a["id"], status=status)
    resp = await client.get("/webhooks/stats")
    assert resp.status_code == 200
    assert resp.json() == {
        "total_webhooks": 2,
        "active_webhooks": 0,
        "total_deliveries": 4,
        "successful_deliveries": 2,
        "failed_deliveries": 1,
        "pending_deliveries": 1,
        "success_rate": 66.67,
    }


async def test_deliveries_list_with_status_filter_and_payload(
    client: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    hook = await create_webhook(client, is_active=False)
    ids = [
        add_delivery(conn, hook["id"], status=s, payload={"n": i})
        for i, s in enumerate(["failed", "success", "failed", "pending"])
    ]
    url = f"/webhooks/{hook['id']}/deliveries"
    page = (await client.get(url)).json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 50, 0)
    assert [d["id"] for d in page["items"]] == ids
    first = page["items"][0]
    assert first.keys() >= SEED_DELIVERY_KEYS
    assert (first["payload"], first["status"], first["event_type"]) == (
        {"n": 0},
        "failed",
        "user.created",
    )
    assert (first["webhook_id"], first["response_status"]) == (hook["id"], 500)
    success = page["items"][1]
    assert success["delivered_at"] is not None and success["error_message"] is None

    failed = (await client.get(f"{url}?status=failed&limit=1&offset=1")).json()
    assert (failed["total"], [d["id"] for d in failed["items"]]) == (2, [ids[2]])
    resp = await client.get(f"{url}?status=lost")
    assert resp.status_code == 422 and resp.json()["detail"].startswith("status:")
    resp = await client.get(f"{url}?limit=500")
    assert resp.status_code == 422 and resp.json()["detail"].startswith("limit:")
    resp = await client.get("/webhooks/999/deliveries")
    assert (resp.status_code, resp.json()["detail"]) == (404, "Webhook not found")

    # A payload removed by retention reads as null; the delivery stays listed.
    conn.execute(
        "DELETE FROM outbox.events WHERE id = (SELECT event_id FROM outbox.deliveries"
        " WHERE id = %s)",
        (ids[1],),
    )
    items = (await client.get(url)).json()["items"]
    assert items[1]["payload"] is None and items[1]["id"] == ids[1]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def all_logs() -> Iterator[_Capture]:
    """Every log record of the process at DEBUG, uvicorn's own loggers included.

    Enter it after the server started: uvicorn's logging setup replaces the
    handlers of its loggers.
    """
    capture = _Capture()
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.access", "uvicorn.error")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        for lg, level in saved:
            lg.removeHandler(capture)
            lg.setLevel(level)


async def test_secrets_never_in_reads_or_logs(settings: Settings) -> None:
    async with api_client(settings) as client:
        with all_logs() as logs:
            given = await create_webhook(client, secret="given-secret-value-123")
            generated = await create_webhook(client)
            rotated = (await client.post(f"/webhooks/{generated['id']}/rotate-secret")).json()
            secrets = [given["secret"], generated["secret"], rotated["secret"]]
            patched = await client.patch(
                f"/webhooks/{given['id']}", json={"secret": "patched-secret-456", "name": "n"}
            )
            secrets.append("patched-secret-456")
            bad = await client.post("/webhooks", json={**GOOD, "secret": "whsec_!bad-secret"})
            assert bad.status_code == 422
            secrets.append("whsec_!bad-secret")
            reads = [
                patched,
                await client.get("/webhooks"),
                await client.get(f"/webhooks/{given['id']}"),
                await client.get(f"/webhooks/{generated['id']}"),
                await client.get("/webhooks?is_active=true&limit=200"),
            ]
    for resp in [*reads, bad]:
        for secret in secrets:
            assert secret not in resp.text
    for resp in reads:
        assert resp.status_code == 200
        for hook in resp.json().get("items", [resp.json()]):
            assert not {"secret", "previous_secret"} & hook.keys()
    logged = "\n".join(logs.lines)
    assert "POST /webhooks" in logged, "the access log was not captured"
    for secret in secrets:
        assert secret not in logged
