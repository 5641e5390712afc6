"""B5 backlog: a million events already in the outbox.

Pre-loaded with raw INSERT ... SELECT generate_series in transactions of
1,000 rows (the schema's defaults draw the xid before the id, so the feed's
ordering guarantee holds for raw INSERTs), then VACUUM ANALYZE. One event in
50 is ``bench.hook``, subscribed to by one webhook, so the webhook drain is
20,000 deliveries (at ~1,000/s a drain of all million would take the whole
bench budget). Measured, in this order:

1. the feed reader alone: ``relay.feed.read_batch`` in a loop from a cursor
   taken before the load, against the baseline of a naive keyset read
   (``WHERE id > $last ORDER BY id LIMIT 1000``, the read that can skip late
   commits) of the same columns; interleaved, repeated;
2. the webhook drain: ``outbox serve`` starts with the backlog in place (its
   dispatcher has never run, so it starts from the beginning) and the clock
   runs from its start until every delivery is ``success``;
3. one WebSocket client (a ``bench.sink``) with ``since=`` that cursor,
   until it has the last event;
4. the same through ``GET /events?since=...&limit=1000`` page by page;
5. the server's peak RSS (VmHWM) over 2-4.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.b4_webhooks import wait_delivered
from bench.context import Context, interleaved
from bench.payloads import SQL_PAYLOAD
from bench.pg import bench_database
from bench.procs import Child, free_port, helper, running
from bench.report import Metric, ScenarioResult, Target
from bench.stats import Spread
from bench.system import TOKEN, create_webhook, outbox_server, ws_url

READ_TARGET = Target(">=", 100_000)
WS_TARGET = Target(">=", 20_000)
RSS_TARGET = Target("<", 300)
CHUNK = 1000
PAGE = 1000

LOAD_SQL = sql.SQL(
    "INSERT INTO outbox.events (event_type, payload) SELECT "
    "CASE WHEN g %% %(every)s = 0 THEN 'bench.hook' ELSE 'bench.backlog' END, {payload}"
    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g"
).format(payload=SQL_PAYLOAD)
NAIVE_SQL = (
    "SELECT id, xid::text::bigint, event_type, payload::text, created_at"
    " FROM outbox.events WHERE id > %s ORDER BY id LIMIT %s"
)


@dataclass(frozen=True)
class Params:
    events: int
    hook_every: int
    repeats: int

    @property
    def deliveries(self) -> int:
        return self.events // self.hook_every


def params(ctx: Context) -> Params:
    if ctx.smoke:
        return Params(events=3000, hook_every=100, repeats=1)
    return Params(events=1_000_000, hook_every=50, repeats=ctx.reps(2))


async def preload(db_url: str, p: Params, marker: str) -> float:
    t0 = time.monotonic()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for lo in range(1, p.events + 1, CHUNK):
            hi = min(p.events, lo + CHUNK - 1)
            await conn.execute(
                LOAD_SQL,
                {"every": p.hook_every, "n": p.events, "marker": marker, "lo": lo, "hi": hi},
            )
        await conn.execute("VACUUM (ANALYZE) outbox.events")
    return time.monotonic() - t0


async def read_feed(db_url: str, start: Any) -> dict[str, Any]:
    from outbox.relay.feed import read_batch

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        t0 = time.monotonic()
        count, cursor = 0, start
        while True:
            batch = await read_batch(conn, cursor, PAGE)
            cursor = batch.end
            if not batch.events:
                break
            count += len(batch.events)
        seconds = time.monotonic() - t0
    return {"events": count, "seconds": seconds, "rate": count / seconds}


async def read_naive(db_url: str, start: Any) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        t0 = time.monotonic()
        count, last = 0, start.after
        while True:
            cur = await conn.execute(NAIVE_SQL, (last, PAGE))
            rows = await cur.fetchall()
            if not rows:
                break
            count += len(rows)
            last = rows[-1][0]
        seconds = time.monotonic() - t0
    return {"events": count, "seconds": seconds, "rate": count / seconds}


async def read_api(base_url: str, start: Any, limit_s: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=limit_s) as http:
        t0 = time.monotonic()
        count, since = 0, start.encode()
        while True:
            r = await http.get("/events", params={"since": since, "limit": PAGE})
            r.raise_for_status()
            page = r.json()
            if not page["items"]:
                break
            count += len(page["items"])
            since = page["next_cursor"]
        seconds = time.monotonic() - t0
    return {"events": count, "seconds": seconds, "rate": count / seconds}


async def run(ctx: Context) -> ScenarioResult:
    from outbox.relay.feed import head

    p = params(ctx)
    result = ScenarioResult("b5", "backlog: pre-loaded events, read, drain, RSS")
    result.params = asdict(p) | {"chunk": CHUNK, "page": PAGE}
    marker = "end-" + secrets.token_hex(6)
    limit_s = 60.0 if ctx.smoke else 600.0
    rx_port = free_port()
    receiver = Child(
        "receiver", helper("receiver", "--port", str(rx_port)), ctx.workdir / "b5-receiver.log"
    )
    raw: dict[str, Any] = {}
    with bench_database(ctx.admin_url, "b5") as db_url:
        async with running(receiver):
            # Subscribe before the load, through the API; the server then stops
            # so the load and the direct reads run on a quiet machine.
            async with outbox_server(ctx, db_url, "b5-setup") as setup:
                hook = await create_webhook(
                    setup, f"http://127.0.0.1:{rx_port}/hook", "bench.hook", "bench backlog"
                )
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                start = await head(c)
            raw["preload_seconds"] = await preload(db_url, p, marker)
            ctx.log(f"b5 loaded {p.events:,} events in {raw['preload_seconds']:.1f}s")
            reads: dict[str, list[dict[str, Any]]] = {"feed": [], "naive": []}
            for rep in range(p.repeats):
                for kind in interleaved(("feed", "naive"), rep):
                    r = await (read_feed if kind == "feed" else read_naive)(db_url, start)
                    reads[kind].append(r)
                    ctx.log(f"b5 rep {rep + 1} {kind} read: {r['rate']:,.0f} events/s")
            raw["reads"] = reads

            server = outbox_server(ctx, db_url, "b5")
            t_spawn = time.monotonic_ns()
            async with server:
                async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                    end, ok, failed = await wait_delivered(
                        c, int(hook["id"]), start.after + 1, 2**62, p.deliveries, limit_s
                    )
                    # The drain proper: first delivery row created -> last one
                    # delivered (database clock), without the server's startup.
                    cur = await c.execute(
                        "SELECT extract(epoch FROM max(delivered_at) - min(created_at))::float8"
                        " FROM outbox.deliveries WHERE webhook_id = %s",
                        (int(hook["id"]),),
                    )
                    row = await cur.fetchone()
                span = float(row[0]) if row and row[0] else float("nan")
                drain = {
                    "deliveries": ok,
                    "failed": failed,
                    "seconds": span,
                    "rate": ok / span,
                    "wall_seconds_from_spawn": (end - t_spawn) / 1e9,
                }
                raw["webhook_drain"] = drain
                ctx.log(f"b5 webhook drain: {ok} in {drain['seconds']:.1f}s")

                sink = Child(
                    "sink",
                    helper(
                        "sink",
                        ws_url(server, since=start.encode()),
                        "--marker",
                        marker,
                        "--timeout",
                        str(limit_s),
                    ),
                    ctx.workdir / "b5-sink.log",
                )
                async with running(sink):
                    done = (await sink.expect("done", limit_s + 30))["clients"][0]
                got = max(0, done["messages"] - 1)  # minus the connection message
                seconds = (
                    (done["marker_ns"] - done["upgraded_ns"]) / 1e9
                    if done["marker_ns"]
                    else float("nan")
                )
                raw["ws_drain"] = {
                    "events": got,
                    "seconds": seconds,
                    "rate": got / seconds,
                    "closed_early": done["closed_early"],
                }
                ctx.log(f"b5 ws drain: {got:,} in {seconds:.1f}s")

                raw["api_read"] = await read_api(server.base_url, start, limit_s)
                ctx.log(f"b5 GET /events: {raw['api_read']['rate']:,.0f} events/s")
            raw["server_peak_rss_mb"] = server.peak_rss_mb
    result.raw = raw
    short = [r["events"] for r in reads["feed"] if r["events"] != p.events]
    result.metrics += [
        Metric(
            "feed read (read_batch)",
            "events/s",
            Spread.of([r["rate"] for r in reads["feed"]]),
            target=READ_TARGET,
            baseline=Spread.of([r["rate"] for r in reads["naive"]]),
            note=f"read {short} of {p.events}" if short else "",
        ),
        Metric(
            "WebSocket drain, 1 client since=",
            "events/s",
            Spread.of([raw["ws_drain"]["rate"]]),
            target=WS_TARGET,
            note=""
            if raw["ws_drain"]["events"] == p.events
            else f"received {raw['ws_drain']['events']} of {p.events}",
        ),
        Metric(
            "feed via GET /events, limit 1000", "events/s", Spread.of([raw["api_read"]["rate"]])
        ),
        Metric(
            f"webhook drain ({p.deliveries:,} deliveries)",
            "1/s",
            Spread.of([raw["webhook_drain"]["rate"]]),
            note=f"{failed} failed" if failed else "",
        ),
        Metric("server peak RSS", "MB", Spread.of([raw["server_peak_rss_mb"]]), target=RSS_TARGET),
    ]
    return result
