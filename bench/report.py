"""What a scenario returns, the printed table and the JSON document."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.stats import Spread


@dataclass(frozen=True)
class Target:
    """A target from issue 8: ``measured <op> value``."""

    op: str  # ">=", "<=" or "<"
    value: float

    def met(self, x: float) -> bool | None:
        if math.isnan(x):
            return None
        if self.op == ">=":
            return x >= self.value
        if self.op == "<=":
            return x <= self.value
        return x < self.value

    def __str__(self) -> str:
        return f"{ {'>=': '≥', '<=': '≤'}.get(self.op, self.op) } {_num(self.value)}"


@dataclass(frozen=True)
class Metric:
    """One line of the table: a measured spread, optionally its baseline and target."""

    name: str
    unit: str
    measured: Spread
    target: Target | None = None
    baseline: Spread | None = None
    note: str = ""

    @property
    def passed(self) -> bool | None:
        return self.target.met(self.measured.median) if self.target else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "measured": self.measured.as_dict(),
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "target": {"op": self.target.op, "value": self.target.value} if self.target else None,
            "passed": self.passed,
            "note": self.note,
        }


def ratio_metric(
    name: str, ours: list[float], base: list[float], target: Target | None = None
) -> Metric:
    """ours/base per repetition (each pair measured side by side), as a spread."""
    return Metric(
        name,
        "ratio",
        Spread.of([a / b for a, b in zip(ours, base, strict=True)]),
        target=target,
    )


def rate_vs_baseline(
    label: str,
    unit: str,
    ours: list[dict[str, Any]],
    base: list[dict[str, Any]],
    targets: tuple[Target, Target],
    note: str = "",
) -> list[Metric]:
    """Two lines from paired runs' ``rate``: ours (baseline beside it), and ours/baseline."""
    a = [r["rate"] for r in ours]
    b = [r["rate"] for r in base]
    return [
        Metric(f"{label}: {unit}", unit, Spread.of(a), targets[0], Spread.of(b), note),
        ratio_metric(f"{label}: outbox/bare", a, b, targets[1]),
    ]


@dataclass
class ScenarioResult:
    key: str  # "b1"
    title: str
    metrics: list[Metric] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "params": self.params,
            "metrics": [m.as_dict() for m in self.metrics],
            "raw": self.raw,
            "seconds": round(self.seconds, 1),
            "error": self.error,
        }


def _num(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    ax = abs(x)
    if ax >= 10_000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def spread_text(s: Spread) -> str:
    if s.n <= 1:
        return _num(s.median)
    return f"{_num(s.median)} ({_num(s.low)} to {_num(s.high)})"


SMOKE_VERDICT = "smoke: sizes too small for targets"


def table(results: list[ScenarioResult], *, markdown: bool = False, smoke: bool = False) -> str:
    """Every metric as target vs measured; median (min to max) over repetitions.

    A smoke run's tiny sizes measure nothing a target could judge: its
    verdicts say so instead of "met" or "MISSED".
    """
    head = ["scenario", "metric", "unit", "target", "measured", "baseline", "verdict"]
    rows: list[list[str]] = []
    for r in results:
        if r.error:
            error = r.error if markdown or len(r.error) <= 70 else r.error[:67] + "..."
            rows.append([r.key.upper(), f"FAILED: {error}", "", "", "", "", "ERROR"])
        for m in r.metrics:
            verdict = {True: "met", False: "MISSED", None: ""}[m.passed]
            if smoke and m.passed is not None:
                verdict = SMOKE_VERDICT
            rows.append(
                [
                    r.key.upper(),
                    m.name,
                    m.unit,
                    str(m.target) if m.target else "",
                    spread_text(m.measured),
                    spread_text(m.baseline) if m.baseline else "",
                    verdict,
                ]
            )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)
