"""/ws against a real uvicorn with real clients: the seed protocol, auth, origins, filters.

The helpers (``ws_connect``, ``recv_json``, ``commit``, ``settled``) are in
tests/support/ws.py, shared with the other tests/e2e/test_ws_*.py files.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from outbox.cursor import Cursor
from outbox.tokens import create_token, revoke_token
from tests.support.servers import RunningServer, serve_app
from tests.support.ws import TOKEN, commit, hub_of, recv_json, settled, ws_connect


async def test_seed_protocol_message_by_message(settings: Any, db_url: str) -> None:
    async with serve_app(settings) as server:
        async with ws_connect(server) as ws:
            hello = await recv_json(ws)
            assert {k: hello[k] for k in ("type", "status", "message")} == {
                "type": "connection",
                "status": "connected",
                "message": "WebSocket connection established",
            }
            Cursor.decode(hello["cursor"])

            payload = {"user_id": 123, "username": "testuser", "referred_by_id": None}
            [event_id] = await commit(db_url, [("user.created", payload)])
            event = await recv_json(ws)
            assert event["type"] == "user.created"
            assert event["payload"] == payload
            assert event["id"] == event_id
            assert datetime.fromisoformat(event["timestamp"]).tzinfo is not None
            assert Cursor.decode(event["cursor"]).after >= event_id

            await ws.send('{"type": "ping"}')
            assert await recv_json(ws) == {"type": "pong"}

            await ws.send(json.dumps({"type": "subscribe", "events": ["ticket.*", "user.created"]}))
            assert await recv_json(ws) == {
                "type": "subscribed",
                "events": ["ticket.*", "user.created"],
            }

            for bad in (
                "not json",
                "[1, 2]",
                '{"kind": "ping"}',
                '{"type": "dance"}',
                '{"type": "subscribe", "events": "ticket.*"}',
                '{"type": "subscribe", "events": ["Not A Name"]}',
                b"\x00binary",
            ):
                await ws.send(bad)
                error = await recv_json(ws)
                assert error["type"] == "error" and error["message"], bad

            await ws.send('{"type": "ping"}')
            assert await recv_json(ws) == {"type": "pong"}, "the socket stays open after errors"

            await ws.send("x" * (settings.hub.ws_max_message + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await settled(server)


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        (f"token={TOKEN}", {}),
        (f"api_key={TOKEN}", {}),
        ("", {"Authorization": f"Bearer {TOKEN}"}),
        ("", {"X-API-Key": TOKEN}),
    ],
    ids=["query-token", "query-api_key", "bearer", "x-api-key"],
)
async def test_every_way_of_presenting_the_token(
    settings: Any, query: str, headers: dict[str, str]
) -> None:
    async with (
        serve_app(settings) as server,
        ws_connect(server, query, additional_headers=headers) as ws,
    ):
        assert (await recv_json(ws))["type"] == "connection"


async def _refused(server: RunningServer, query: str, **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(server, query, **kwargs):
            pass
    return refused.value


async def test_missing_wrong_and_revoked_tokens_are_never_accepted(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    stored = create_token(conn, "dashboard")
    revoked = create_token(conn, "old")
    revoke_token(conn, "old")
    async with serve_app(settings) as server:
        for query in ("", "token=", "token=wrong", f"api_key={revoked}"):
            refused = await _refused(server, query)
            assert refused.response.status_code == 403, query
        refused = await _refused(server, "", additional_headers={"Authorization": "Bearer nope"})
        assert refused.response.status_code == 403
        assert hub_of(server).client_count == 0

        async with ws_connect(server, f"token={stored}") as ws:
            assert (await recv_json(ws))["type"] == "connection"


async def test_revoking_a_token_closes_its_open_sockets(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    token = create_token(conn, "dashboard")
    async with serve_app(settings) as server:
        async with ws_connect(server, f"token={token}") as doomed, ws_connect(server) as keeper:
            await recv_json(doomed)
            await recv_json(keeper)
            revoke_token(conn, "dashboard")
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(doomed, timeout=8)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "Token revoked")
            await keeper.send('{"type": "ping"}')
            assert await recv_json(keeper) == {"type": "pong"}
        await settled(server)


async def test_origin_allowlist(settings: Any) -> None:
    settings = settings.replace(ws_allowed_origins=("https://admin.example",))
    async with serve_app(settings) as server:
        refused = await _refused(server, f"token={TOKEN}", origin="https://evil.example")
        assert refused.response.status_code == 403
        for origin in (None, f"http://127.0.0.1:{server.port}", "https://admin.example"):
            async with ws_connect(server, origin=origin) as ws:
                assert (await recv_json(ws))["type"] == "connection", origin


async def _types_until_end(ws: ClientConnection) -> list[str]:
    """Event types received up to and including one whose payload has ``end``."""
    types: list[str] = []
    while True:
        message = await recv_json(ws)
        types.append(message["type"])
        if message.get("payload", {}).get("end"):
            return types


async def test_filters_from_the_query_and_subscribe(settings: Any, db_url: str) -> None:
    all_types = ["user.created", "ticket.created", "ticket.status_changed", "transaction.completed"]
    async with (
        serve_app(settings) as server,
        ws_connect(server, f"token={TOKEN}&events=ticket.*,user.created") as some,
        ws_connect(server, f"token={TOKEN}&events=*") as star,
        ws_connect(server) as everything,
        ws_connect(server, f"token={TOKEN}&events=transaction.completed") as switcher,
    ):
        for ws in (some, star, everything, switcher):
            assert (await recv_json(ws))["type"] == "connection"
        await switcher.send(json.dumps({"type": "subscribe", "events": ["ticket.status_changed"]}))
        assert (await recv_json(switcher))["type"] == "subscribed"

        await commit(db_url, [(t, {}) for t in all_types])
        await commit(db_url, [("ticket.status_changed", {"end": True})])
        expected_some = ["user.created", "ticket.created", "ticket.status_changed"]
        assert await _types_until_end(some) == [*expected_some, "ticket.status_changed"]
        assert await _types_until_end(star) == [*all_types, "ticket.status_changed"]
        assert await _types_until_end(everything) == [*all_types, "ticket.status_changed"]
        assert await _types_until_end(switcher) == ["ticket.status_changed"] * 2


async def test_invalid_filter_in_the_query_gets_an_error_then_1008(settings: Any) -> None:
    async with serve_app(settings) as server:
        async with ws_connect(server, f"token={TOKEN}&events=ticket.*,Ticket.Created") as ws:
            error = await recv_json(ws)
            assert error["type"] == "error" and error["code"] == "invalid_filter"
            assert "events" in error["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await settled(server)


async def test_protocol_pings_and_a_silent_peer_is_dropped(settings: Any) -> None:
    """A raw client that never answers pings: it sees pings, then close 1011."""
    settings = settings.replace(ws_ping_interval=0.2)
    # serve_app sets uvicorn up as `outbox serve` does (with uvicorn_ws_options).
    async with serve_app(settings) as server:
        port = server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws?token={TOKEN}"))
        client.send_request(client.connect())
        writer.write(b"".join(client.data_to_send()))
        seen: list[Frame] = []
        try:
            while not any(f.opcode is Opcode.CLOSE for f in seen):
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, "server closed the TCP connection without a close frame"
                client.receive_data(data)
                seen += [e for e in client.events_received() if isinstance(e, Frame)]
                # Deliberately never write client.data_to_send(): no pong goes back.
        finally:
            writer.close()
        assert any(f.opcode is Opcode.PING for f in seen)
        assert client.close_rcvd is not None and client.close_rcvd.code == 1011
