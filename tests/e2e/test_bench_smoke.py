"""The benchmark harness does not rot: ``python -m bench --smoke`` end to end.

A real run (real Postgres, real ``outbox serve`` subprocesses, real sockets)
with tiny sizes; the assertions check that every scenario produced numbers
that are consistent with what it did, not particular values: the smoke
sizes measure nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.support.db import ADMIN_URL
from tests.support.paths import ROOT

SCENARIOS = ("b1", "b2", "b3", "b4", "b4k", "b5", "b6", "b7")

pytestmark = [
    pytest.mark.slow,
    # B1 and B2 drive the database with pgbench (PostgreSQL's client tools).
    pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed"),
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = dict(os.environ, BENCH_ADMIN_URL=ADMIN_URL)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=330,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["_stdout"] = proc.stdout
    return doc


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@pytest.mark.timeout(400)
def test_environment_is_recorded(smoke: dict[str, Any]) -> None:
    env = smoke["environment"]
    assert env["cores"] >= 1
    assert env["postgres"]["version"].startswith("PostgreSQL")
    for name in ("synchronous_commit", "shared_buffers", "max_connections"):
        assert env["postgres"]["settings"][name]
    assert env["packages"]["psycopg"] and env["packages"]["uvicorn"]
    assert len(env["git"]["commit"]) == 40 or env["git"]["commit"] == "unknown"
    assert smoke["smoke"] is True


@pytest.mark.timeout(400)
def test_every_scenario_reports_metrics(smoke: dict[str, Any]) -> None:
    assert set(smoke["scenarios"]) == set(SCENARIOS)
    for key, sc in smoke["scenarios"].items():
        assert sc["error"] is None, (key, sc["error"])
        assert sc["metrics"], key
        for m in sc["metrics"]:
            assert _finite(m["measured"]["median"]), (key, m)
            assert m["measured"]["min"] <= m["measured"]["median"] <= m["measured"]["max"]
            if m["target"] is not None:
                assert m["passed"] in (True, False)
        # The printed table names every scenario.
        assert key.upper() in smoke["_stdout"]


@pytest.mark.timeout(400)
def test_b1_counts_transactions_of_every_variant(smoke: dict[str, Any]) -> None:
    runs = smoke["scenarios"]["b1"]["raw"]["tps"]
    assert {r["variant"] for r in runs} == {"bare", "tracked", "idle", "ringing", "quiet", "floor"}
    assert {r["shape"] for r in runs} == {"1-row", "100-row"}
    # "tracked" ran a real outbox serve, which read every event in time.
    relay = smoke["scenarios"]["b1"]["raw"]["relay"]
    assert {r["shape"] for r in relay} == {"1-row", "100-row"}
    for r in relay:
        for run in r["runs"]:
            assert run["events"] > 0
            assert run["read_pct"] == 100.0, run
            assert run["pg_cpu_ms_per_1000"] >= 0
    assert all(v > 0 for r in runs for v in r["runs"])
    # Only the variant with a sleeping relay rings the doorbell: a NOTIFY per
    # commit (one per transaction, whatever its size).
    for r in runs:
        transactions = r["writers"] * 10  # smoke: pgbench -t 10 per writer
        expected = transactions if r["variant"] == "ringing" else 0
        assert r["notifications"] == [expected], r


@pytest.mark.timeout(400)
def test_b2_every_event_arrives_with_ordered_percentiles(smoke: dict[str, Any]) -> None:
    for group in smoke["scenarios"]["b2"]["raw"]["runs"]:
        for r in group["runs"]:
            assert r["received"] == r["events"] > 0
            lat = r["commit_to_receipt_ms"]
            assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 10_000
            if group["variant"] == "ws":
                # Over the relay an event cannot arrive before its commit.
                assert lat["p50"] > 0
            if group["variant"] in ("ws", "bare") and group["clients"] > 1:
                assert r["sink_messages_min"] == r["events"]


@pytest.mark.timeout(400)
def test_b3_every_client_gets_every_message(smoke: dict[str, Any]) -> None:
    for group in smoke["scenarios"]["b3"]["raw"]["runs"]:
        for r in group["runs"]:
            assert r["delivered"] == r["expected"] == r["events"] * r["clients"]
            assert r["closed_early"] == 0
            assert r["rate"] > 0


@pytest.mark.timeout(400)
def test_b4_every_delivery_succeeds(smoke: dict[str, Any]) -> None:
    for group in smoke["scenarios"]["b4"]["raw"]["runs"]:
        for r in group["runs"]:
            assert r["success"] == r["n"] > 0
            if group["variant"] == "bare" and group["receiver"] != "ok":
                assert r["attempts"] > r["n"]  # the failing receiver really failed


@pytest.mark.timeout(400)
def test_b4k_ordered_runs_finish_and_the_failing_key_fails(smoke: dict[str, Any]) -> None:
    runs = smoke["scenarios"]["b4k"]["raw"]["runs"]
    for variant in ("unordered", "key100", "key1"):
        assert all(r["success"] == r["n"] > 0 and r["failed"] == 0 for r in runs[variant])
    for r in runs["failing"]:  # one key of 100 always fails; the others all succeed
        assert r["failed"] > 0 and r["success"] == r["others"] == r["n"] - r["failed"]


@pytest.mark.timeout(400)
def test_b5_reads_and_drains_the_whole_backlog(smoke: dict[str, Any]) -> None:
    sc = smoke["scenarios"]["b5"]
    n = sc["params"]["events"]
    raw = sc["raw"]
    assert all(r["events"] == n for r in raw["reads"]["feed"] + raw["reads"]["naive"])
    assert raw["api_read"]["events"] == n
    assert raw["ws_drain"]["events"] == n and not raw["ws_drain"]["closed_early"]
    assert raw["webhook_drain"]["deliveries"] == n // sc["params"]["hook_every"]
    assert 10 < raw["server_peak_rss_mb"] < 4000


@pytest.mark.timeout(400)
def test_b6_every_event_reaches_both_brokers(smoke: dict[str, Any]) -> None:
    sc = smoke["scenarios"]["b6"]
    n = sc["params"]["events"]
    raw = sc["raw"]
    for kind in ("nats", "amqp"):
        runs = raw[f"{kind}_throughput"]
        assert all(r["events"] == n and r["rate"] > 0 for r in runs["outbox"] + runs["bare"])
        for variant in ("outbox", "direct"):
            for lat in raw[f"{kind}_latency"][variant]:
                assert lat["received"] == lat["events"] > 0, (kind, variant, lat)
                ms = lat["commit_to_arrival_ms"]
                assert 0 < ms["p50"] <= ms["p99"] <= ms["max"] < 10_000
        back = raw[f"{kind}_backlog"]
        assert back["events"] == min(sc["params"]["backlog"], sc["params"]["amqp_backlog"]) or (
            kind == "nats" and back["events"] == sc["params"]["backlog"]
        )
        assert 10 < back["server_peak_rss_mb"] < 4000


@pytest.mark.timeout(400)
def test_b7_traced_writes_store_it_and_every_span_is_exported(smoke: dict[str, Any]) -> None:
    raw = smoke["scenarios"]["b7"]["raw"]
    for r in raw["write"]:
        for events, traced in r["events_traced"]:
            assert events > 0 or r["variant"] == "bare"
            assert traced == (events if r["variant"] == "traced" else 0), r
    for group in raw["relay"]:
        for r in group["runs"]:
            assert r["success"] == r["n"] > 0
            if group["variant"] == "exporting traced":
                assert r["spans_exported"] == 2 * r["n"]  # dispatch + attempt per delivery
    assert all(
        s["by_name"] == {"dispatch": s["spans"] // 2, "POST": s["spans"] // 2} for s in raw["spans"]
    )
    assert raw["stray_spans_after"] == 0  # the traceless and plain runs exported nothing
