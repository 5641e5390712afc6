"""Scoped tokens through ``outbox token`` and a real ``outbox serve``:
``read`` may GET everything and watch, ``feed`` may only watch (its event
types), ``admin`` everything; out of scope is a 403 naming the scope needed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from outbox.cursor import Cursor
from tests.support.hostile import read_close_code, ws_frame, ws_handshake
from tests.support.paths import ROOT
from tests.support.relay import ServeProcess, serve_processes


def _token_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "token", *args, "--database-url", db_url],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
    )


def _create(db_url: str, name: str, *args: str) -> str:
    r = _token_cli(db_url, "create", name, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[0].strip()


def _url(path: str) -> str:
    return (
        path.replace("{webhook_id}", "1")
        .replace("{delivery_id}", "1")
        .replace("{event_id}", "1")
        .replace("{id}", "1")
        .replace("{sink_id}", "1")
    )


def _ws_events(port: int, path: str, token: str, after_subscribe: list[str] | None) -> list[str]:
    """Connect, optionally subscribe, and collect event types until a marker arrives."""
    s = ws_handshake(port, path, {"Authorization": f"Bearer {token}"})
    try:
        s.settimeout(10)
        buf = b""
        types: list[str] = []
        if after_subscribe is not None:
            s.sendall(
                ws_frame(0x1, json.dumps({"type": "subscribe", "events": after_subscribe}).encode())
            )
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return types
            buf += chunk
            while len(buf) >= 2:
                n, off = buf[1] & 0x7F, 2
                if n == 126:
                    n, off = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    n, off = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < off + n:
                    break
                msg = json.loads(buf[off : off + n])
                buf = buf[off + n :]
                if msg.get("type") in ("connection", "pong", "subscribed"):
                    continue
                types.append(msg["type"])
                if msg["type"] == "order.done":
                    return types
    finally:
        s.close()


async def test_scopes_through_outbox_serve(db_url: str, tmp_path: Path) -> None:
    admin = _create(db_url, "ops")
    reader = _create(db_url, "dashboard", "--scope", "read")
    feeder = _create(db_url, "orders-page", "--scope", "feed", "--events", "order.*")
    listing = _token_cli(db_url, "list")
    assert listing.returncode == 0
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert " admin " in lines["ops"]
    assert " read " in lines["dashboard"]
    assert "feed (order.*)" in lines["orders-page"]
    bad = _token_cli(db_url, "create", "x", "--scope", "read", "--events", "a.*")
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
    assert "--events" in bad.stderr and "Traceback" not in bad.stderr
    bad = _token_cli(db_url, "create", "y", "--scope", "feed", "--events", "Bad Pattern")
    assert bad.returncode != 0 and "--events: invalid pattern" in bad.stderr

    with psycopg.connect(db_url, autocommit=True) as c:
        for t in ("user.created", "order.placed", "user.deleted", "order.done"):
            c.execute("SELECT outbox.publish(%s, '{}')", (t,))

    with serve_processes() as procs:
        p = ServeProcess(db_url, tmp_path / "serve.log")
        procs.append(p)
        await p.wait_ready()
        async with httpx.AsyncClient(base_url=p.base_url, timeout=10) as c:

            def as_(token: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}"}

            who = {
                name: (await c.get("/whoami", headers=as_(tok))).json()
                for name, tok in (("admin", admin), ("read", reader), ("feed", feeder))
            }
            assert who["admin"] == {"name": "ops", "scope": "admin", "events": None}
            assert who["read"] == {"name": "dashboard", "scope": "read", "events": None}
            assert who["feed"] == {"name": "orders-page", "scope": "feed", "events": ["order.*"]}
            boot = (await c.get("/whoami", headers=as_("test-token"))).json()
            assert boot["scope"] == "admin"

            r = await c.post(
                "/webhooks",
                headers=as_(admin),
                json={"name": "h", "url": "http://127.0.0.1:9/", "event_types": ["*"]},
            )
            assert r.status_code == 201, r.text
            hook = r.json()["id"]

            doc = (await c.get("/openapi.json")).json()
            ops = [
                (m, path)
                for path, item in doc["paths"].items()
                for m, op in item.items()
                if op["security"]
            ]
            assert len(ops) >= 15
            for method, path in ops:
                url = _url(path).replace("/webhooks/1", f"/webhooks/{hook}")
                if method == "delete":
                    continue  # below, last
                for token, allowed in (
                    (reader, method == "get"),
                    (feeder, (method, path) in {("get", "/events"), ("get", "/whoami")}),
                ):
                    r = await c.request(method, url, headers=as_(token), json={})
                    if allowed:
                        assert r.status_code != 403, (method, path, r.text)
                    else:
                        assert r.status_code == 403, (method, path, token[:8], r.text)
                        detail = r.json()["detail"]
                        needed = "'read'" if method == "get" else "'admin'"
                        assert needed in detail and "this token has scope" in detail, detail

            # A read token cannot rotate, repoint or delete a webhook.
            for method, path, body in (
                ("post", f"/webhooks/{hook}/rotate-secret", {}),
                ("patch", f"/webhooks/{hook}", {"url": "http://127.0.0.1:9/steal"}),
                ("delete", f"/webhooks/{hook}", None),
            ):
                r = await c.request(method, path, headers=as_(reader), json=body)
                assert r.status_code == 403, (method, path)
                assert "needs a token with scope 'admin'" in r.json()["detail"]
            r = await c.get(f"/webhooks/{hook}", headers=as_(reader))
            assert r.status_code == 200 and "secret" not in r.json()

            # /events: read sees everything, feed only its patterns.
            r = await c.get("/events", headers=as_(reader))
            assert [e["type"] for e in r.json()["items"]] == [
                "user.created",
                "order.placed",
                "user.deleted",
                "order.done",
            ]
            r = await c.get("/events", headers=as_(feeder))
            assert [e["type"] for e in r.json()["items"]] == ["order.placed", "order.done"]
            r = await c.get("/events?event_type=user.*", headers=as_(feeder))
            assert r.json()["items"] == []
            r = await c.get("/events?order=desc", headers=as_(feeder))
            assert [e["type"] for e in r.json()["items"]] == ["order.done", "order.placed"]

            r = await c.delete(f"/webhooks/{hook}", headers=as_(admin))
            assert r.status_code == 204

        # /ws: every scope may watch; a feed token only its event types,
        # whatever it subscribes to.
        since = "/ws?since="
        cursor0 = Cursor(0).encode()
        got = await asyncio.to_thread(_ws_events, p.port, since + cursor0, reader, None)
        assert got == ["user.created", "order.placed", "user.deleted", "order.done"]
        got = await asyncio.to_thread(_ws_events, p.port, since + cursor0, feeder, None)
        assert got == ["order.placed", "order.done"]
        got = await asyncio.to_thread(
            _ws_events, p.port, "/ws?events=*&since=" + cursor0, feeder, None
        )
        assert got == ["order.placed", "order.done"]


@pytest.mark.parametrize("scope", ["read", "feed"])
async def test_a_revoked_scoped_token_is_closed(db_url: str, tmp_path: Path, scope: str) -> None:
    token = _create(db_url, "watcher", "--scope", scope)
    with serve_processes() as procs:
        p = ServeProcess(db_url, tmp_path / "serve.log")
        procs.append(p)
        await p.wait_ready()
        s = await asyncio.to_thread(
            ws_handshake, p.port, "/ws", {"Authorization": f"Bearer {token}"}
        )
        try:
            assert _token_cli(db_url, "revoke", "watcher").returncode == 0
            code = await asyncio.to_thread(read_close_code, s, 15.0)
        finally:
            s.close()
        assert code == 1008
