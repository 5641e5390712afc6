"""/ws resume: ``since=CURSOR`` across disconnects while events keep committing."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from outbox.cursor import Cursor
from outbox.publish import apublish
from tests.support.servers import serve_app
from tests.support.ws import TOKEN, commit, recv_json, settled, ws_connect


async def _write(db_url: str, writer: str, transactions: int) -> list[int]:
    """Commit ``transactions`` small transactions (1-3 events each), one after another."""
    ids: list[int] = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for n in range(transactions):
            async with conn.transaction():
                for k in range(n % 3 + 1):
                    ids.append(
                        await apublish(conn, "ticket.created", {"w": writer, "n": n, "k": k})
                    )
    return ids


async def _read(ws: ClientConnection, got: set[int], count: int) -> str:
    """Receive ``count`` events into ``got``; return the last cursor seen."""
    cursor = ""
    for _ in range(count):
        message = await recv_json(ws)
        assert message["type"] == "ticket.created", message
        got.add(message["id"])
        cursor = message["cursor"]
    return cursor


async def test_resume_across_disconnects_while_events_keep_committing(
    settings: Any, db_url: str
) -> None:
    got: set[int] = set()
    async with serve_app(settings) as server:
        async with ws_connect(server) as ws:
            cursor = (await recv_json(ws))["cursor"]
            # Two writers at once, so commit order differs from id order.
            writers = asyncio.gather(_write(db_url, "a", 120), _write(db_url, "b", 120))
            cursor = await _read(ws, got, 40)

        # A clean close, then resume: the catch-up overlaps live traffic.
        async with ws_connect(server, f"token={TOKEN}&since={cursor}") as ws:
            hello = await recv_json(ws)
            assert hello["type"] == "connection" and hello["cursor"] == cursor
            cursor = await _read(ws, got, 60)
            ws.transport.abort()  # and an abrupt one

        async with ws_connect(server, f"token={TOKEN}&since={cursor}") as ws:
            assert (await recv_json(ws))["type"] == "connection"
            committed = [i for ids in await asyncio.wait_for(writers, 30) for i in ids]
            while not got.issuperset(committed):
                await _read(ws, got, 1)
        await settled(server)
    assert len(committed) == 480


async def test_resume_after_missed_events_replays_then_goes_live(
    settings: Any, db_url: str
) -> None:
    async with serve_app(settings) as server:
        async with ws_connect(server, f"token={TOKEN}&events=user.*") as ws:
            await recv_json(ws)
            [first] = await commit(db_url, [("user.created", {"n": 0})])
            message = await recv_json(ws)
            assert message["id"] == first
            since = message["cursor"]
        missed = await commit(db_url, [("user.created", {"n": n}) for n in (1, 2)])
        await commit(db_url, [("ticket.created", {})])
        async with ws_connect(server, f"token={TOKEN}&since={since}&events=user.*") as ws:
            assert (await recv_json(ws))["type"] == "connection"
            assert [(await recv_json(ws))["id"] for _ in range(2)] == missed
            later = await commit(db_url, [("ticket.created", {}), ("user.deleted", {})])
            message = await recv_json(ws)
            assert (message["id"], message["type"]) == (later[1], "user.deleted")
        await settled(server)


async def test_expired_cursor_gets_an_error_then_1008(
    settings: Any, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    ids = await commit(db_url, [("user.created", {"n": n}) for n in range(5)])
    # What retention does: delete the oldest events and record how far it got.
    conn.execute("DELETE FROM outbox.events WHERE id <= %s", (ids[2],))
    conn.execute(
        "INSERT INTO outbox.relay_state (name, value) VALUES ('retention_watermark', %s)",
        (str(ids[2]),),
    )
    async with serve_app(settings) as server:
        since = Cursor(ids[0]).encode()
        async with ws_connect(server, f"token={TOKEN}&since={since}") as ws:
            error = await recv_json(ws)
            assert (error["type"], error["code"]) == ("error", "cursor_expired")
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        # A cursor still inside the window resumes normally.
        async with ws_connect(server, f"token={TOKEN}&since={Cursor(ids[2]).encode()}") as ws:
            assert (await recv_json(ws))["type"] == "connection"
            assert [(await recv_json(ws))["id"] for _ in range(2)] == ids[3:]
        await settled(server)


async def test_malformed_cursor_gets_an_error_then_1008(settings: Any) -> None:
    async with (
        serve_app(settings) as server,
        ws_connect(server, f"token={TOKEN}&since=not-a-cursor") as ws,
    ):
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_cursor")
        assert "since" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
