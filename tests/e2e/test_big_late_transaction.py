"""A 200,000-row transaction that commits after a later small one (issue 16
item 4), through a real ``outbox serve`` with default settings.

Before, the late rows were read whole (the server grew by ~500 MB) and, as
resume cursors were per transaction, a client dropped mid-transaction
re-read all of it on every resume. Now late rows are paged like any read and
cursors point inside the transaction: a client that disconnects in the
middle and resumes from its last cursor gets every event, each
transaction's events in id order, repeating at most one page, and the
server's RSS grows by less than 150 MB.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import psycopg
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.relay import ServeProcess

ROWS = 200_000
RSS_LIMIT_MB = 150.0
BATCH = 1000  # OUTBOX_BATCH_SIZE's default


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_huge_late_transaction_reaches_a_resuming_client(db_url: str, tmp_path: Path) -> None:
    serve = ServeProcess(db_url, tmp_path / "serve.log")
    peak = 0.0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_mb(serve.proc.pid))
            await asyncio.sleep(0.05)

    try:
        await serve.wait_ready()
        url = f"ws://127.0.0.1:{serve.port}/ws?token=test-token"
        big = await psycopg.AsyncConnection.connect(db_url)
        try:
            async with connect(url, proxy=None, open_timeout=10) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
                cursor = hello["cursor"]
                # The big transaction draws the smaller ids, then a small one commits first.
                await big.execute(
                    "INSERT INTO outbox.events (event_type, payload)"
                    " SELECT 'big.row', jsonb_build_object('i', g) FROM generate_series(1, %s) g",
                    (ROWS,),
                )
                async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                    await c.execute("SELECT outbox.publish('small.one', '{}'::jsonb)")
                small = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert small["type"] == "small.one"
                cursor = small["cursor"]
            baseline = rss_mb(serve.proc.pid)
            sampler = asyncio.create_task(sample())
            await big.commit()
        finally:
            await big.close()

        got: list[int] = []
        seen: set[int] = set()
        resumes = 0
        deadline = time.monotonic() + 240
        while len(seen) < ROWS and time.monotonic() < deadline:
            resumes += 1
            try:
                async with connect(
                    f"{url}&since={cursor}", proxy=None, open_timeout=10, max_queue=None
                ) as ws:
                    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert hello["type"] == "connection", hello
                    this: list[int] = []
                    while len(seen) < ROWS:
                        m = json.loads(await asyncio.wait_for(ws.recv(), 30))
                        assert m["type"] == "big.row", m
                        this.append(m["payload"]["i"])
                        seen.add(m["payload"]["i"])
                        got.append(m["payload"]["i"])
                        cursor = m["cursor"]
                        if resumes == 1 and len(this) == ROWS // 3:
                            break  # leave mid-transaction, resume from its cursor
                    # One transaction's events in order on each connection.
                    assert this == sorted(this)
            except ConnectionClosed:
                continue  # dropped (e.g. 1013): resume from the last cursor
        sampling = False
        await sampler
    finally:
        sampling = False
        serve.kill()
        await serve.wait()
    assert len(seen) == ROWS, f"{len(seen)} of {ROWS} after {resumes} connections"
    assert resumes >= 2
    # Resuming inside the transaction repeats at most a page per resume.
    assert len(got) - ROWS <= BATCH * (resumes - 1), (len(got), resumes)
    growth = peak - baseline
    print(f"RSS {baseline:.0f} MB -> peak {peak:.0f} MB (+{growth:.0f}); {resumes} connections")
    assert growth < RSS_LIMIT_MB, growth
