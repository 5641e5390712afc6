"""REST auth: every protected operation, table-driven from /openapi.json."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from outbox.api.config import Settings
from outbox.api.endpoint import NO_TOKEN
from outbox.tokens import create_token, revoke_token
from tests.support.servers import serve_app

MISSING = {"detail": "Missing API key"}
INVALID = {"detail": "Invalid or expired API key"}
PUBLIC = {("get", "/openapi.json"), ("get", "/health"), ("get", "/")}


def _operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method, path)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if op["security"]
    ]


def _url(path: str) -> str:
    return path.replace("{webhook_id}", "1").replace("{delivery_id}", "1")


async def test_every_protected_route_refuses_bad_credentials(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    revoked = create_token(conn, "old")
    revoke_token(conn, "old")
    live = create_token(conn, "ci")
    refused = [
        ({}, MISSING),
        ({"Authorization": "Bearer"}, MISSING),
        ({"Authorization": "Basic dGVzdDp0ZXN0"}, MISSING),
        ({"Authorization": "Bearer wrong-token"}, INVALID),
        ({"X-API-Key": "wrong-token"}, INVALID),
        ({"Authorization": f"Bearer {revoked}"}, INVALID),
        ({"X-API-Key": revoked}, INVALID),
    ]
    accepted = [
        {"Authorization": "Bearer test-token"},
        {"authorization": "bearer test-token"},
        {"X-API-Key": "test-token"},
        {"Authorization": f"Bearer {live}"},
        {"X-API-Key": live},
    ]
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.base_url) as c:
        doc = (await c.get("/openapi.json")).json()
        operations = _operations(doc)
        assert len(operations) >= 15
        assert not PUBLIC & set(operations)
        for method, path in operations:
            for headers, detail in refused:
                resp = await c.request(method, _url(path), headers=headers, json={})
                assert resp.status_code == 401, (method, path, headers)
                assert resp.json() == detail, (method, path, headers)
                assert resp.headers["www-authenticate"] == "Bearer"
            # The WebSocket's ?token= is not a REST credential.
            resp = await c.request(method, _url(path) + "?token=test-token", json={})
            assert resp.status_code == 401
        for method, path in sorted(operations, key=lambda op: op[0] == "delete"):
            for headers in accepted:
                resp = await c.request(method, _url(path), headers=headers, json={})
                assert resp.status_code != 401, (method, path, headers, resp.text)
        for method, path in PUBLIC:
            resp = await c.request(method, path)
            assert resp.status_code != 401, path


async def test_no_token_configured_says_how_to_create_one(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    bare = settings.replace(api_token=None)
    async with serve_app(bare) as server, httpx.AsyncClient(base_url=server.base_url) as c:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            resp = await c.get("/webhooks", headers=headers)
            assert (resp.status_code, resp.json()) == (401, {"detail": NO_TOKEN})
        # The bootstrap token of another process is not valid here.
        resp = await c.get("/webhooks", headers={"Authorization": "Bearer test-token"})
        assert resp.json() == {"detail": NO_TOKEN}

        token = create_token(conn, "first")
        resp = await c.get("/webhooks", headers={"X-API-Key": token})
        assert resp.status_code == 200
        resp = await c.get("/webhooks", headers={"X-API-Key": "wrong"})
        assert resp.json() == INVALID
        used = conn.execute(
            "SELECT last_used_at IS NOT NULL FROM outbox.api_tokens WHERE name = 'first'"
        ).fetchone()
        assert used == (True,)

        revoke_token(conn, "first")
        resp = await c.get("/webhooks", headers={"X-API-Key": token})
        assert (resp.status_code, resp.json()) == (401, {"detail": NO_TOKEN})


async def test_last_used_at_is_written_at_most_once_a_minute(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    token = create_token(conn, "busy")
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.base_url) as c:
        headers = {"Authorization": f"Bearer {token}"}
        assert (await c.get("/webhooks", headers=headers)).status_code == 200
        first = conn.execute(
            "SELECT last_used_at FROM outbox.api_tokens WHERE name = 'busy'"
        ).fetchone()
        assert first is not None and first[0] is not None
        for _ in range(5):
            assert (await c.get("/webhooks", headers=headers)).status_code == 200
        again = conn.execute(
            "SELECT last_used_at FROM outbox.api_tokens WHERE name = 'busy'"
        ).fetchone()
        assert again == first
