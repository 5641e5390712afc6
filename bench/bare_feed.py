"""B2's CPU baseline: a plain Starlette + broadcaster feed.

Run as ``python -m bench.bare_feed --port P --db URL``. The feed most
projects write first: each writer's transaction also runs
``pg_notify('bench_b2_feed', <the event as JSON>)``; one ``broadcaster``
(postgres backend: asyncpg LISTEN) relays every notification to every
WebSocket client subscribed to the channel, each client's endpoint a
``broadcast.subscribe`` loop as in broadcaster's own example. The frame
has the relay's envelope (type, payload, timestamp, id). No cursor, no
resume, no catch-up, no order across restarts: this is what "just a feed"
costs in server CPU on the same machine, which outbox serve is measured
against (issue 22, target <= 1.5x at 10 events/s x 100 clients). Served by
uvicorn exactly as ``outbox serve`` (``outbox.cli.serve.run_loop``: uvloop).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator

from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.bare_ws import serve_baseline

CHANNEL = "bench_b2_feed"
CONNECTED = (
    '{"type":"connection","status":"connected",'
    '"message":"WebSocket connection established","cursor":""}'
)


def as_url(conninfo: str) -> str:
    """A libpq conninfo (``host=... dbname=...`` or a URL) as the URL asyncpg wants."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(conninfo)
    auth = quote(str(d.get("user", "postgres")))
    if d.get("password"):
        auth += ":" + quote(str(d["password"]))
    host = str(d.get("host", "127.0.0.1"))
    return f"postgresql://{auth}@{host}:{d.get('port', 5432)}/{quote(str(d.get('dbname', '')))}"


def build(db_url: str) -> Starlette:
    broadcast = Broadcast(as_url(db_url))

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def ws_endpoint(ws: WebSocket) -> None:
        await ws.accept()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            async with broadcast.subscribe(CHANNEL) as subscriber:
                await ws.send_text(CONNECTED)  # after subscribing: nothing missed from here
                seq = 0
                async for event in subscriber:  # type: ignore[union-attr]
                    if event is None:  # the broadcaster is shutting down
                        break
                    seq += 1
                    await ws.send_text(
                        '{"type":"bench.tick","payload":'
                        + event.message
                        + ',"timestamp":'
                        + json.dumps(dt.datetime.now(dt.UTC).isoformat())
                        + ',"id":'
                        + str(seq)
                        + "}"
                    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broadcast.connect()
        try:
            yield
        finally:
            await broadcast.disconnect()

    return Starlette(
        routes=[Route("/health", health), WebSocketRoute("/ws", ws_endpoint)],
        lifespan=lifespan,
    )


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.bare_feed", description=__doc__.split("\n")[0]
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db", required=True, help="PostgreSQL URL (postgresql://...)")
    args = p.parse_args()
    serve_baseline(build(args.db), args.port, lifespan="on")


if __name__ == "__main__":
    main()
