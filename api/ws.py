"""``/ws``: the live event feed (the seed's protocol, plus filters and resume).

One connection, in order:

1. Before accepting: the Origin must be allowed (cross-site WebSocket
   hijacking) and the token valid; otherwise the handshake is refused with
   HTTP 403 — no socket is ever accepted.
2. Accept, then check the query (``events=``, ``since=``); a bad one gets an
   ``error`` message and close 1008.
3. Register with the hub (live events start buffering), then send the
   ``connection`` message. With ``since``, read the outbox from that cursor
   until a read comes back empty, sending what matches, then drop from the
   buffer the events the catch-up already sent: no gap at the seam.
4. Until the client leaves or the hub closes it (too far behind, token
   revoked, shutdown): the hub sends the client's queue (relay/hub.py) while
   a reader answers ping and subscribe; then the close frame.

Replies to the client go through its queue, so they stay in order with
events and only the hub's sender writes to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg_pool import PoolTimeout
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope
from starlette.types import Send as ASGISend
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from outbox.api.auth import authenticate
from outbox.api.config import Settings
from outbox.api.state import AppState
from outbox.cursor import Cursor
from outbox.errors import CursorError, CursorExpired
from outbox.events import Matcher, is_pattern, restrict
from outbox.relay.feed import read_batch
from outbox.relay.hub import POLICY_VIOLATION, TRY_AGAIN_LATER, Client
from outbox.relay.reconnect import describe
from outbox.relay.retention import check_cursor
from outbox.tokens import Principal

log = logging.getLogger("outbox.ws")

MESSAGE_TOO_BIG = 1009
_CLOSE_TIMEOUT = 5.0  # a dropped client that reads nothing for this long gets no close frame
_RELAY_WAIT = 10.0  # how long a connection waits for a relay that is still starting
_MAX_PATTERNS = 256

PONG = '{"type":"pong"}'


class _Refused(Exception):
    """The query cannot be served: an ``error`` message, then this close code."""

    def __init__(self, code: str, message: str, close_code: int = POLICY_VIOLATION) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


def uvicorn_ws_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options that enforce the settings at the protocol level.

    Protocol pings, the inbound size limit, the buffer bound of what the
    server writes on its own (pongs), the request head limits and the
    connection ceiling live in the server, not in the app; ``outbox serve``
    (and the test server) pass these to ``uvicorn.Config``.
    """
    from outbox.api.http_protocol import http_options

    hub, server = settings.hub, settings.server
    from outbox.api.ws_protocol import bounded_protocol

    return {
        # One socket write per client per loop turn (api/ws_protocol.py).
        "ws": bounded_protocol(hub.ws_max_queue_bytes),
        "ws_max_size": hub.ws_max_message,
        "ws_ping_interval": hub.ws_ping_interval,
        "ws_ping_timeout": hub.ws_ping_interval,
        "ws_per_message_deflate": hub.ws_per_message_deflate,
        **http_options(
            max_header_bytes=server.max_header_bytes,
            header_timeout=server.header_timeout,
            max_connections=server.max_connections,
        ),
    }


uvicorn_options = uvicorn_ws_options


RAW_SEND = "outbox.raw_send"


class RawSend:
    """Outermost middleware: keep the server's own ASGI ``send`` in the scope.

    Starlette's WebSocket wraps ``send`` in state checks and its exception
    handler's wrapper; after the handshake every frame of the live feed is a
    plain ``websocket.send``, and those layers cost ~6% of a fan-out's CPU
    (B2 profile). :func:`text_sender` sends through the server's ``send``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: ASGISend) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


def text_sender(websocket: WebSocket) -> Callable[[str], Awaitable[None]]:
    """Send a text frame on an accepted socket, as directly as the app allows."""
    raw: ASGISend | None = websocket.scope.get(RAW_SEND)
    if raw is None:
        return websocket.send_text

    async def send_text(text: str) -> None:
        await raw({"type": "websocket.send", "text": text})

    return send_text


def origin_allowed(ws: WebSocket, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the request's own host, or a listed origin."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if "*" in allowed or origin in (a.lower() for a in allowed):
        return True
    host = ws.headers.get("host", "").strip().lower()
    return bool(host) and urlsplit(origin).netloc == host


def _error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


def parse_patterns(values: list[str], field: str) -> list[str]:
    """Validate a filter; raises ``ValueError`` naming the field and the pattern."""
    if len(values) > _MAX_PATTERNS:
        raise ValueError(f"{field}: at most {_MAX_PATTERNS} patterns")
    for value in values:
        if not is_pattern(value):
            raise ValueError(
                f"{field}: invalid pattern {value[:100]!r}"
                " (use exact names such as user.created, prefix.* or *)"
            )
    return list(dict.fromkeys(values))


def handle_message(client: Client, text: str) -> str:
    """Apply one client message; return the reply to queue."""
    try:
        msg = json.loads(text)
    except ValueError:
        return _error("invalid_json", "message is not valid JSON")
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return _error("invalid_message", 'expected a JSON object with a string "type"')
    kind = msg["type"]
    if kind == "ping":
        return PONG
    if kind == "subscribe":
        events = msg.get("events")
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            return _error("invalid_subscribe", "events: expected a list of event type patterns")
        try:
            patterns = parse_patterns(events, "events")
        except ValueError as exc:
            return _error("invalid_subscribe", str(exc))
        client.matcher = restrict(Matcher(patterns), client.allowed)
        return json.dumps({"type": "subscribed", "events": patterns})
    return _error("unknown_type", f"unknown message type {kind[:100]!r}; use ping or subscribe")


async def ws_endpoint(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.outbox
    if not origin_allowed(websocket, state.settings.api.ws_allowed_origins):
        await websocket.close(POLICY_VIOLATION, "Origin not allowed")
        return
    try:
        # The handshake waits for nothing longer than this (a slow database).
        async with asyncio.timeout(state.settings.hub.ws_handshake_timeout):
            principal, reason = await authenticate(websocket, allow_query=True)
    except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
        detail = "Database unavailable"
        if isinstance(exc, TimeoutError):
            detail = "handshake timed out (OUTBOX_WS_HANDSHAKE_TIMEOUT); try again"
        log.warning("/ws refused: %s: %s", detail, describe(exc))
        await websocket.send_denial_response(JSONResponse({"detail": detail}, status_code=503))
        return
    if principal is None:
        # A close before accept is an HTTP 403 with no body. (A denial
        # response with a body would be nicer, but uvicorn's sansio protocol
        # then logs an ERROR for every refused token: uvicorn PR #3138.)
        await websocket.close(POLICY_VIOLATION, reason)
        return
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        await _session(websocket, state, principal)


async def _session(websocket: WebSocket, state: AppState, principal: Principal) -> None:
    allowed = principal.sees()  # a feed token's event types
    try:
        matcher, since = _parse_query(websocket)
        matcher = restrict(matcher, allowed)
        if since is not None:
            await _check_not_expired(state, since)
        if state.service.cursor is None:
            await _wait_for_relay(state)
    except _Refused as exc:
        await websocket.send_text(_error(exc.code, exc.message))
        await _close(websocket, exc.close_code, exc.message)
        return
    # No await between these two lines: the relay's cursor is exactly the
    # end of the last batch published before this client started buffering.
    client = state.hub.register(principal.identity, matcher)
    client.allowed = allowed
    seam = state.service.cursor
    assert seam is not None
    try:
        await websocket.send_text(_connection_message(since or seam))
        await _serve(websocket, client, state, since, seam)
    finally:
        state.hub.unregister(client)
        await client.wait_sent()


def _parse_query(websocket: WebSocket) -> tuple[Matcher, Cursor | None]:
    params = websocket.query_params
    matcher = Matcher(None)
    raw_events = params.get("events")
    if raw_events:
        try:
            patterns = parse_patterns(
                [p.strip() for p in raw_events.split(",") if p.strip()], "events"
            )
        except ValueError as exc:
            raise _Refused("invalid_filter", str(exc)) from None
        matcher = Matcher(patterns or None)
    since = None
    raw_since = params.get("since")
    # An empty since= (a first-time client's empty saved cursor) means "from
    # now", exactly like no since at all.
    if raw_since:
        try:
            since = Cursor.decode(raw_since)
        except CursorError:
            raise _Refused(
                "invalid_cursor",
                "since: malformed cursor (use the cursor of a message you received)",
            ) from None
    return matcher, since


def _connection_message(cursor: Cursor) -> str:
    return json.dumps(
        {
            "type": "connection",
            "status": "connected",
            "message": "WebSocket connection established",
            "cursor": cursor.encode(),
        }
    )


async def _wait_for_relay(state: AppState) -> None:
    # Only right after start: the relay sets its cursor on its first read.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _RELAY_WAIT
    while state.service.cursor is None:
        if loop.time() > deadline:
            raise _Refused("unavailable", "the relay is starting; try again", TRY_AGAIN_LATER)
        await asyncio.sleep(0.05)


async def _check_not_expired(state: AppState, since: Cursor) -> None:
    try:
        async with state.pool.connection() as conn:
            await check_cursor(conn, since)
    except (psycopg.Error, PoolTimeout):
        raise _Refused("unavailable", "database unavailable; try again", TRY_AGAIN_LATER) from None
    except CursorExpired:
        raise _Refused(
            "cursor_expired",
            "since: the cursor is older than the retention window; events after it were"
            " deleted. Reconnect without since and reload your state.",
        ) from None


async def _serve(
    websocket: WebSocket, client: Client, state: AppState, since: Cursor | None, seam: Cursor
) -> None:
    """Catch up and go live while reading client messages; then close."""

    async def feed() -> None:
        sent = None
        if since is not None:
            sent = await _catch_up(websocket, client, state, since, seam)
        client.go_live(text_sender(websocket), sent)
        await client.closed.wait()

    # The close watch also ends a catch-up: a client that stalls during it
    # is dropped like any other.
    tasks = [
        asyncio.create_task(feed(), name="ws-feed"),
        asyncio.create_task(
            _read(websocket, client, state.settings.hub.ws_max_message), name="ws-read"
        ),
        asyncio.create_task(client.closed.wait(), name="ws-closed"),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if exc is not None and not isinstance(exc, WebSocketDisconnect):
            raise exc
    if client.closed.is_set():
        await client.wait_sent()
        await _close(websocket, client.close_code, client.close_reason)


async def _catch_up(
    websocket: WebSocket, client: Client, state: AppState, since: Cursor, seam: Cursor
) -> set[int]:
    """Send the outbox from ``since`` until a read is empty; return ids to de-duplicate.

    Only events the relay may publish after ``seam`` can also sit in the
    live buffer, so only their ids are remembered.
    """
    sent: set[int] = set()
    pending = set(seam.pending)
    cursor = since
    send_text = text_sender(websocket)
    while True:
        try:
            async with state.pool.connection() as conn:
                batch = await read_batch(conn, cursor, state.settings.feed.batch_size)
        except (psycopg.Error, PoolTimeout):
            client.close(TRY_AGAIN_LATER, "database unavailable; resume with your last cursor")
            return sent
        if not batch.events:
            return sent
        cursor = batch.end
        for event in batch.events:
            if client.matcher(event.type):
                await send_text(event.frame)
                # Could the relay still publish it after the seam? (see relay/feed.py)
                if event.id > seam.after or event.xid in pending or event.xid >= seam.xmax:
                    sent.add(event.id)


async def _read(websocket: WebSocket, client: Client, limit: int) -> None:
    """Answer client messages until the client disconnects or is closed."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            data = message.get("bytes") or b""
            if len(data) > limit:
                client.close(MESSAGE_TOO_BIG, f"message larger than {limit} bytes")
                return
            client.send_control(_error("invalid_message", "binary messages are not supported"))
            continue
        if len(text) > limit or len(text.encode()) > limit:
            client.close(MESSAGE_TOO_BIG, f"message larger than {limit} bytes")
            return
        client.send_control(handle_message(client, text))


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if (
        websocket.application_state != WebSocketState.CONNECTED
        or websocket.client_state == WebSocketState.DISCONNECTED
    ):
        return
    # A close frame carries at most 123 bytes of reason.
    reason = reason.encode()[:123].decode(errors="ignore")
    # A stalled client's socket buffers are full, so the close frame waits
    # behind its backlog; give up after a while (uvicorn then drops the TCP
    # connection once the client reads or goes away).
    with contextlib.suppress(WebSocketDisconnect, TimeoutError, OSError):
        await asyncio.wait_for(websocket.close(code, reason), _CLOSE_TIMEOUT)


routes: list[BaseRoute] = [WebSocketRoute("/ws", ws_endpoint, name="ws")]
