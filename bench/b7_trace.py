"""B7 trace context: what carrying the writer's trace costs (issue 19).

Two halves, each variant interleaved with the others and rotated every
repetition, so the ratios compare runs made side by side:

**Write side (B1's method).** pgbench into B1's table shape: ``bare`` (no
trigger), ``tracked`` (``outbox track``, no trace context: the common case)
and ``traced`` (the same table, every transaction with
``outbox.traceparent`` set, so the trigger reads, checks and stores it on
every event). The traceparent is set per session (libpq ``options=-c
outbox.traceparent=...``), so ``traced`` pays exactly what capture pays for
it, not the extra round trip an application's ``SET LOCAL`` costs itself.
Single-row and 100-row INSERTs, 1 and 16 writers, the relay awake
(a LISTEN connection drains wake-ups, as in B1).

**Relay side (B4's method).** Two ``outbox serve`` processes, each on its
own database, the same install (the OpenTelemetry SDK is installed in
both): ``plain`` has no ``OTEL_*`` variable, so no SDK provider is
installed and no span is made (the stored traceparent is sent as is);
``exporting`` exports every span over OTLP/HTTP to a loopback receiver
(``bench.otlp_sink``, its own process). N events committed in one
transaction, the clock from the commit until all N deliveries are
``success``. Variants: ``plain`` with traceless events, ``plain`` with a
traceparent set, ``exporting`` with a traceparent set (a dispatch span and
an attempt span per delivery). After each exporting run the harness waits
until the receiver has every span, so no run's export spills into the next
one's clock; the queue is made large enough that no span is dropped
(``OTEL_BSP_MAX_QUEUE_SIZE``), and the spans received are counted.

**Per call.** In the harness process: microseconds of tracing code per
webhook attempt (``start_attempt`` + ``end_attempt``) for a traceless
event, a traced one without an SDK provider, and a traced one through an
SDK provider with a BatchSpanProcessor; and the OTLP protobuf encoding of
a span, which the exporter's thread adds. CPU figures that a loaded
machine disturbs much less than throughput.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import conninfo, sql

from bench.b1_write import SCRIPTS, SHAPES, TABLE_DDL, Listener
from bench.b4_webhooks import FAST_RETRIES, wait_delivered
from bench.context import Context, interleaved
from bench.payloads import publish_events_sql
from bench.pg import bench_database
from bench.pgbench import pgbench
from bench.procs import Child, free_port, helper, running
from bench.report import Metric, ScenarioResult, ratio_metric
from bench.stats import Spread
from bench.system import create_webhook, outbox_server

WRITE_VARIANTS = ("bare", "tracked", "traced")
RELAY_VARIANTS = ("plain traceless", "plain traced", "exporting traced")
TABLES = {"bare": "b7_bare", "tracked": "b7_tracked", "traced": "b7_tracked"}
EVENT_TYPE = "bench.traced"


def traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@dataclass(frozen=True)
class Params:
    writers: tuple[int, ...]
    seconds: int
    transactions: int
    deliveries: int
    repeats: int


def params(ctx: Context) -> Params:
    if ctx.smoke:
        return Params(writers=(2,), seconds=0, transactions=10, deliveries=30, repeats=1)
    return Params(writers=(1, 16), seconds=3, transactions=0, deliveries=3000, repeats=ctx.reps(3))


# --- write side ---------------------------------------------------------------------


def setup_tables(url: str) -> None:
    from outbox.capture import Rule, track

    with psycopg.connect(url, autocommit=True) as conn:
        for t in sorted(set(TABLES.values())):
            conn.execute(sql.SQL(TABLE_DDL).format(t=sql.Identifier(t)))
        track(conn, [Rule(table=TABLES["tracked"], operation="insert", event_type=EVENT_TYPE)])


def reset(url: str, checkpoint: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        names = [sql.Identifier(t) for t in sorted(set(TABLES.values()))]
        conn.execute(
            sql.SQL("TRUNCATE {}, outbox.events RESTART IDENTITY").format(sql.SQL(", ").join(names))
        )
        if checkpoint:
            conn.execute("CHECKPOINT")


def with_traceparent(url: str, value: str) -> str:
    """The URL whose sessions all have ``outbox.traceparent`` set."""
    info = conninfo.conninfo_to_dict(url)
    info["options"] = f"-c outbox.traceparent={value}"
    return conninfo.make_conninfo("", **info)


def stored_traces(url: str) -> tuple[int, int]:
    """(events, events with a traceparent) in the outbox now."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), count(traceparent) FROM outbox.events").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def write_side(ctx: Context, p: Params, result: ScenarioResult) -> None:
    scripts: dict[tuple[str, str], Path] = {}
    for shape, rows in SHAPES.items():
        for v in WRITE_VARIANTS:
            path = ctx.workdir / f"b7_{shape}_{v}.sql"
            path.write_text(SCRIPTS[rows].format(t=TABLES[v]))
            scripts[(shape, v)] = path
    tps: dict[tuple[str, int, str], list[float]] = {}
    stored: dict[tuple[str, int, str], list[tuple[int, int]]] = {}
    with bench_database(ctx.admin_url, "b7w") as url:
        await asyncio.to_thread(setup_tables, url)
        traced_url = with_traceparent(url, traceparent())
        for rep in range(p.repeats):
            for shape in SHAPES:
                for writers in p.writers:
                    for v in interleaved(WRITE_VARIANTS, rep):
                        await asyncio.to_thread(reset, url, not ctx.smoke)
                        with Listener(url, asleep=False):
                            r = await pgbench(
                                traced_url if v == "traced" else url,
                                scripts[(shape, v)],
                                writers,
                                seconds=p.seconds,
                                transactions=p.transactions,
                                limit_s=p.seconds + 60,
                            )
                        if r["failed"]:
                            raise RuntimeError(f"pgbench: {r['failed']:.0f} failed transactions")
                        tps.setdefault((shape, writers, v), []).append(r["tps"])
                        counts = await asyncio.to_thread(stored_traces, url)
                        stored.setdefault((shape, writers, v), []).append(counts)
                        ctx.log(f"b7 rep {rep + 1} {shape} x{writers} {v}: {r['tps']:.0f} tx/s")
    for shape, rows in SHAPES.items():
        for writers in p.writers:
            bare, tracked, traced = (tps[(shape, writers, v)] for v in WRITE_VARIANTS)
            label = f"B1 {shape} INSERT, {writers} writer{'s' if writers > 1 else ''}"
            unit = "tx/s" if rows == 1 else "stmt/s"
            result.metrics += [
                Metric(f"{label}: traced", unit, Spread.of(traced), baseline=Spread.of(tracked)),
                ratio_metric(f"{label}: traced/tracked", traced, tracked),
                ratio_metric(f"{label}: tracked/bare", tracked, bare),
                ratio_metric(f"{label}: traced/bare", traced, bare),
            ]
    result.raw["write"] = [
        {"shape": s, "writers": w, "variant": v, "runs": x, "events_traced": stored[(s, w, v)]}
        for (s, w, v), x in tps.items()
    ]


# --- relay side ---------------------------------------------------------------------


async def run_delivery(
    db_url: str, webhook: dict[str, Any], n: int, traced: bool, limit_s: float
) -> dict[str, Any]:
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with conn:
        async with conn.transaction():
            # The same round trip either way; '' is no trace context.
            await conn.execute(
                "SELECT set_config('outbox.traceparent', %s, true)",
                (traceparent() if traced else "",),
            )
            cur = await conn.execute(publish_events_sql(EVENT_TYPE), {"n": n, "marker": ""})
            row = await cur.fetchone()
        t0 = time.monotonic_ns()
        assert row is not None
        end, ok, failed = await wait_delivered(conn, int(webhook["id"]), row[0], row[1], n, limit_s)
    seconds = (end - t0) / 1e9
    return {"n": n, "success": ok, "failed": failed, "seconds": seconds, "rate": ok / seconds}


async def otlp_stats(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.get(f"http://127.0.0.1:{port}/_stats")
        return dict(r.json())


async def drain_spans(port: int, expected: int, limit_s: float) -> dict[str, Any]:
    """Wait until the receiver got ``expected`` spans (the exporter's tail)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    total: dict[str, Any] = {"spans": 0, "posts": 0, "bytes": 0, "by_name": {}}
    while True:
        s = await otlp_stats(port)
        total["spans"] += s["spans"]
        total["posts"] += s["posts"]
        total["bytes"] += s["bytes"]
        for k, v in s["by_name"].items():
            total["by_name"][k] = total["by_name"].get(k, 0) + v
        if total["spans"] >= expected or loop.time() > deadline:
            return total
        await asyncio.sleep(0.2)  # polling interval while the exporter's last batch is due


async def relay_side(ctx: Context, p: Params, result: ScenarioResult) -> None:
    limit_s = 60.0 if ctx.smoke else 300.0
    rx_port, otlp_port = free_port(), free_port()
    receiver = Child(
        "receiver ok", helper("receiver", "--port", str(rx_port)), ctx.workdir / "b7-rx.log"
    )
    collector = Child(
        "otlp sink", helper("otlp_sink", "--port", str(otlp_port)), ctx.workdir / "b7-otlp.log"
    )
    url = f"http://127.0.0.1:{rx_port}/hook"
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_SERVICE_NAME": "bench-relay",
        # Room for a whole run's spans: none dropped, so every span is paid for.
        "OTEL_BSP_MAX_QUEUE_SIZE": str(max(4 * p.deliveries, 2048)),
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    spans: list[dict[str, Any]] = []
    with (
        bench_database(ctx.admin_url, "b7p") as plain_db,
        bench_database(ctx.admin_url, "b7x") as export_db,
    ):
        plain = outbox_server(
            ctx,
            plain_db,
            "b7-plain",
            OUTBOX_RETRY_SCHEDULE=FAST_RETRIES,
            OUTBOX_WEBHOOK_TIMEOUT="10",
        )
        exporting = outbox_server(
            ctx,
            export_db,
            "b7-exporting",
            OUTBOX_RETRY_SCHEDULE=FAST_RETRIES,
            OUTBOX_WEBHOOK_TIMEOUT="10",
            **otel,
        )
        async with running(receiver), running(collector), plain, exporting:
            hooks = {
                "plain": await create_webhook(plain, url, EVENT_TYPE, "bench plain"),
                "exporting": await create_webhook(exporting, url, EVENT_TYPE, "bench exporting"),
            }
            dbs = {"plain": plain_db, "exporting": export_db}
            for rep in range(p.repeats):
                for variant in interleaved(RELAY_VARIANTS, rep):
                    server, tracing = variant.split(" ")
                    r = await run_delivery(
                        dbs[server], hooks[server], p.deliveries, tracing == "traced", limit_s
                    )
                    if server == "exporting":
                        # A dispatch span and an attempt span per delivery.
                        got = await drain_spans(otlp_port, 2 * p.deliveries, 60.0)
                        r["spans_exported"] = got["spans"]
                        spans.append(got)
                    runs.setdefault(variant, []).append(r)
                    ctx.log(f"b7 rep {rep + 1} {variant}: {r['rate']:,.0f} deliveries/s")
            stray = await otlp_stats(otlp_port)
        result.raw["server_peak_rss_mb"] = {
            "plain": plain.peak_rss_mb,
            "exporting": exporting.peak_rss_mb,
        }
    rates = {v: [r["rate"] for r in runs[v]] for v in RELAY_VARIANTS}
    result.metrics += [
        Metric(
            "B4 traced, SDK exporting: deliveries/s",
            "deliveries/s",
            Spread.of(rates["exporting traced"]),
            baseline=Spread.of(rates["plain traced"]),
        ),
        ratio_metric(
            "B4 exporting traced / plain traced",
            rates["exporting traced"],
            rates["plain traced"],
        ),
        Metric(
            "B4 traced, no SDK provider: deliveries/s",
            "deliveries/s",
            Spread.of(rates["plain traced"]),
            baseline=Spread.of(rates["plain traceless"]),
        ),
        ratio_metric(
            "B4 plain traced / plain traceless", rates["plain traced"], rates["plain traceless"]
        ),
    ]
    result.raw["relay"] = [{"variant": v, "runs": x} for v, x in runs.items()]
    result.raw["spans"] = spans
    result.raw["stray_spans_after"] = stray["spans"]


# --- per call: the relay's own CPU per traced attempt ---------------------------------

MICRO_VARIANTS = ("traceless", "traced, no SDK", "traced, SDK span")


def _attempt_cost(n: int, traced: bool) -> float:
    """Microseconds per webhook attempt's tracing: start_attempt (+ end_attempt)."""
    from outbox.relay import tracing
    from outbox.relay.delivery.retry import AttemptResult

    done = AttemptResult(attempt=1, started_at=0.0, duration=0.01, status=200)
    tp = traceparent() if traced else None
    url = "https://hooks.example.com/in?token=x"
    t0 = time.perf_counter()
    for i in range(n):
        span = tracing.start_attempt(
            {},
            tp,
            None,
            url=url,
            attempt=1,
            delivery_id=i,
            webhook_id=1,
            event_id=i,
            event_type=EVENT_TYPE,
        )
        if span is not None:
            tracing.end_attempt(span, done)
    return (time.perf_counter() - t0) / n * 1e6


def _encode_cost(spans: list[Any]) -> float:
    """Microseconds per span to encode them as OTLP protobuf (what the exporter's
    thread does before its POST), over batches of the exporter's size (512)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    t0 = time.perf_counter()
    for i in range(0, len(spans), 512):
        encode_spans(spans[i : i + 512]).SerializeToString()
    return (time.perf_counter() - t0) / len(spans) * 1e6


def per_call(ctx: Context, p: Params, result: ScenarioResult) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from outbox.relay import tracing

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    n = 200 if ctx.smoke else 20_000
    costs: dict[str, list[float]] = {}
    encode: list[float] = []
    for rep in range(1 if ctx.smoke else 5):
        for v in interleaved(MICRO_VARIANTS, rep):
            provider = None
            if v == "traced, SDK span":
                # The exporting process's path: a span through a BatchSpanProcessor.
                provider = TracerProvider()
                provider.add_span_processor(
                    BatchSpanProcessor(Discard(), max_queue_size=max(2 * n, 2048))
                )
                tracing.use_tracer_provider(provider)
            try:
                costs.setdefault(v, []).append(_attempt_cost(n, v != "traceless"))
            finally:
                tracing.use_tracer_provider(None)
                if provider is not None:
                    provider.shutdown()
        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracing.use_tracer_provider(provider)
        try:
            _attempt_cost(min(n, 5120), True)
        finally:
            tracing.use_tracer_provider(None)
        encode.append(_encode_cost(list(memory.get_finished_spans())))
        provider.shutdown()
    for v in MICRO_VARIANTS:
        result.metrics.append(
            Metric(f"per attempt: {v}", "µs", Spread.of(costs[v]), note="tracing code only")
        )
    result.metrics.append(
        Metric("per span: OTLP protobuf encoding", "µs", Spread.of(encode), note="exporter thread")
    )
    result.raw["per_call_us"] = costs | {"otlp_encode_per_span": encode}


async def run(ctx: Context) -> ScenarioResult:
    p = params(ctx)
    result = ScenarioResult(
        "b7", "trace context: writes with a traceparent set vs not; relay exporting spans vs not"
    )
    result.params = asdict(p) | {
        "write_variants": WRITE_VARIANTS,
        "relay_variants": RELAY_VARIANTS,
        "retry_schedule": FAST_RETRIES,
    }
    per_call(ctx, p, result)
    await write_side(ctx, p, result)
    await relay_side(ctx, p, result)
    return result
