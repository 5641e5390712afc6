"""B3 fan-out: messages/s delivered to 10, 100 and 500 clients.

Product: ``outbox serve``; N events are committed in one statement
(``outbox.publish`` over ``generate_series``) once every
client is connected, and the clock runs from that commit until the last
client has the last event (so the relay's read and the hub's fan-out are
both inside it). Baseline: ``bench.bare_ws``, a bare Starlette endpoint
under the same uvicorn settings, broadcasting the same number of
pre-encoded frames of the same shape to the same number of clients; its
clock runs from the broadcast request.

Clients are ``bench.sink`` processes (raw sockets that count frames with
``bytes.count``), so the load generator costs a small fraction of what the
servers spend. N is sized so a run moves ~250,000 messages, capped at 8,000
events: under the hub's default per-client queue limit (10,000 frames), so a
client is never dropped for a backlog the bench itself created in one go.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg

from bench.context import Context, interleaved
from bench.payloads import publish_events_sql
from bench.pg import bench_database
from bench.procs import Child, Server, free_port, helper, running
from bench.report import ScenarioResult, Target, rate_vs_baseline
from bench.system import outbox_server, ws_url

RATE_TARGET = Target(">=", 50_000)
RATIO_TARGET = Target(">=", 0.8)


@dataclass(frozen=True)
class Params:
    clients: tuple[int, ...]
    messages_per_run: int
    min_events: int
    max_events: int
    repeats: int

    def events(self, clients: int) -> int:
        return max(self.min_events, min(self.max_events, self.messages_per_run // clients))


def params(ctx: Context) -> Params:
    if ctx.smoke:
        return Params(clients=(3,), messages_per_run=150, min_events=50, max_events=50, repeats=1)
    return Params((10, 100, 500), 250_000, 200, 8000, ctx.reps(3))


def measure(done: dict[str, Any], t0_ns: int, events: int) -> dict[str, Any]:
    """Messages/s over all clients, from t0 to the last client's last event."""
    clients = done["clients"]
    finished = [c["marker_ns"] for c in clients if c["marker_ns"]]
    # Every client first gets one "connection" message; it is not an event.
    delivered = sum(max(0, c["messages"] - 1) for c in clients)
    end = max(finished) if finished else 0
    seconds = (end - t0_ns) / 1e9 if end > t0_ns else float("nan")
    return {
        "events": events,
        "clients": len(clients),
        "delivered": delivered,
        "expected": events * len(clients),
        "complete_clients": len(finished),
        "closed_early": sum(1 for c in clients if c["closed_early"]),
        "seconds": seconds,
        "rate": delivered / seconds if seconds == seconds and seconds > 0 else float("nan"),
    }


def _sink(ctx: Context, url: str, clients: int, marker: str, limit_s: float) -> Child:
    argv = helper(
        "sink", url, "--clients", str(clients), "--marker", marker, "--timeout", str(limit_s)
    )
    return Child(f"sink x{clients}", argv, ctx.workdir / "b3-sink.log")


async def run_outbox(
    ctx: Context, server: Server, db_url: str, clients: int, n: int, limit_s: float
) -> dict[str, Any]:
    marker = "end-" + secrets.token_hex(6)
    sink = _sink(ctx, ws_url(server), clients, marker, limit_s)
    async with running(sink):
        conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
        async with conn:
            await conn.execute(publish_events_sql("bench.fanout"), {"n": n, "marker": marker})
            t0 = time.monotonic_ns()  # right after COMMIT returned (autocommit)
        done = await sink.expect("done", limit_s + 30)
    return measure(done, t0, n)


async def run_bare(
    ctx: Context, bare: Server, clients: int, n: int, limit_s: float
) -> dict[str, Any]:
    marker = "end-" + secrets.token_hex(6)
    sink = _sink(ctx, f"ws://127.0.0.1:{bare.port}/ws", clients, marker, limit_s)
    async with running(sink), httpx.AsyncClient(base_url=bare.base_url, timeout=30) as http:
        t0 = time.monotonic_ns()
        r = await http.post("/broadcast", json={"n": n, "marker": marker})
        r.raise_for_status()
        done = await sink.expect("done", limit_s + 30)
    return measure(done, t0, n)


async def run(ctx: Context) -> ScenarioResult:
    p = params(ctx)
    result = ScenarioResult("b3", "fan-out: messages/s to N clients vs bare Starlette")
    result.params = asdict(p) | {"events_per_run": {c: p.events(c) for c in p.clients}}
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    limit_s = 20.0 if ctx.smoke else 120.0
    with bench_database(ctx.admin_url, "b3") as db_url:
        bare_port = free_port()
        bare = Server(
            "bare_ws",
            helper("bare_ws", "--port", str(bare_port)),
            bare_port,
            ctx.workdir / "b3-bare.log",
        )
        async with outbox_server(ctx, db_url, "b3") as server, bare:
            for rep in range(p.repeats):
                for clients in p.clients:
                    n = p.events(clients)
                    for variant in interleaved(("outbox", "bare"), rep):
                        if variant == "outbox":
                            r = await run_outbox(ctx, server, db_url, clients, n, limit_s)
                        else:
                            r = await run_bare(ctx, bare, clients, n, limit_s)
                        runs.setdefault((clients, variant), []).append(r)
                        ctx.log(
                            f"b3 rep {rep + 1} {clients} clients {variant}: "
                            f"{r['rate']:,.0f} msg/s ({r['delivered']}/{r['expected']}, "
                            f"{r['closed_early']} closed)"
                        )
        result.raw["server_peak_rss_mb"] = server.peak_rss_mb
    for clients in p.clients:
        ours = runs[(clients, "outbox")]
        base = runs[(clients, "bare")]
        lost = sum(r["expected"] - r["delivered"] for r in ours)
        note = f"{lost} messages not delivered" if lost else ""
        result.metrics += rate_vs_baseline(
            f"{clients} clients", "msg/s", ours, base, (RATE_TARGET, RATIO_TARGET), note
        )
    result.raw["runs"] = [{"clients": c, "variant": v, "runs": x} for (c, v), x in runs.items()]
    return result
