"""B4's pipeline alone, profiled: where ``outbox serve`` spends a delivery's CPU.

``python -m bench.b4_profile [--deliveries N] [--failing] [--spy DIR] [--rounds K]``

One ``outbox serve`` on a fresh bench database, one receiver (``bench.receiver``,
200 always, or 500 to every 5th request with ``--failing``), B4's fast retry
schedule. After a warm-up round, K rounds of N deliveries each are published
and drained (as B4 does); for each: the rate, and the CPU per delivery of
the ``serve`` process and of its PostgreSQL backends (``/proc``), and the
longest pauses between two sends (a stalled event loop shows there). With
``--spy DIR``, py-spy samples the server (blocking, 250 Hz, idle excluded)
during the measured rounds only, into ``DIR/b4-profile.txt``; summarise it
with ``python -m bench.hotspots``. Sampling costs the server CPU: rates with
--spy are not B4's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.b4_webhooks import FAST_RETRIES, run_outbox
from bench.context import Context
from bench.pg import admin_url_from_env, bench_database
from bench.procs import Child, free_port, helper, running
from bench.system import create_webhook, outbox_server

# The last round's deliveries: from the events' commit to the first success,
# the span of the successes, the longest pause between two successes.
GAPS = """
WITH last AS (
    SELECT d.delivered_at, e.created_at FROM outbox.deliveries d
    JOIN outbox.events e ON e.id = d.event_id
    WHERE e.id > (SELECT max(id) FROM outbox.events) - %s AND d.status = 'success'
), g AS (
    SELECT delivered_at - lag(delivered_at) OVER (ORDER BY delivered_at) AS gap FROM last
)
SELECT extract(epoch FROM (SELECT min(delivered_at) - min(created_at) FROM last)) * 1000,
       extract(epoch FROM (SELECT max(delivered_at) - min(delivered_at) FROM last)) * 1000,
       extract(epoch FROM (SELECT max(gap) FROM g)) * 1000
"""

# The last round's attempts: the longest pauses between two attempt starts
# (delivered_at above is the flush's time; these are the sends themselves).
ATTEMPT_GAPS = """
WITH a AS (
    SELECT a.started_at FROM outbox.delivery_attempts a
    JOIN outbox.deliveries d ON d.id = a.delivery_id
    WHERE d.event_id > (SELECT max(id) FROM outbox.events) - %s
), g AS (
    SELECT started_at - lag(started_at) OVER (ORDER BY started_at) AS gap FROM a
)
SELECT coalesce(string_agg(round(extract(epoch FROM gap) * 1000)::text, ', '
                           ORDER BY gap DESC), '-')
FROM (SELECT gap FROM g WHERE gap IS NOT NULL ORDER BY gap DESC LIMIT 3) top
"""

DETAIL = """
WITH last AS (
    SELECT d.id, d.event_id, d.attempt_number, d.delivered_at, d.created_at, d.status,
           d.delivered_at - lag(d.delivered_at) OVER (ORDER BY d.delivered_at) AS gap
    FROM outbox.deliveries d
    WHERE d.event_id > (SELECT max(id) FROM outbox.events) - %s
)
SELECT l.id, l.event_id, l.attempt_number, l.gap, l.created_at, l.delivered_at,
       (SELECT string_agg(a.attempt_number || ':' || a.outcome || '@' || a.started_at::time, ' '
                          ORDER BY a.id)
        FROM outbox.delivery_attempts a WHERE a.delivery_id = l.id)
FROM last l ORDER BY l.status = 'failed' DESC, l.gap DESC NULLS LAST LIMIT 3
"""

# pg_stat_statements (needs the extension on the admin server): the time
# of each statement of the bench database, per delivery.
STATEMENTS = """
SELECT s.calls, s.total_exec_time + s.total_plan_time, s.rows,
       left(regexp_replace(s.query, '\\s+', ' ', 'g'), 110)
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = %s
ORDER BY 2 DESC LIMIT 15
"""


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="b4-profile-"))
    print("logs in", work, flush=True)
    ctx = Context(admin_url=admin_url_from_env(), smoke=False, workdir=work)
    port = free_port()
    rx = Child(
        "receiver",
        helper("receiver", "--port", str(port), "--fail-every", "5" if args.failing else "0"),
        work / "receiver.log",
    )
    with bench_database(ctx.admin_url, "b4p") as db_url:
        server = outbox_server(
            ctx, db_url, "b4p", OUTBOX_RETRY_SCHEDULE=FAST_RETRIES, OUTBOX_WEBHOOK_TIMEOUT="10"
        )
        async with running(rx), server:
            hook = await create_webhook(server, f"http://127.0.0.1:{port}/hook", "bench.p", "p")
            await run_outbox(db_url, [server.pid], hook, "bench.p", 1000, 120)  # warm-up
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                await c.execute("ANALYZE")
            if args.statements:
                async with await psycopg.AsyncConnection.connect(
                    ctx.admin_url, autocommit=True
                ) as c:
                    await c.execute("SELECT pg_stat_statements_reset()")
            spy = None
            if args.spy:
                args.spy.mkdir(parents=True, exist_ok=True)
                exe = Path(sys.executable).with_name("py-spy")
                spy = await asyncio.create_subprocess_exec(
                    str(exe), "record", "--pid", str(server.pid), "--format", "raw",
                    "--rate", "250", "--output", str(args.spy / "b4-profile.txt"),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                await asyncio.sleep(1.0)  # py-spy attaches
            try:
                for i in range(args.rounds):
                    pids = [server.pid]
                    r = await run_outbox(db_url, pids, hook, "bench.p", args.deliveries, 300)
                    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                        cur = await c.execute(GAPS, (args.deliveries,))
                        gaps = await cur.fetchone()
                        assert gaps is not None
                        cur = await c.execute(ATTEMPT_GAPS, (args.deliveries,))
                        sends = await cur.fetchone()
                        assert sends is not None
                        if args.detail:
                            cur = await c.execute(DETAIL, (args.deliveries,))
                            for row in await cur.fetchall():
                                print("   ", *row)
                    print(
                        f"round {i + 1}: {r['rate']:,.0f} deliveries/s,"
                        f" serve {r['serve_cpu_us']:.0f} us/delivery,"
                        f" PostgreSQL {r['pg_cpu_us']:.0f} us/delivery,"
                        f" {r['failed']} failed; first delivery {gaps[0]:.0f} ms after"
                        f" the publish, delivered over {gaps[1]:.0f} ms, longest pause"
                        f" {gaps[2]:.0f} ms between successes; longest pauses between"
                        f" attempt starts {sends[0]} ms",
                        flush=True,
                    )
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    await asyncio.wait_for(spy.wait(), 60)
            if args.statements:
                n = args.rounds * args.deliveries
                async with await psycopg.AsyncConnection.connect(
                    ctx.admin_url, autocommit=True
                ) as c:
                    cur = await c.execute(STATEMENTS, (conninfo_to_dict(db_url)["dbname"],))
                    print("calls  us/delivery (exec+plan)  rows  statement")
                    for calls, total_ms, rows, text in await cur.fetchall():
                        print(f"{calls:6d} {total_ms * 1000 / n:8.1f} {rows:7d}  {text}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.b4_profile")
    p.add_argument("--deliveries", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--failing", action="store_true")
    p.add_argument("--spy", type=Path)
    p.add_argument("--statements", action="store_true", help="pg_stat_statements top list")
    p.add_argument("--detail", action="store_true", help="the deliveries after the longest pauses")
    asyncio.run(main(p.parse_args()))
