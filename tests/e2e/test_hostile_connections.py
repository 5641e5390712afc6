"""Hostile clients against a real ``outbox serve`` on loopback: idle sockets,
huge request heads, too many connections, stuck WebSocket handshakes and
clients that flood the socket and never read.

Every loop is bounded in count and time; every socket goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from outbox.tokens import create_token
from tests.support.hostile import (
    closed_by_peer,
    connect,
    flood,
    raise_fd_limit,
    read_close_code,
    read_response,
    ws_frame,
    ws_handshake,
)
from tests.support.relay import ServeProcess, serve_processes

IDLE = 1500


async def _get(url: str, timeout: float = 5.0) -> tuple[int, float]:
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=timeout) as client:
        r = await client.get(url)
    return r.status_code, time.monotonic() - t0


async def test_health_answers_within_a_second_while_1500_idle_connections_are_open(
    db_url: str, tmp_path: Path
) -> None:
    raise_fd_limit(IDLE * 2 + 512)
    with serve_processes() as procs:
        p = ServeProcess(db_url, tmp_path / "serve.log", env={"OUTBOX_HEADER_TIMEOUT": "4s"})
        procs.append(p)
        await p.wait_ready()
        idle = [connect(p.port) for _ in range(IDLE)]
        # One that starts a head and never finishes it (slowloris).
        slow = connect(p.port)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        opened = time.monotonic()
        try:
            for _ in range(5):
                status, took = await _get(p.base_url + "/health")
                assert status == 200
                assert took < 1.0, f"/health took {took:.2f}s with {IDLE} idle connections"
            # All of them closed by the server within the head deadline (+ slack).
            status, data = await asyncio.to_thread(read_response, slow, 10.0)
            assert status == 408, data
            closed = await asyncio.to_thread(closed_by_peer, idle, 10.0)
            assert closed == IDLE, f"only {closed}/{IDLE} idle connections were closed"
            assert time.monotonic() - opened < 4 + 10
        finally:
            for s in [*idle, slow]:
                s.close()
        status, _ = await _get(p.base_url + "/health")
        assert status == 200


async def test_request_heads_are_size_limited(db_url: str, tmp_path: Path) -> None:
    with serve_processes() as procs:
        p = ServeProcess(db_url, tmp_path / "serve.log")
        procs.append(p)
        await p.wait_ready()

        def send_head(extra: bytes) -> tuple[int, bytes]:
            s = connect(p.port)
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
                return read_response(s)
            finally:
                s.close()

        ok = await asyncio.to_thread(send_head, b"X-Fine: " + b"a" * 20_000 + b"\r\n")
        assert ok[0] == 200
        # 256 KiB in one header: refused after the first 32 KiB are read.
        big = await asyncio.to_thread(send_head, b"X-Big: " + b"a" * 256 * 1024 + b"\r\n")
        assert big[0] == 431, big[1][:200]
        assert b"request head larger than 32768 bytes" in big[1]
        many = await asyncio.to_thread(
            send_head, b"".join(b"X-%d: v\r\n" % i for i in range(10_000))
        )
        assert many[0] == 431
        long_url = await asyncio.to_thread(
            lambda: _raw(p.port, b"GET /health?" + b"q" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        )
        assert long_url[0] == 431
        status, _ = await _get(p.base_url + "/health")
        assert status == 200


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    s = connect(port)
    try:
        s.sendall(request)
        return read_response(s)
    finally:
        s.close()


async def test_connections_past_the_ceiling_get_a_clear_503(db_url: str, tmp_path: Path) -> None:
    with serve_processes() as procs:
        p = ServeProcess(db_url, tmp_path / "serve.log", env={"OUTBOX_MAX_CONNECTIONS": "40"})
        procs.append(p)
        await p.wait_ready()
        held = [connect(p.port) for _ in range(40)]
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                r = await client.get(p.base_url + "/health")
            assert r.status_code == 503
            assert "too many connections" in r.json()["detail"]
        finally:
            for s in held:
                s.close()

        async def healthy() -> bool:
            status, _ = await _get(p.base_url + "/health")
            return status == 200

        from tests.support.waiting import wait_for

        await wait_for(healthy, timeout=10, interval=0.1, what="health after the flood")


async def test_a_stuck_websocket_handshake_times_out(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        token = create_token(c, "watcher")
    with serve_processes() as procs:
        p = ServeProcess(db_url, tmp_path / "serve.log", env={"OUTBOX_WS_HANDSHAKE_TIMEOUT": "1s"})
        procs.append(p)
        await p.wait_ready()
        with psycopg.connect(db_url) as locker:
            # Token lookups now wait on the lock: the handshake cannot finish.
            locker.execute("LOCK TABLE outbox.api_tokens IN ACCESS EXCLUSIVE MODE")
            t0 = time.monotonic()
            with pytest.raises(AssertionError, match="handshake answered 503") as info:
                await asyncio.to_thread(
                    ws_handshake, p.port, "/ws", {"Authorization": f"Bearer {token}"}
                )
            took = time.monotonic() - t0
            locker.rollback()
        assert took < 5, took
        assert "handshake timed out" in str(info.value)
        # And it works again once the database answers.
        s = await asyncio.to_thread(
            ws_handshake, p.port, "/ws", {"Authorization": f"Bearer {token}"}
        )
        s.close()


# --- clients that flood and never read ------------------------------------------

FLOODS: dict[str, Any] = {
    "ping": ws_frame(0x1, json.dumps({"type": "ping"}).encode()),
    "subscribe": ws_frame(0x1, json.dumps({"type": "subscribe", "events": ["a.*"]}).encode()),
    "garbage": ws_frame(0x1, b"not json"),
    "protocol-ping": ws_frame(0x9, b"x" * 100),
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_a_client_that_floods_and_never_reads_is_closed_with_1013(
    db_url: str, tmp_path: Path, kind: str
) -> None:
    """Replies count against the client's bound like events: pongs, subscribed,
    errors and protocol pongs alike."""
    with serve_processes() as procs:
        p = ServeProcess(
            db_url,
            tmp_path / "serve.log",
            env={"OUTBOX_WS_MAX_QUEUE": "2000", "OUTBOX_WS_MAX_QUEUE_BYTES": "262144"},
        )
        procs.append(p)
        await p.wait_ready()
        s = await asyncio.to_thread(
            ws_handshake, p.port, "/ws", {"Authorization": "Bearer test-token"}, rcvbuf=4096
        )
        try:
            deadline = time.monotonic() + 60
            sent = await asyncio.to_thread(
                flood, s, FLOODS[kind], max_bytes=16 * 1024 * 1024, deadline=deadline
            )
            assert sent > 0
            code = await asyncio.to_thread(read_close_code, s, 30.0)
        finally:
            s.close()
        assert code == 1013, f"{kind}: close code {code} after {sent} bytes"
        status, _ = await _get(p.base_url + "/health")
        assert status == 200
