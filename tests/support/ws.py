"""WebSocket clients of a test server and the hub's settled state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
from websockets.asyncio.client import ClientConnection, connect

from outbox.publish import apublish
from outbox.relay.hub import Hub
from tests.support.servers import RunningServer
from tests.support.waiting import wait_for

TOKEN = "test-token"


def ws_connect(server: RunningServer, query: str = f"token={TOKEN}", **kwargs: Any) -> connect:
    url = server.ws_url + (f"?{query}" if query else "")
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("open_timeout", 10)
    return connect(url, **kwargs)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def commit(db_url: str, events: list[tuple[str, Any]]) -> list[int]:
    """Publish ``events`` in one committed transaction; return their ids."""
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        return [await apublish(conn, t, p) for t, p in events]


def hub_of(server: RunningServer) -> Hub:
    hub: Hub = server.app.state.outbox.hub
    return hub


async def settled(server: RunningServer, timeout: float = 10.0) -> None:
    """Every socket is gone and left nothing behind in the hub."""
    hub = hub_of(server)
    await wait_for(
        lambda: hub.client_count == 0 and hub.sender_count == 0 and hub.queued == 0,
        timeout=timeout,
        what="hub to hold no client, sender or queue",
    )
