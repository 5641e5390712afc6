"""Hostile webhook receivers against a real ``outbox serve`` (issue 15).

Each case: a raw-socket receiver on loopback (its own process,
tests/support/hostile_receivers.py) gets 8 deliveries while a normal
receiver gets a steady trickle. For every case the test checks that each
hostile attempt ended within its deadline and was never recorded as a
success unless the response was a complete valid 2xx, that ``/health``
answered within 200 ms throughout, that the normal webhook kept flowing,
and that the server's RSS grew by less than 100 MB (the peak is printed).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.paths import ROOT
from tests.support.receivers import running
from tests.support.relay import ServeProcess
from tests.support.servers import free_port
from tests.support.tls import self_signed
from tests.support.waiting import wait_for

AUTH = {"Authorization": "Bearer test-token"}
TIMEOUT = 2.0  # OUTBOX_WEBHOOK_TIMEOUT
HOSTILE = 8  # deliveries to the hostile receiver
HEALTH_LIMIT = 0.2
RSS_LIMIT_MB = 100.0

# case -> (error classes accepted, statuses accepted); None = no error / no status
EXPECTED: dict[str, tuple[set[str | None], set[int | None]]] = {
    "repeated_headers": ({"ResponseHeadTooLarge"}, {None}),
    "endless_headers": ({"ResponseHeadTooLarge"}, {None}),
    "huge_body": ({"ResponseTooLarge", "Timeout"}, {200}),
    "dripping_head": ({"Timeout"}, {None}),
    "pipelined": ({None}, {500}),
    "retry_after_superscript": ({None}, {503}),
    # Refused as unsolicited, or (when it lands after our request was written)
    # the 500 itself; the receiver answers every later request on a kept
    # connection, so nothing here may time out.
    "early_response": ({None, "UnsolicitedResponse"}, {500, None}),
    "tls_mismatch": ({"ConnectError"}, {None}),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def start_hostile(case: str, port: int, tls: tuple[Path, Path] | None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.support.hostile_receivers", case, str(port)]
    if tls:
        args += [str(tls[0]), str(tls[1])]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


async def count(conn: psycopg.AsyncConnection[Any], sql: str, *args: Any) -> int:
    cur = await conn.execute(sql, args)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("case", sorted(EXPECTED))
async def test_hostile_receiver(case: str, db_url: str, tmp_path: Path) -> None:
    port = free_port()
    tls = self_signed(tmp_path, "hooks.localhost") if case == "tls_mismatch" else None
    scheme, host = ("https", "other.localhost") if tls else ("http", "127.0.0.1")
    hostile_url = f"{scheme}://{host}:{port}/hook"
    env = {
        "OUTBOX_WEBHOOK_TIMEOUT": str(TIMEOUT),
        "OUTBOX_RETRY_SCHEDULE": "50ms",  # two attempts, then failed
        "OUTBOX_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
    }
    if tls:
        env["SSL_CERT_FILE"] = str(tls[0])  # trusted, but for another name
    hostile = start_hostile(case, port, tls)
    health: list[float] = []
    rss: list[float] = []
    try:
        async with (
            running() as normal,
            await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn,
        ):
            serve = ServeProcess(db_url, tmp_path / "serve.log", env=env)
            try:
                await serve.wait_ready()
                async with httpx.AsyncClient(base_url=serve.base_url, headers=AUTH) as api:
                    for name, url, event in (
                        ("hostile", hostile_url, "hostile.hit"),
                        ("normal", normal.url, "normal.tick"),
                    ):
                        r = await api.post(
                            "/webhooks", json={"name": name, "url": url, "event_type": event}
                        )
                        assert r.status_code == 201, r.text
                    await conn.execute("SELECT outbox.publish('normal.tick', '{}'::jsonb)")
                    await wait_for(lambda: len(normal.requests) == 1, timeout=20, what="warm-up")
                    baseline = rss_mb(serve.proc.pid)
                    await conn.execute(
                        "SELECT outbox.publish('hostile.hit', jsonb_build_object('n', n))"
                        " FROM generate_series(1, %s) n",
                        (HOSTILE,),
                    )
                    normal_sent = 1
                    t_end = time.monotonic() + 60
                    async with httpx.AsyncClient(base_url=serve.base_url, timeout=5) as probe:
                        while time.monotonic() < t_end:
                            t0 = time.perf_counter()
                            assert (await probe.get("/health")).status_code == 200
                            health.append(time.perf_counter() - t0)
                            rss.append(rss_mb(serve.proc.pid))
                            await conn.execute("SELECT outbox.publish('normal.tick', '{}'::jsonb)")
                            normal_sent += 1
                            finished = await count(
                                conn,
                                "SELECT count(*) FROM outbox.deliveries"
                                " WHERE event_type = 'hostile.hit' AND status <> 'pending'",
                            )
                            if finished == HOSTILE:
                                break
                            await asyncio.sleep(0.1)
                    await wait_for(
                        lambda: len(normal.requests) >= normal_sent,
                        timeout=20,
                        what="normal deliveries",
                    )
                    cur = await conn.execute(
                        "SELECT d.status, a.outcome, a.response_status, a.error_class,"
                        "       a.error_message, a.duration_ms"
                        " FROM outbox.delivery_attempts a"
                        " JOIN outbox.deliveries d ON d.id = a.delivery_id"
                        " WHERE d.event_type = 'hostile.hit'"
                    )
                    attempts = await cur.fetchall()
                    lag = await count(
                        conn,
                        "SELECT coalesce(max(extract(epoch FROM d.delivered_at - e.created_at)"
                        " * 1000), 0)::int FROM outbox.deliveries d"
                        " JOIN outbox.events e ON e.id = d.event_id"
                        " WHERE d.event_type = 'normal.tick'",
                    )
            finally:
                serve.signal(signal.SIGTERM)
                await serve.wait(timeout=30)
        log = serve.log()
    finally:
        hostile.kill()
        hostile.wait(10)
        if hostile.stdout is not None:
            hostile.stdout.close()

    peak = max(rss) if rss else baseline
    print(
        f"\n{case}: {len(attempts)} attempts, health max {max(health) * 1000:.0f} ms,"
        f" RSS {baseline:.0f} -> peak {peak:.0f} MB, normal lag max {lag} ms"
    )
    errors, statuses = EXPECTED[case]
    assert len(attempts) == 2 * HOSTILE, attempts
    for status, outcome, response_status, error_class, message, duration_ms in attempts:
        assert status == "failed" and outcome != "success", (status, outcome)
        assert error_class in errors and response_status in statuses, (error_class, message)
        assert duration_ms <= TIMEOUT * 1000 + 500, duration_ms
        if case == "tls_mismatch":
            assert "certificate" in message or "hostname" in message, message
        if case == "early_response":  # the 500 taken, or refused: never a mix
            pair = (error_class, response_status)
            assert pair in {(None, 500), ("UnsolicitedResponse", None)}, (pair, message)
    assert max(health) < HEALTH_LIMIT, sorted(health)[-5:]
    assert peak - baseline < RSS_LIMIT_MB, (baseline, peak)
    assert len(normal.requests) >= normal_sent and lag < 3000, lag
    assert "Traceback" not in log, log[-3000:]
