"""The server's resident memory over a run, and whether it stays flat."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bench.procs import rss_mb


@dataclass
class RssSampler:
    pid: int
    every: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MB)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            self.samples.append((loop.time() - t0, rss_mb(self.pid)))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.every)
                return
            except TimeoutError:
                continue

    def slope_mb_per_min(self, skip: float = 0.25) -> float:
        """Least-squares slope after the first ``skip`` of the run (warm-up:
        pools, caches and the allocator settle first)."""
        pts = self.samples[int(len(self.samples) * skip) :]
        if len(pts) < 2:
            return 0.0
        n = len(pts)
        mx = sum(t for t, _ in pts) / n
        my = sum(m for _, m in pts) / n
        var = sum((t - mx) ** 2 for t, _ in pts)
        if var == 0:
            return 0.0
        cov = sum((t - mx) * (m - my) for t, m in pts)
        return cov / var * 60.0
