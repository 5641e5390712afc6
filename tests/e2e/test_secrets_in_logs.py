"""No secret reaches the logs, at any level: a debug-level ``outbox serve``
used with every token placement, webhook secrets and a database password,
then its whole log is searched for each secret."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from outbox.tokens import create_token
from tests.support.hostile import ws_handshake
from tests.support.receivers import running
from tests.support.relay import ServeProcess, serve_processes
from tests.support.waiting import wait_for

BOOTSTRAP = "bootstrap-secret-0123456789"
DB_PASSWORD = "db-pass-s3cr3t-value"
SINK_PASSWORD = "sink-pass-s3cr3t-value"


async def test_a_debug_level_run_logs_no_secret(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        stored = create_token(c, "dashboard")
    params = conninfo_to_dict(db_url)
    # Trust authentication ignores the password, but it is in the URL serve logs from.
    url_with_password = "postgresql://{user}:{pw}@{host}:{port}/{db}".format(
        user=params.get("user", "postgres"),
        pw=DB_PASSWORD,
        host=params.get("host", "127.0.0.1"),
        port=params.get("port", 5432),
        db=params["dbname"],
    )
    assert make_conninfo(url_with_password)
    secrets = [stored, BOOTSTRAP, DB_PASSWORD, SINK_PASSWORD]
    async with running() as receiver:
        with serve_processes() as procs:
            p = ServeProcess(
                url_with_password,
                tmp_path / "serve.log",
                env={"OUTBOX_LOG_LEVEL": "debug", "OUTBOX_API_TOKEN": BOOTSTRAP},
            )
            procs.append(p)
            await p.wait_ready()
            async with httpx.AsyncClient(base_url=p.base_url, timeout=10) as client:
                # REST, every header placement, plus a query token (refused for REST, logged).
                r = await client.get("/webhooks", headers={"Authorization": f"Bearer {stored}"})
                assert r.status_code == 200
                r = await client.get("/webhooks", headers={"X-API-Key": BOOTSTRAP})
                assert r.status_code == 200
                r = await client.get(f"/webhooks?token={stored}&api_key={BOOTSTRAP}")
                assert r.status_code == 401
                wrong = {"Authorization": "Bearer obx_wrong1234567"}
                r = await client.get("/webhooks", headers=wrong)
                assert r.status_code == 401
                # Webhook secrets: created, rotated, used to sign a delivery.
                r = await client.post(
                    "/webhooks",
                    headers={"X-API-Key": BOOTSTRAP},
                    json={"name": "logged", "url": receiver.url, "event_types": ["*"]},
                )
                assert r.status_code == 201, r.text
                hook = r.json()
                secrets.append(hook["secret"])
                r = await client.post(
                    f"/webhooks/{hook['id']}/rotate-secret", headers={"X-API-Key": BOOTSTRAP}
                )
                assert r.status_code == 200, r.text
                secrets.append(r.json()["secret"])
                # A sink whose broker refuses (port 9): its URL, password
                # included, is in every error it logs.
                r = await client.post(
                    "/sinks",
                    headers={"X-API-Key": BOOTSTRAP},
                    json={"name": "s", "url": f"nats://app:{SINK_PASSWORD}@127.0.0.1:9"},
                )
                assert r.status_code == 201, r.text
                assert SINK_PASSWORD not in r.text
            # /ws, every placement Starlette accepts, and the subprotocol header.
            placements = [
                ("/ws", {"Authorization": f"Bearer {stored}"}),
                ("/ws", {"X-API-Key": BOOTSTRAP}),
                (f"/ws?token={stored}", {}),
                (f"/ws?api_key={quote(BOOTSTRAP)}", {}),
                (f"/ws?%74oken={stored}", {}),
                (f"/ws?events=a.*&%61pi_key={BOOTSTRAP}", {}),
                (f"/ws?token={stored}", {"Sec-WebSocket-Protocol": f"bearer, {stored}"}),
            ]
            for path, headers in placements:
                s = await asyncio.to_thread(ws_handshake, p.port, path, headers)
                s.close()
            with psycopg.connect(db_url, autocommit=True) as c:
                c.execute("SELECT outbox.publish('log.test', '{\"n\": 1}')")
            await wait_for(lambda: receiver.requests, timeout=20, what="a webhook delivery")
            p.signal(15)
            assert await p.wait() == 0
    log = p.log()
    # It was a debug run that logged the requests (so the check means something).
    assert "DEBUG" in log or "debug" in log.lower()
    assert '"WebSocket /ws' in log and "%74oken=***" in log
    for secret in secrets:
        assert secret not in log, f"{secret[:8]}... is in the log"
        assert quote(secret) not in log
    # Nor a percent-encoded form of the bootstrap token's characters.
    assert json.dumps(BOOTSTRAP)[1:-1] not in log
