"""The environment a run measured: machine, Postgres, packages, commit.

Numbers from this suite mean little without it: two cores shared by the
server, Postgres and the load generator behave nothing like a big box, and
``synchronous_commit`` alone changes B1 by an order of magnitude.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

PACKAGES = (
    "outbox-relay",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "httpx",
    "nats-py",
    "aio-pika",
)
PG_SETTINGS = (
    "synchronous_commit",
    "fsync",
    "shared_buffers",
    "max_connections",
    "wal_level",
    "max_wal_size",
    "work_mem",
)
ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def collect(admin_url: str) -> dict[str, Any]:
    """Everything a reader needs to judge (or repeat) the numbers."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT version()").fetchone()
        pg_version = str(row[0]) if row else "unknown"
        settings = {}
        for name in PG_SETTINGS:
            r = conn.execute(
                "SELECT setting, unit FROM pg_settings WHERE name = %s", (name,)
            ).fetchone()
            if r:
                settings[name] = r[0] + (f" ({r[1]})" if r[1] else "")
        shown = conn.execute("SHOW shared_buffers").fetchone()
        if shown:
            settings["shared_buffers"] = str(shown[0])
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_mb": _mem_total_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load_average(),
        "postgres": {"version": pg_version, "settings": settings},
        "packages": versions,
        "git": {
            "commit": _git("rev-parse", "HEAD"),
            "dirty": bool(status and status != "unknown"),
        },
    }
