"""The feed read stays cheap whichever plan PostgreSQL caches for it.

``read_batch`` runs ``feed_read`` as a prepared statement, and after five
executions PostgreSQL may switch to a generic plan. With the statistics of a
bulk-loaded table (few transactions of many rows each: ``n_distinct(xid)``
tiny), the generic plan of the walk's per-xid probe once chose the primary
key in id order with ``xid = ...`` as a filter, expecting a match soon: for
xids with no rows at or below the cursor (the usual case: every transaction
committed since the previous read) that scans every row below the cursor,
once per xid walked. A reader behind by a few thousand one-row transactions
then took seconds per read, fell further behind, and the next read took
longer (B6 saw JetStream commit -> arrival at 20-30 s, and the feed loop's
reads at 6-8 s).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from outbox.relay.feed import head, read_batch

BULK_TRANSACTIONS = 20
BULK_ROWS = 1000
WALKED = 3000
# The bad plan took ~9 s here (3,000 probes x 20,000 rows); the good one ~10 ms.
BOUND_S = 1.5


async def bulk_load(conn: psycopg.AsyncConnection[Any]) -> None:
    for t in range(BULK_TRANSACTIONS):
        await conn.execute(
            "INSERT INTO outbox.events (event_type, payload)"
            " SELECT 'bulk.row', jsonb_build_object('t', %s::int, 'n', g)"
            " FROM generate_series(1, %s) AS g",
            (t, BULK_ROWS),
        )
    await conn.execute("ANALYZE outbox.events")


async def burn_xids(conn: psycopg.AsyncConnection[Any], n: int) -> None:
    """``n`` committed transactions, each with an xid (and no rows)."""
    await conn.execute(
        f"DO $$ BEGIN FOR i IN 1..{int(n)} LOOP PERFORM pg_current_xact_id(); COMMIT;"
        " END LOOP; END $$"
    )


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
async def test_a_reader_behind_by_thousands_of_transactions_reads_in_milliseconds(
    aconn: psycopg.AsyncConnection[Any], db_url: str, mode: str
) -> None:
    await bulk_load(aconn)
    reader = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        await reader.execute("SET jit = off")  # as relay sessions run (sql/reconnect.sql)
        await reader.execute(f"SET plan_cache_mode = {mode}")
        cursor = await head(reader)
        await burn_xids(aconn, WALKED)
        row = await (await aconn.execute("SELECT outbox.publish('after.walk', '{}')")).fetchone()
        assert row is not None
        for _ in range(3):  # prepared from the first read; each walks every xid again
            started = time.monotonic()
            batch = await read_batch(reader, cursor, 1000)
            took = time.monotonic() - started
            assert [e.id for e in batch.events] == [row[0]]
            assert took < BOUND_S, f"{mode}: a read walking {WALKED} xids took {took:.2f}s"
    finally:
        await reader.close()
