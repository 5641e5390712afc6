"""``/sinks`` over HTTP: create, list, get, patch, delete; validation names the
field; the URL's password never comes back; auth is required."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from outbox.api.config import Settings
from outbox.relay.sinks import runner as sink_runner
from tests.support.api import api_client
from tests.support.sinks import NoBroker

NATS = {"name": "orders", "url": "nats://127.0.0.1:9", "event_types": ["order.*"]}


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_runner, "open_publisher", lambda _cfg: NoBroker())


async def test_create_get_list_patch_delete(settings: Settings) -> None:
    async with api_client(settings) as client:
        r = await client.post("/sinks", json={**NATS, "stream": "ORDERS"})
        assert r.status_code == 201, r.text
        sink = r.json()
        assert sink["kind"] == "nats" and sink["subject"] == "outbox.{type}"
        assert sink["stream"] == "ORDERS" and sink["is_active"] is True
        assert sink["published_count"] == 0 and sink["last_error"] is None
        assert sink["lag"] == {"events": 0, "oldest_seconds": 0.0, "capped": False}
        assert sink["cursor"]

        r = await client.get(f"/sinks/{sink['id']}")
        assert r.status_code == 200 and r.json()["name"] == "orders"
        r = await client.get("/sinks")
        assert r.json()["total"] == 1 and r.json()["items"][0]["id"] == sink["id"]

        r = await client.patch(
            f"/sinks/{sink['id']}", json={"subject": "shop.{type}.{key}", "stream": None}
        )
        assert r.status_code == 200, r.text
        assert r.json()["subject"] == "shop.{type}.{key}" and r.json()["stream"] is None
        assert r.json()["updated_at"] > sink["updated_at"]

        r = await client.delete(f"/sinks/{sink['id']}")
        assert r.status_code == 204
        assert (await client.get(f"/sinks/{sink['id']}")).status_code == 404
        assert (await client.delete(f"/sinks/{sink['id']}")).status_code == 404


async def test_amqp_defaults_and_password_never_shown(settings: Settings) -> None:
    async with api_client(settings) as client:
        body = {"name": "rmq", "url": "amqp://app:hunter2@127.0.0.1:5672/vh"}
        r = await client.post("/sinks", json=body)
        assert r.status_code == 201, r.text
        sink = r.json()
        assert sink["kind"] == "amqp" and sink["exchange"] == "amq.topic"
        assert sink["routing_key"] == "{type}" and sink["event_types"] == ["*"]
        assert "hunter2" not in r.text and sink["url"] == "amqp://app:***@127.0.0.1:5672/vh"
        for resp in (await client.get("/sinks"), await client.get(f"/sinks/{sink['id']}")):
            assert "hunter2" not in resp.text
        r = await client.patch(f"/sinks/{sink['id']}", json={"description": "d"})
        assert "hunter2" not in r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "url": "http://h"}, "kind"),
        ({"name": "x", "url": "nats://h", "subject": "{type}"}, "subject"),
        ({"name": "x", "url": "nats://h", "exchange": "e"}, "exchange"),
        ({"name": "x", "url": "amqp://h", "stream": "S"}, "stream"),
        ({"name": "x", "url": "nats://h", "event_types": ["Nope"]}, "event_types.0"),
        ({"name": "x", "url": "nats://h", "since": "garbage"}, "since"),
        ({"name": "x", "url": "nats://h", "kind": "kafka"}, "kind"),
        ({"name": "x", "url": "nats://h", "colour": "red"}, "colour"),
        ({"url": "nats://h"}, "name"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    settings: Settings, body: dict[str, Any], field: str
) -> None:
    async with api_client(settings) as client:
        r = await client.post("/sinks", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{field}:"), r.json()


async def test_names_are_unique_and_patch_is_checked_whole(settings: Settings) -> None:
    async with api_client(settings) as client:
        a = (await client.post("/sinks", json=NATS)).json()
        r = await client.post("/sinks", json=NATS)
        assert r.status_code == 422 and r.json()["detail"].startswith("name:")
        b = (await client.post("/sinks", json={**NATS, "name": "other"})).json()
        r = await client.patch(f"/sinks/{b['id']}", json={"name": "orders"})
        assert r.status_code == 422 and r.json()["detail"].startswith("name:")
        r = await client.patch(f"/sinks/{a['id']}", json={"routing_key": "{type}"})
        assert r.status_code == 422 and r.json()["detail"].startswith("routing_key:")
        r = await client.patch("/sinks/999999", json={"is_active": False})
        assert r.status_code == 404 and r.json()["detail"] == "Sink not found"


async def test_since_sets_the_cursor(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT outbox.publish('order.created', '{}')")
    async with api_client(settings) as client:
        now = (await client.post("/sinks", json=NATS)).json()
        assert now["lag"]["events"] == 0
        start = (
            await client.post("/sinks", json={**NATS, "name": "b", "since": "beginning"})
        ).json()
        assert start["lag"]["events"] == 1
        r = await client.patch(f"/sinks/{now['id']}", json={"since": "beginning"})
        assert r.json()["lag"]["events"] == 1


async def test_every_route_needs_a_token(settings: Settings) -> None:
    async with api_client(settings, headers={}) as client:
        for method, path in [
            ("POST", "/sinks"),
            ("GET", "/sinks"),
            ("GET", "/sinks/1"),
            ("PATCH", "/sinks/1"),
            ("DELETE", "/sinks/1"),
        ]:
            r = await client.request(method, path, json={})
            assert r.status_code == 401, (method, path, r.text)


async def test_only_admin_tokens_change_sinks(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    from outbox.tokens import create_token

    read = create_token(conn, "reader", scope="read")
    async with api_client(settings) as admin:
        sink = (await admin.post("/sinks", json=NATS)).json()
    async with api_client(settings, headers={"Authorization": f"Bearer {read}"}) as client:
        assert (await client.get("/sinks")).status_code == 200
        assert (await client.get(f"/sinks/{sink['id']}")).status_code == 200
        for method, path in [
            ("POST", "/sinks"),
            ("PATCH", f"/sinks/{sink['id']}"),
            ("DELETE", f"/sinks/{sink['id']}"),
        ]:
            r = await client.request(method, path, json={**NATS, "name": "y"})
            assert r.status_code == 403, (method, r.text)
            assert "admin" in r.json()["detail"]
