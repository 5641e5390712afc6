"""B3's baseline: a bare Starlette WebSocket endpoint broadcasting pre-encoded frames.

Run as ``python -m bench.bare_ws --port P``; uvicorn runs exactly as under
``outbox serve``: ``uvicorn.Server.serve()`` through ``outbox.cli.serve.run_loop``
(uvloop when installed), the same protocol implementations (auto: httptools,
websockets-sansio) and the same WebSocket settings as in the bench (no
permessage-deflate, pings off).
``POST /broadcast {"n": N, "marker": M}`` encodes N frames shaped like the
relay's (same payload, same envelope) once, then one task per client sends
them all with ``send_text``: no database, no queues, no filters. That is the
ceiling for Python + uvicorn + this machine, which the hub is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.payloads import payload_json

CONNECTED = (
    '{"type":"connection","status":"connected",'
    '"message":"WebSocket connection established","cursor":"MToxOjI6"}'
)
clients: set[WebSocket] = set()
tasks: set[asyncio.Task[None]] = set()


def frames(n: int, marker: str) -> list[str]:
    ts = dt.datetime.now(dt.UTC).isoformat()
    cursor = "MToxMjM0NTY6Nzg5MDEyOg"  # a cursor of typical length
    return [
        '{"type":"bench.fanout","payload":'
        + payload_json(i, marker if i == n else "")
        + f',"timestamp":"{ts}","id":{i},"cursor":"{cursor}"}}'
        for i in range(1, n + 1)
    ]


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def ws_endpoint(ws: WebSocket) -> None:
    await ws.accept()
    clients.add(ws)  # first, as /ws registers before its first message
    await ws.send_text(CONNECTED)
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        clients.discard(ws)


async def _send_all(ws: WebSocket, batch: list[str]) -> None:
    with contextlib.suppress(Exception):  # a client that left just stops receiving
        for f in batch:
            await ws.send_text(f)


async def broadcast(request: Request) -> JSONResponse:
    body: dict[str, Any] = await request.json()
    batch = frames(int(body["n"]), str(body["marker"]))
    for ws in list(clients):
        t = asyncio.create_task(_send_all(ws, batch))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    return JSONResponse({"clients": len(clients), "frames": len(batch)}, status_code=202)


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/broadcast", broadcast, methods=["POST"]),
        WebSocketRoute("/ws", ws_endpoint),
    ]
)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bare_ws", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    serve_baseline(app, args.port, lifespan="off")


def serve_baseline(asgi: Any, port: int, *, lifespan: Literal["on", "off"]) -> None:
    """Run a baseline app on stock uvicorn, on the same event loop as ``outbox serve``."""
    config = uvicorn.Config(
        asgi,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        ws_per_message_deflate=False,
        ws_ping_interval=600.0,
        ws_ping_timeout=600.0,
    )
    from outbox.cli.serve import run_loop

    run_loop(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
