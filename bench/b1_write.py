"""B1 write cost: what capture adds to the writer's INSERTs.

Three identical tables, written by ``pgbench`` (a C client, so the load
generator does not eat the CPU being measured), in four variants:

- ``bare``: no trigger;
- ``tracked``: what users pay: ``outbox track`` as users run it, with a
  real ``outbox serve`` consuming on the same machine (started after the
  reset, no clients, no webhooks). Reports the relay's PostgreSQL CPU per
  1,000 events (utime + stime of its backends, from /proc: the cluster is
  local) and whether it kept up (every event read within 1 s of the end of
  the run, from its ``outbox_events_read_total``);
- ``idle``: the same table with no relay running, only its state while
  events flow (awake): the trigger writes the outbox row and probes the
  doorbell lock (sql/003_doorbell.sql); the probe succeeds, so no NOTIFY;
- ``ringing``: the same table while a relay sleeps (a connection here holds
  the doorbell lock exclusively, as relay/doorbell.py does before it waits):
  every commit NOTIFYs. The worst case of the wake-up;
- ``quiet``: the same capture trigger with the whole wake-up (probe and
  NOTIFY) removed, built here from the tracked trigger's own source: the
  cost of the outbox row alone, with the wake-up off;
- ``floor``: the least any per-row outbox can cost: a statement-level
  trigger copying each row as ``to_jsonb`` into a plain two-column table
  (event type, payload) with no index, no id, no transaction id and no
  wake-up. Not something a relay could read without gaps; it is there to
  show how much of the ratio is the second row itself.

Shapes: single-row INSERT transactions and 100-row ``INSERT ... SELECT``
statements, at 1, 4 and 16 concurrent writers. Variants are interleaved
(their order rotates each repetition) and the tables and the outbox are
truncated and checkpointed before every run, so no run inherits another's
bloat or a checkpoint. A LISTEN connection drains the notifications during
every run, as a relay would: notifications nobody reads pile up in the
queue and cost more than read ones. Only ``tracked`` runs a relay.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.context import Context, interleaved
from bench.pg import bench_database
from bench.pgbench import pgbench
from bench.procs import Server, cpu_s
from bench.report import Metric, ScenarioResult, Target, ratio_metric
from bench.stats import Spread
from bench.system import TOKEN, outbox_server

VARIANTS = ("bare", "tracked", "idle", "ringing", "quiet", "floor")
TABLES = {
    "bare": "b1_bare",
    "tracked": "b1_tracked",
    "idle": "b1_tracked",
    "ringing": "b1_tracked",
    "quiet": "b1_quiet",
    "floor": "b1_floor",
}
FLOOR_DDL = """
CREATE TABLE b1_floor_events (event_type text NOT NULL, payload jsonb NOT NULL);
CREATE FUNCTION b1_floor_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO b1_floor_events (event_type, payload)
    SELECT 'bench.row_created', to_jsonb(r) FROM outbox_rows AS r;
    RETURN NULL;
END
$$;
CREATE TRIGGER b1_floor_capture AFTER INSERT ON b1_floor
    REFERENCING NEW TABLE AS outbox_rows
    FOR EACH STATEMENT EXECUTE FUNCTION b1_floor_capture();
"""
SHAPES = {"1-row": 1, "100-row": 100}
EVENT_TYPE = "bench.row_created"

TABLE_DDL = """
CREATE TABLE {t} (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account    integer       NOT NULL,
    amount     numeric(12,2) NOT NULL,
    note       text          NOT NULL,
    created_at timestamptz   NOT NULL DEFAULT now()
)
"""
SCRIPTS = {
    1: "\\set a random(1, 100000)\n"
    "INSERT INTO {t} (account, amount, note) VALUES (:a, :a * 0.01, 'bench write cost row');\n",
    100: "INSERT INTO {t} (account, amount, note)\n"
    "  SELECT g, g * 0.01, 'bench write cost row' FROM generate_series(1, 100) AS g;\n",
}
_NOTIFY_RE = re.compile(r"PERFORM\s+pg_notify\s*\([^;]*\)\s*;", re.IGNORECASE)

TARGETS = {("1-row", 16): Target(">=", 0.75), ("100-row", 16): Target(">=", 0.30)}
# The relay kept up when it had read every event this soon after the run.
KEPT_UP_S = 1.0


@dataclass(frozen=True)
class Params:
    writers: tuple[int, ...]
    seconds: int  # per pgbench run (0: use ``transactions`` instead)
    transactions: int  # per client, smoke mode only
    repeats: int


def params(ctx: Context) -> Params:
    if ctx.smoke:
        return Params(writers=(2,), seconds=0, transactions=10, repeats=1)
    writers = ctx.b1_writers or (1, 4, 16)
    return Params(writers=writers, seconds=3, transactions=0, repeats=ctx.reps(3))


def setup(url: str) -> None:
    """Create the three tables; track two; take the wake-up out of one."""
    from outbox.capture import Rule, track

    with psycopg.connect(url, autocommit=True) as conn:
        for t in sorted(set(TABLES.values())):
            conn.execute(sql.SQL(TABLE_DDL).format(t=sql.Identifier(t)))
        for v in ("tracked", "quiet"):
            track(conn, [Rule(table=TABLES[v], operation="insert", event_type=EVENT_TYPE)])
        silence_wakeup(conn, TABLES["quiet"])
        conn.execute(FLOOR_DDL)


def silence_wakeup(conn: psycopg.Connection[Any], table: str) -> None:
    """Rewrite the capture functions of ``table`` without their ``pg_notify``.

    Built from the installed trigger's own source, so the comparison follows
    whatever ``outbox track`` generates; if capture stops calling pg_notify
    directly this fails loudly rather than measure a wrong variant.
    """
    rows = conn.execute(
        "SELECT DISTINCT p.oid, pg_get_functiondef(p.oid) FROM pg_trigger t"
        " JOIN pg_proc p ON p.oid = t.tgfoid"
        " WHERE t.tgrelid = to_regclass(%s) AND NOT t.tgisinternal",
        (table,),
    ).fetchall()
    from outbox import capture

    ring = getattr(capture, "RING", None)
    changed = 0
    for _, src in rows:
        if ring and ring in src:
            new, n = src.replace(ring, "NULL; -- bench: wake-up off"), 1
        else:
            new, n = _NOTIFY_RE.subn("NULL; -- bench: wake-up off", src)
        if n:
            conn.execute(new.encode())
            changed += 1
    if not changed:
        raise RuntimeError(
            f"no pg_notify call found in the capture triggers of {table}: "
            "bench/b1_write.py cannot build the wake-up-off variant"
        )


def reset(url: str, checkpoint: bool) -> None:
    """Empty tables and outbox, then checkpoint: every run starts equal."""
    with psycopg.connect(url, autocommit=True) as conn:
        names = [sql.Identifier(t) for t in sorted(set(TABLES.values()))]
        conn.execute(
            sql.SQL("TRUNCATE {}, b1_floor_events, outbox.events RESTART IDENTITY").format(
                sql.SQL(", ").join(names)
            )
        )
        if checkpoint:
            conn.execute("CHECKPOINT")


class Listener:
    """A LISTEN connection draining the wake-ups in a thread, as a relay would.

    With ``asleep``, it first takes the doorbell lock exclusively, as a relay
    does before it waits for a notification: from then on every writer's
    probe fails and its commit NOTIFYs.
    """

    def __init__(self, url: str, *, asleep: bool) -> None:
        self.url = url
        self.asleep = asleep
        self.count = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="b1-listen", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("LISTEN outbox_events")
                if self.asleep:
                    conn.execute("SELECT pg_advisory_lock(outbox.doorbell_key())")
                self._ready.set()
                # One more round after stop: the last commits' notifications
                # may still be on their way when pgbench returns.
                last = False
                while not last:
                    last = self._stop.is_set()
                    for _ in conn.notifies(timeout=0.2):
                        self.count += 1
        except BaseException as exc:  # reported by stop()
            self._error = exc
            self._ready.set()

    def __enter__(self) -> Listener:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("LISTEN connection did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error:
            raise RuntimeError(f"listener failed: {self._error}") from self._error


def _relay_backends(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'outbox %%'"
        ).fetchall()
    return [int(r[0]) for r in rows]


def _events(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM outbox.events").fetchone()
    assert row is not None
    return int(row[0])


async def _events_read(server: Server) -> float:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ) as client:
        r = await client.get("/metrics")
    for line in r.text.splitlines():
        if line.startswith("outbox_events_read_total "):
            return float(line.split()[1])
    raise RuntimeError("/metrics has no outbox_events_read_total")


async def _with_relay(
    ctx: Context, url: str, script: Path, writers: int, p: Params, name: str
) -> tuple[dict[str, float], dict[str, float]]:
    """pgbench with ``outbox serve`` consuming; what the relay cost, and if it kept up."""
    server = outbox_server(ctx, url, f"b1-{name}")
    async with server:
        backends = await asyncio.to_thread(_relay_backends, url)
        pg0 = sum(cpu_s(b, gone_is_zero=True) for b in backends)
        py0 = cpu_s(server.pid, gone_is_zero=True)
        r = await pgbench(
            url,
            script,
            writers,
            seconds=p.seconds,
            transactions=p.transactions,
            limit_s=p.seconds + 60,
        )
        total = await asyncio.to_thread(_events, url)
        deadline = time.monotonic() + KEPT_UP_S
        read = await _events_read(server)
        while read < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling the relay's counter, bounded by KEPT_UP_S
            read = await _events_read(server)
        pg_cpu = sum(cpu_s(b, gone_is_zero=True) for b in backends) - pg0
        py_cpu = cpu_s(server.pid, gone_is_zero=True) - py0
    per = 1000 / max(total, 1)
    return r, {
        "events": total,
        "read_pct": 100.0 * read / max(total, 1),
        "pg_cpu_ms_per_1000": pg_cpu * 1000 * per,
        "py_cpu_ms_per_1000": py_cpu * 1000 * per,
    }


async def run(ctx: Context) -> ScenarioResult:
    p = params(ctx)
    result = ScenarioResult(
        "b1",
        "write cost: bare vs tracked (outbox serve consuming; no relay; relay asleep)"
        " vs wake-up off vs floor",
    )
    result.params = asdict(p) | {"variants": VARIANTS, "client": "pgbench -M prepared"}
    scripts: dict[tuple[str, str], Path] = {}
    for shape, rows in SHAPES.items():
        for v in VARIANTS:
            path = ctx.workdir / f"b1_{shape}_{v}.sql"
            path.write_text(SCRIPTS[rows].format(t=TABLES[v]))
            scripts[(shape, v)] = path
    # tps[(shape, writers, variant)] = one value per repetition
    tps: dict[tuple[str, int, str], list[float]] = {}
    notified: dict[tuple[str, int, str], list[int]] = {}
    relays: dict[tuple[str, int], list[dict[str, float]]] = {}
    with bench_database(ctx.admin_url, "b1") as url:
        await asyncio.to_thread(setup, url)
        for rep in range(p.repeats):
            for shape in SHAPES:
                for writers in p.writers:
                    for v in interleaved(VARIANTS, rep):
                        await asyncio.to_thread(reset, url, not ctx.smoke)
                        if v == "tracked":
                            r, relay = await _with_relay(
                                ctx, url, scripts[(shape, v)], writers, p, f"{shape}-{writers}"
                            )
                            relays.setdefault((shape, writers), []).append(relay)
                            listener_count = 0
                        else:
                            with Listener(url, asleep=v == "ringing") as listener:
                                r = await pgbench(
                                    url,
                                    scripts[(shape, v)],
                                    writers,
                                    seconds=p.seconds,
                                    transactions=p.transactions,
                                    limit_s=p.seconds + 60,
                                )
                            listener_count = listener.count
                        if r["failed"]:
                            raise RuntimeError(f"pgbench: {r['failed']:.0f} failed transactions")
                        tps.setdefault((shape, writers, v), []).append(r["tps"])
                        notified.setdefault((shape, writers, v), []).append(listener_count)
                        ctx.log(f"b1 rep {rep + 1} {shape} x{writers} {v}: {r['tps']:.0f} tx/s")
    for shape, rows in SHAPES.items():
        for writers in p.writers:
            bare = tps[(shape, writers, "bare")]
            tracked = tps[(shape, writers, "tracked")]
            idle = tps[(shape, writers, "idle")]
            relay_runs = relays[(shape, writers)]
            ringing = tps[(shape, writers, "ringing")]
            quiet = tps[(shape, writers, "quiet")]
            floor = tps[(shape, writers, "floor")]
            label = f"{shape} INSERT, {writers} writer{'s' if writers > 1 else ''}"
            unit = "tx/s" if rows == 1 else "stmt/s"
            result.metrics.append(
                Metric(f"{label}: tracked", unit, Spread.of(tracked), baseline=Spread.of(bare))
            )
            result.metrics.append(
                ratio_metric(f"{label}: tracked/bare", tracked, bare, TARGETS.get((shape, writers)))
            )
            result.metrics.append(
                ratio_metric(f"{label}: tracked, no relay running/bare", idle, bare)
            )
            result.metrics.append(
                Metric(
                    f"{label}: relay PostgreSQL CPU per 1,000 events",
                    "ms",
                    Spread.of([x["pg_cpu_ms_per_1000"] for x in relay_runs]),
                )
            )
            result.metrics.append(
                Metric(
                    f"{label}: relay process CPU per 1,000 events",
                    "ms",
                    Spread.of([x["py_cpu_ms_per_1000"] for x in relay_runs]),
                )
            )
            result.metrics.append(
                Metric(
                    f"{label}: events read {KEPT_UP_S:.0f} s after the run",
                    "%",
                    Spread.of([x["read_pct"] for x in relay_runs]),
                    target=Target(">=", 100.0),
                )
            )
            result.metrics.append(ratio_metric(f"{label}: ringing/bare", ringing, bare))
            result.metrics.append(ratio_metric(f"{label}: wake-up off/bare", quiet, bare))
            result.metrics.append(
                ratio_metric(f"{label}: floor (jsonb copy, no index)/bare", floor, bare)
            )
    result.raw = {
        "tps": [
            {
                "shape": s,
                "writers": w,
                "variant": v,
                "runs": x,
                "notifications": notified[(s, w, v)],
            }
            for (s, w, v), x in tps.items()
        ],
        "relay": [{"shape": s, "writers": w, "runs": x} for (s, w), x in relays.items()],
    }
    return result
