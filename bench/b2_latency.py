"""B2 latency: commit -> WebSocket client receipt, open-loop at fixed rates.

``pgbench -R`` commits one event per transaction (``outbox.publish``) at 10,
1,000 and 5,000 events/s: open loop, each transaction scheduled by the clock
(Poisson arrivals at that mean rate) whatever happened to the ones before, so
a slow server shows up as lateness instead of slowing the writer down
(coordinated omission). pgbench is C: the writer costs the 2 cores little,
and its per-transaction log (``-l``) says when each COMMIT returned, to the
microsecond, with no event-loop lag in between. Receivers:

- ``ws x1``: one fully-parsing ``websockets`` client (``bench.wsclient``);
- ``ws x100``: that client plus 99 ``bench.sink`` clients in one more
  process (the hub does the full fan-out work for 100 sockets, while the
  load generator stays cheap);
- ``notify`` (the baseline): the same writes plus a ``pg_notify`` per event,
  received by a psycopg LISTEN connection: the latency floor Postgres gives
  on this machine before any relay work;
- ``bare x1`` / ``bare x100`` (the CPU baseline, issue 22): the same writes
  plus a ``pg_notify`` carrying the event, served to the same clients by a
  plain Starlette + broadcaster feed (``bench.bare_feed``) running beside
  ``outbox serve``. Each server's CPU (utime + stime from /proc) is taken
  over its own runs; at 10 events/s x 100 clients outbox serve's must stay
  within 1.5x the bare feed's.

Latency = receipt - commit, both Unix time from the one host clock (pgbench
logs Unix time; the clients use ``time.time_ns()``). The JSON also keeps
scheduled -> receipt, which includes any lateness of the writer when the
database falls behind. Variants
are interleaved per rate and repeated; the table shows the median over
repetitions of each run's percentile, with min and max.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.bare_feed import CHANNEL as BARE_CHANNEL
from bench.context import Context, interleaved
from bench.payloads import SUBJECT
from bench.pg import bench_database
from bench.pgbench import pgbench, transaction_log
from bench.procs import Child, Server, cpu_s, free_port, helper, running
from bench.report import Metric, ScenarioResult, Target, ratio_metric
from bench.stats import Spread, latency_summary
from bench.system import outbox_server, ws_url

TARGETS = {(1000, 100, "p50"): Target("<=", 2.0), (1000, 100, "p99"): Target("<=", 10.0)}
CPU_TARGET = {(10, 100): Target("<=", 1.5)}  # outbox serve / bare feed, server CPU
PERCENTILES = ("p50", "p90", "p99", "max")


@dataclass(frozen=True)
class Params:
    rates: tuple[int, ...]
    clients: tuple[int, ...]
    seconds: dict[int, float]  # run length per rate
    repeats: int

    def writer_conns(self, rate: int) -> int:
        # Commits wait for the WAL flush (synchronous_commit=on): enough
        # pgbench connections that ~10 ms commits still sustain the rate.
        return max(2, min(32, rate // 100 + 2))


def params(ctx: Context) -> Params:
    if ctx.smoke:
        return Params(rates=(50,), clients=(3,), seconds={50: 1.0}, repeats=1)
    rates = ctx.b2_rates or (10, 1000, 5000)
    return Params(rates, (1, 100), {10: 20.0, 1000: 5.0, 5000: 2.0}, ctx.reps(3))


def latencies(commits: list[list[int]], recv: list[list[int]]) -> dict[str, Any]:
    got = dict((int(s), int(t)) for s, t in recv)
    commit_ms: list[float] = []
    sched_ms: list[float] = []
    for seq, scheduled, committed in commits:
        t = got.get(seq)
        if t is not None:
            commit_ms.append((t - committed) / 1e6)
            sched_ms.append((t - scheduled) / 1e6)
    lateness = sorted((c - s) / 1e6 for _, s, c in commits)
    return {
        "events": len(commits),
        "received": len(commit_ms),
        "commit_to_receipt_ms": latency_summary(commit_ms),
        "scheduled_to_receipt_ms": latency_summary(sched_ms),
        "commit_after_schedule_ms_p99": lateness[int(0.99 * (len(lateness) - 1))]
        if lateness
        else math.nan,
    }


# pgbench sends variables as untyped parameters: every one gets a cast.
SCRIPT = """\\set seq :seq + 1
SELECT outbox.publish('bench.tick', jsonb_build_object(
    'seq', (:client_id)::bigint * {base} + (:seq)::bigint,
    'ticket_id', 100000 + (:seq)::bigint, 'status', 'open', 'priority', (:seq)::bigint % 5,
    'subject', '{subject}', 'end', '', 'run', (:run)::bigint)){notify};
"""
NOTIFY = (
    ", pg_notify('bench_b2',"
    " (:run)::text || ':' || ((:client_id)::bigint * {base} + (:seq)::bigint))"
)
SEQ_BASE = 10_000_000  # seq = client * SEQ_BASE + the client's transaction number
# The bare feed's writers: the same event, published and also NOTIFYed whole.
BARE_SCRIPT = """\\set seq :seq + 1
SELECT outbox.publish('bench.tick', e), pg_notify('{channel}', e::text)
FROM (SELECT jsonb_build_object(
    'seq', (:client_id)::bigint * {base} + (:seq)::bigint,
    'ticket_id', 100000 + (:seq)::bigint, 'status', 'open', 'priority', (:seq)::bigint % 5,
    'subject', '{subject}', 'end', '', 'run', (:run)::bigint) AS e) AS ev;
"""


def write_scripts(ctx: Context) -> dict[str, Path]:
    paths = {}
    bare = ctx.workdir / "b2_bare.sql"
    bare.write_text(BARE_SCRIPT.format(base=SEQ_BASE, subject=SUBJECT, channel=BARE_CHANNEL))
    paths["bare"] = bare
    for mode, notify in (("publish", ""), ("notify", NOTIFY.format(base=SEQ_BASE))):
        path = ctx.workdir / f"b2_{mode}.sql"
        path.write_text(SCRIPT.format(base=SEQ_BASE, subject=SUBJECT, notify=notify))
        paths[mode] = path
    return paths


async def run_once(
    ctx: Context,
    server: Server,
    bare: Server,
    db_url: str,
    p: Params,
    scripts: dict[str, Path],
    rate: int,
    variant: str,
    clients: int,
) -> dict[str, Any]:
    run = str(secrets.randbelow(1 << 30))
    seconds = p.seconds[rate]
    conns = p.writer_conns(rate)
    per_conn = max(1, round(rate * seconds / conns))
    n = per_conn * conns
    timeout = seconds * 4 + 30
    log = ctx.workdir / "b2.log"
    # The baseline listens on Postgres directly; the product's client on /ws.
    url = f"ws://127.0.0.1:{bare.port}/ws" if variant == "bare" else ws_url(server)
    target = ("listen", db_url) if variant == "notify" else ("ws", url)
    client_args = ["--run", run, "--expect", str(n), "--timeout", str(timeout)]
    client = Child(f"{target[0]} client", helper("wsclient", *target, *client_args), log)
    sink = None
    if variant != "notify" and clients > 1:
        sink_args = ["--clients", str(clients - 1), "--expect", str(n), "--timeout", str(timeout)]
        sink = Child("sinks", helper("sink", url, *sink_args), log)
    serving = bare.pid if variant == "bare" else server.pid
    prefix = ctx.workdir / f"b2-{run}"
    async with running(client):
        if sink:
            await sink.start()
            await sink.expect("ready", 60)
        try:
            cpu0 = cpu_s(serving)
            await pgbench(
                db_url,
                scripts[{"notify": "notify", "bare": "bare"}.get(variant, "publish")],
                conns,
                transactions=per_conn,
                rate=rate,
                define={"seq": 0, "run": run},
                log_prefix=prefix,
                limit_s=timeout,
            )
            got = await client.expect("done", timeout + 10)
            sinks: dict[str, Any] | None = await sink.expect("done", timeout) if sink else None
            cpu = cpu_s(serving) - cpu0
        finally:
            if sink:
                await sink.stop()
    commits = [[c * SEQ_BASE + t, s, d] for c, t, s, d in transaction_log(prefix)]
    out = latencies(commits, got["recv"])
    out["server_cpu_s"] = cpu
    out["server_cpu_ms_per_s"] = cpu * 1000 / seconds
    if sinks is not None:
        # -1: each sink's first message is the connection message.
        out["sink_messages_min"] = min(max(0, c["messages"] - 1) for c in sinks["clients"])
        out["sink_closed_early"] = sum(1 for c in sinks["clients"] if c["closed_early"])
    return out


async def run(ctx: Context) -> ScenarioResult:
    p = params(ctx)
    result = ScenarioResult("b2", "latency: commit -> WebSocket receipt, open loop")
    result.params = asdict(p) | {"writer_conns": {r: p.writer_conns(r) for r in p.rates}}
    variants = [("ws", c) for c in p.clients] + [("bare", c) for c in p.clients] + [("notify", 1)]
    scripts = write_scripts(ctx)
    runs: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
    with bench_database(ctx.admin_url, "b2") as db_url:
        bare_port = free_port()
        bare = Server(
            "bare_feed",
            helper("bare_feed", "--port", str(bare_port), "--db", db_url),
            bare_port,
            ctx.workdir / "b2-bare.log",
        )
        async with outbox_server(ctx, db_url, "b2") as server, bare:
            for rep in range(p.repeats):
                for rate in p.rates:
                    for variant, clients in interleaved(variants, rep):
                        r = await run_once(
                            ctx, server, bare, db_url, p, scripts, rate, variant, clients
                        )
                        runs.setdefault((rate, variant, clients), []).append(r)
                        lat = r["commit_to_receipt_ms"]
                        ctx.log(
                            f"b2 rep {rep + 1} {rate}/s {variant} x{clients}: p50 {lat['p50']:.2f}"
                            f" p99 {lat['p99']:.2f} max {lat['max']:.1f} ms"
                            f" ({r['received']}/{r['events']}),"
                            f" server CPU {r['server_cpu_ms_per_s']:.1f} ms/s"
                        )
        result.raw["server_peak_rss_mb"] = server.peak_rss_mb
    for rate in p.rates:
        base = runs[(rate, "notify", 1)]
        for clients in p.clients:
            ours = runs[(rate, "ws", clients)]
            plain = runs[(rate, "bare", clients)]
            label = f"{rate} ev/s, {clients} client{'s' if clients > 1 else ''}"
            result.metrics.append(
                Metric(
                    f"{label}: server CPU, outbox serve (baseline: bare Starlette + broadcaster)",
                    "ms/s",
                    Spread.of([r["server_cpu_ms_per_s"] for r in ours]),
                    baseline=Spread.of([r["server_cpu_ms_per_s"] for r in plain]),
                )
            )
            result.metrics.append(
                ratio_metric(
                    f"{label}: server CPU outbox serve / bare feed",
                    [r["server_cpu_s"] for r in ours],
                    # at least one clock tick: a tiny smoke run may measure none
                    [max(r["server_cpu_s"], 1 / os.sysconf("SC_CLK_TCK")) for r in plain],
                    CPU_TARGET.get((rate, clients)),
                )
            )
            result.metrics.append(
                Metric(
                    f"{label}: bare feed p50 / p99",
                    "ms",
                    Spread.of([r["commit_to_receipt_ms"]["p50"] for r in plain]),
                    baseline=Spread.of([r["commit_to_receipt_ms"]["p99"] for r in plain]),
                    note="baseline column: the bare feed's p99",
                )
            )
            lost = sum(r["events"] - r["received"] for r in ours)
            for q in PERCENTILES:
                result.metrics.append(
                    Metric(
                        f"{rate} ev/s, {clients} client{'s' if clients > 1 else ''}: {q}",
                        "ms",
                        Spread.of([r["commit_to_receipt_ms"][q] for r in ours]),
                        target=TARGETS.get((rate, clients, q)),
                        baseline=Spread.of([r["commit_to_receipt_ms"][q] for r in base]),
                        note=f"{lost} events not received" if lost and q == "max" else "",
                    )
                )
    result.raw["runs"] = [
        {"rate": r, "variant": v, "clients": c, "runs": x} for (r, v, c), x in runs.items()
    ]
    return result
