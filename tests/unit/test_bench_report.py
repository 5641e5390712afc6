"""bench/report.py: the printed table (no database needed)."""

from __future__ import annotations

from bench.report import SMOKE_VERDICT, Metric, ScenarioResult, Target, table
from bench.stats import Spread


def test_smoke_tables_judge_no_target() -> None:
    """Tiny sizes measure nothing: a smoke table says so instead of MISSED."""
    missed = Metric("tps", "tx/s", Spread(1.0, 1.0, 1.0, 1), Target(">=", 1000.0))
    met = Metric("p99", "ms", Spread(1.0, 1.0, 1.0, 1), Target("<=", 20.0))
    results = [ScenarioResult("b1", "writes", [missed, met])]
    assert "MISSED" in table(results)
    smoke = table(results, smoke=True)
    assert "MISSED" not in smoke
    assert not any(line.rstrip().endswith(" met") for line in smoke.splitlines())
    assert smoke.count(SMOKE_VERDICT) == 2
