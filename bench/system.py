"""The system under test: ``outbox serve`` on a bench database, and its API."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx

from bench.context import Context
from bench.pg import url_with
from bench.procs import ROOT, Server, free_port

TOKEN = "bench-" + secrets.token_hex(8)

# Bench clients never answer protocol pings (the cheap sinks do not parse
# frames), so the server's keepalive must not fire during a run; every other
# setting is the product default unless a scenario says otherwise.
BASE_ENV = {
    "OUTBOX_API_TOKEN": TOKEN,
    "OUTBOX_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    "OUTBOX_WS_PING_INTERVAL": "600",
    "OUTBOX_POLL_INTERVAL": "1s",
}


def outbox_command() -> list[str]:
    """``outbox serve`` from this repository's venv (next to this Python)."""
    exe = Path(sys.executable).with_name("outbox")
    if exe.exists():
        return [str(exe), "serve"]
    found = shutil.which("outbox")
    if found:
        return [found, "serve"]
    return [sys.executable, "-m", "outbox.cli", "serve"]


def serve_url(db_url: str) -> str:
    """The database URL ``outbox serve`` gets: ``db_url``, or with ``BENCH_SERVE_HOST``
    as its host (e.g. ``/var/run/postgresql``: the relay on the Unix socket
    while the load generators stay on TCP)."""
    host = os.environ.get("BENCH_SERVE_HOST")
    return url_with(db_url, host=host) if host else db_url


def outbox_server(ctx: Context, db_url: str, name: str, **env: str) -> Server:
    port = free_port()
    full_env = dict(os.environ) | BASE_ENV | env | {"OUTBOX_DATABASE_URL": serve_url(db_url)}
    # No access log: a line per webhook-free request is not what is measured.
    argv = [
        *outbox_command(),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    profile = ctx.profile_dir / f"{name}.txt" if ctx.profile_dir else None
    log = ctx.workdir / f"{name}.log"
    return Server(f"outbox serve ({name})", argv, port, log, full_env, profile=profile)


def ws_url(server: Server, **query: str) -> str:
    from urllib.parse import urlencode

    q = urlencode({"token": TOKEN, **query})
    return f"ws://127.0.0.1:{server.port}/ws?{q}"


async def create_webhook(server: Server, url: str, event_type: str, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ) as client:
        r = await client.post(
            "/webhooks", json={"name": name, "url": url, "event_type": event_type}
        )
        if r.status_code != 201:
            raise RuntimeError(f"POST /webhooks: {r.status_code} {r.text[:300]}")
        return dict(r.json())


__all__ = ["ROOT", "TOKEN", "create_webhook", "outbox_server", "ws_url"]
