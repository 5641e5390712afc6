"""Running ``pgbench`` (a C client: load that does not eat the CPU being measured)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path

PGBENCH = "pgbench"
_TPS_RE = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_FAILED_RE = re.compile(r"number of failed transactions: (\d+)")


async def pgbench(
    url: str,
    script: Path,
    clients: int,
    *,
    seconds: float = 0,
    transactions: int = 0,
    rate: float | None = None,
    define: Mapping[str, str | int] | None = None,
    log_prefix: Path | None = None,
    limit_s: float = 120.0,
) -> dict[str, float]:
    """One run, prepared statements, no vacuum; returns tps and failed transactions.

    ``seconds`` (``-T``) or ``transactions`` per client (``-t``); ``rate``
    (``-R``) schedules transactions by the clock (open loop, latency counted
    from the schedule); ``log_prefix`` (``-l``) logs every transaction.
    """
    cmd = [PGBENCH, "-n", "-M", "prepared", "-f", str(script), "-c", str(clients)]
    cmd += ["-j", str(min(clients, 2))]
    cmd += ["-T", str(int(seconds))] if seconds else ["-t", str(transactions)]
    if rate:
        cmd += ["-R", str(rate)]
    for k, v in (define or {}).items():
        cmd += ["-D", f"{k}={v}"]
    if log_prefix:
        cmd += ["-l", f"--log-prefix={log_prefix}"]
    cmd.append(url)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"pgbench did not finish within {limit_s:.0f}s") from None
    text = out.decode() + err.decode()
    m = _TPS_RE.search(text)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {text.strip()[-500:]}")
    failed = _FAILED_RE.search(text)
    return {"tps": float(m.group(1)), "failed": float(failed.group(1)) if failed else 0.0}


def transaction_log(prefix: Path) -> list[tuple[int, int, int, int]]:
    """Every logged transaction: (client, number from 1, scheduled ns, completed ns).

    Log lines are ``client_id transaction_no time script_no time_epoch time_us
    [schedule_lag]``: ``time_epoch``/``time_us`` is when the transaction
    completed (its COMMIT returned), Unix time; with ``-R``, ``time`` (µs) is
    measured from the scheduled start, so the schedule is completion - time.
    """
    rows = []
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        for line in path.read_text().splitlines():
            f = line.split()
            done_ns = int(f[4]) * 1_000_000_000 + int(f[5]) * 1000
            rows.append((int(f[0]), int(f[1]), done_ns - int(f[2]) * 1000, done_ns))
    return rows
