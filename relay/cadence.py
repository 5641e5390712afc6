"""When the feed loop reads next while events flow (issue 22 item 3).

At rest the loop sleeps on the doorbell (relay/doorbell.py); this is only
the busy side. A read costs the database a fixed part (a statement, a
snapshot) plus a part per row, so fewer, fuller reads are cheaper per event;
what bounds how long a read may wait is the latency an event may pay for it.
So, measured from the START of the previous read:

- read after ``target / rate`` (when ``target`` rows are likely, ``rate``
  the recent events per second: no point waiting for more than a batch),
- but never later than ``budget`` after it (the latency budget: an event
  committed just after a read waits at most about this long for the next),
- and never sooner than ``floor`` after it;
- and after a read that took longer than that, still pause ``pause``, so a
  database slowed down by load is not read back to back.

The defaults keep B2's targets (p50 <= 2 ms, p99 <= 10 ms commit -> client
at 1,000 events/s): ``budget`` 2 ms adds at most ~1 ms on average.
"""

from __future__ import annotations

# Defaults (seconds, rows).
LATENCY_BUDGET = 0.002
FLOOR = 0.001
PAUSE = 0.0005
# How much of the rate estimate each read replaces (an exponential average).
SMOOTHING = 0.3


class Cadence:
    """Tracks the event rate over reads and says how long to wait before the next."""

    __slots__ = ("_last_start", "budget", "floor", "pause", "rate", "target")

    def __init__(
        self,
        target: int,
        *,
        budget: float = LATENCY_BUDGET,
        floor: float = FLOOR,
        pause: float = PAUSE,
    ) -> None:
        self.target = max(1, target)
        self.budget = budget
        self.floor = min(floor, budget)
        self.pause = pause
        self.rate = 0.0  # events per second, smoothed
        self._last_start: float | None = None

    def observe(self, started: float, rows: int) -> None:
        """A read that started at ``started`` (monotonic) returned ``rows``:
        the events committed since the previous read started."""
        if self._last_start is not None and started > self._last_start:
            now_rate = rows / (started - self._last_start)
            self.rate += SMOOTHING * (now_rate - self.rate)
        self._last_start = started

    def interval(self) -> float:
        """Start to start: when ``target`` rows are likely, within [floor, budget]."""
        if self.rate <= 0.0:
            return self.budget
        return min(self.budget, max(self.floor, self.target / self.rate))

    def delay(self, now: float) -> float:
        """Seconds to wait at ``now`` (monotonic) before the next read."""
        if self._last_start is None:
            return self.pause
        return max(self.pause, self._last_start + self.interval() - now)
