"""B4k, the per-key order variant of B4: ``ordering: key`` vs unordered.

One ``outbox serve``, one receiver (``bench.receiver``, always 200 except
bodies of the failing key), four webhooks on it, one per variant; each run
publishes its events in one statement and the clock runs from that commit
until they are all finished in ``outbox.deliveries`` (as in B4):

* ``unordered``: N events over 100 keys to a webhook with ordering none
  (the baseline: the sender at full concurrency);
* ``key, 100 keys``: the same N events to a webhook with ordering key: at
  most 100 requests in flight, one per key;
* ``key, 1 key``: N1 events of one key: strictly serial. Its rate is
  requests per second of one chain of claim, POST, record and promote; 1/rate
  is the per-request latency that chain implies;
* ``key, 100 keys, one failing``: N events over 100 keys, one of which the
  receiver always answers 500 (its heads retry on the 10 ms schedule, then
  fail, one after the other). Measured: the other 99 keys' deliveries/s,
  against 99% of the all-ok 100-key rate of the same repetition.

The variants run interleaved, rotated each repetition; the machine is shared,
so the figures that mean something are the ratios of one repetition's runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.context import Context, interleaved
from bench.payloads import SUBJECT
from bench.pg import bench_database
from bench.procs import Child, Server, free_port, helper, running
from bench.report import Metric, ScenarioResult, Target, ratio_metric
from bench.stats import Spread
from bench.system import TOKEN, outbox_server

RATIO_TARGET = Target(">=", 0.8)  # issue 17: 100 keys >= 0.8x unordered
# A failing key may cost the others at most its own share (1 of 100): their
# rate >= 99% of the all-ok run's. 0.9, not 0.99: two runs on a shared
# 2-core machine differ by more than 1% on their own.
SHARE_TARGET = Target(">=", 0.9)
FAST_RETRIES = ",".join(["10ms"] * 7)
KEYS = 100
FAILING = "f-000"  # the failing key of the 'one failing' variant
POLL = 0.02
VARIANTS = ("unordered", "key100", "key1", "failing")


@dataclass(frozen=True)
class Params:
    deliveries: int
    serial: int  # events of the one-key run
    repeats: int


def params(ctx: Context) -> Params:
    if ctx.smoke:
        return Params(deliveries=40, serial=10, repeats=1)
    return Params(deliveries=3000, serial=300, repeats=ctx.reps(3))


def publish_keyed_sql(event_type: str, prefix: str, keys: int) -> sql.Composed:
    """``%(n)s`` events through outbox.publish, event g keyed ``prefix-((g - 1) % keys)``."""
    return sql.SQL(
        "SELECT min(id), max(id), count(*) FROM (SELECT outbox.publish({t},"
        " jsonb_build_object('seq', g, 'key', k, 'subject', {subject}), key => k) AS id"
        " FROM generate_series(1, %(n)s::bigint) AS g,"
        " LATERAL (SELECT {prefix} || '-' || lpad(((g - 1) %% {keys})::text, 3, '0') AS k) AS kk)"
        " AS published"
    ).format(
        t=sql.Literal(event_type),
        subject=sql.Literal(SUBJECT),
        prefix=sql.Literal(prefix),
        keys=sql.Literal(keys),
    )


async def drain(
    conn: psycopg.AsyncConnection[Any],
    webhook_id: int,
    lo: int,
    hi: int,
    n: int,
    limit_s: float,
    t0: int,
) -> dict[str, Any]:
    """Poll until all n deliveries are finished; also when those not of FAILING were."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    others_at: int | None = None
    while True:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE d.status = 'success'),"
            " count(*) FILTER (WHERE d.status = 'failed'),"
            " count(*) FILTER (WHERE d.status <> 'pending' AND e.key IS DISTINCT FROM %s),"
            " count(*) FILTER (WHERE e.key IS DISTINCT FROM %s)"
            " FROM outbox.deliveries d JOIN outbox.events e ON e.id = d.event_id"
            " WHERE d.webhook_id = %s AND d.event_id BETWEEN %s AND %s",
            (FAILING, FAILING, webhook_id, lo, hi),
        )
        row = await cur.fetchone()
        now = time.monotonic_ns()
        assert row is not None
        ok, failed, others_done, others = (int(x) for x in row)
        if others_at is None and others and others_done >= others:
            others_at = now
        if ok + failed >= n:
            seconds = (now - t0) / 1e9
            others_s = ((others_at or now) - t0) / 1e9
            return {
                "n": n,
                "success": ok,
                "failed": failed,
                "seconds": seconds,
                "rate": ok / seconds,
                "others": others,
                "others_rate": others / others_s if others else 0.0,
            }
        if loop.time() > deadline:
            raise RuntimeError(f"webhook drain: {ok}+{failed} of {n} finished after {limit_s}s")
        await asyncio.sleep(POLL)


async def run_variant(
    db_url: str, hook: dict[str, Any], variant: str, p: Params, limit_s: float
) -> dict[str, Any]:
    n = p.serial if variant == "key1" else p.deliveries
    keys = 1 if variant == "key1" else KEYS
    prefix = "f" if variant == "failing" else variant
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(publish_keyed_sql(hook["event_types"][0], prefix, keys), {"n": n})
        row = await cur.fetchone()
        t0 = time.monotonic_ns()
        assert row is not None
        return await drain(conn, int(hook["id"]), row[0], row[1], n, limit_s, t0)


async def create_webhook(
    server: Server, url: str, event_type: str, name: str, ordering: str
) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ) as client:
        r = await client.post(
            "/webhooks",
            json={"name": name, "url": url, "event_type": event_type, "ordering": ordering},
        )
        if r.status_code != 201:
            raise RuntimeError(f"POST /webhooks: {r.status_code} {r.text[:300]}")
        return dict(r.json())


async def run(ctx: Context) -> ScenarioResult:
    p = params(ctx)
    result = ScenarioResult("b4k", "webhooks, ordering key: 100 keys and 1 key vs unordered")
    result.params = asdict(p) | {"keys": KEYS, "retry_schedule": FAST_RETRIES}
    limit_s = 60.0 if ctx.smoke else 300.0
    port = free_port()
    marker = f'"key": "{FAILING}"'
    receiver = Child(
        "receiver b4k",
        helper("receiver", "--port", str(port), "--fail-matching", marker),
        ctx.workdir / "b4k-receiver.log",
    )
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with bench_database(ctx.admin_url, "b4k") as db_url:
        server = outbox_server(
            ctx, db_url, "b4k", OUTBOX_RETRY_SCHEDULE=FAST_RETRIES, OUTBOX_WEBHOOK_TIMEOUT="10"
        )
        async with running(receiver), server:
            url = f"http://127.0.0.1:{port}/hook"
            hooks = {
                v: await create_webhook(
                    server, url, f"bench.{v}", f"b4k {v}", "none" if v == "unordered" else "key"
                )
                for v in VARIANTS
            }
            for rep in range(p.repeats):
                for v in interleaved(VARIANTS, rep):
                    r = await run_variant(db_url, hooks[v], v, p, limit_s)
                    runs[v].append(r)
                    ctx.log(f"b4k rep {rep + 1} {v}: {r['rate']:,.0f} deliveries/s")
        result.raw["server_peak_rss_mb"] = server.peak_rss_mb
    unordered = [r["rate"] for r in runs["unordered"]]
    key100 = [r["rate"] for r in runs["key100"]]
    serial = [r["rate"] for r in runs["key1"]]
    others = [r["others_rate"] for r in runs["failing"]]
    result.metrics += [
        Metric("unordered: deliveries/s", "deliveries/s", Spread.of(unordered)),
        Metric("key, 100 keys: deliveries/s", "deliveries/s", Spread.of(key100)),
        ratio_metric("key, 100 keys / unordered", key100, unordered, RATIO_TARGET),
        Metric(
            "key, 1 key: deliveries/s", "deliveries/s", Spread.of(serial), note="strictly serial"
        ),
        Metric(
            "key, 1 key: per request",
            "ms",
            Spread.of([1000.0 / r for r in serial]),
            note="claim + POST + record + promote, one after the other",
        ),
        Metric(
            "one key failing: the other 99's deliveries/s",
            "deliveries/s",
            Spread.of(others),
            note=f"its {sum(r['failed'] for r in runs['failing'])} deliveries failed",
        ),
        ratio_metric(
            "one key failing: others / (99% of all-ok 100 keys)",
            others,
            [0.99 * k for k in key100],
            SHARE_TARGET,
        ),
    ]
    result.raw["runs"] = runs
    return result
