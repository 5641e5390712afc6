"""When the feed loop reads next while events flow (issue 22 item 3).

At rest the loop sleeps on the doorbell (relay/doorbell.py); this is only
the busy side. A read costs the database a fixed part (a statement, a
snapshot) plus a part per row, so fewer, fuller reads are cheaper per event;
what bounds how long a read may wait is the latency an event may pay for it.
So, measured from the START of the previous read:

- read after ``target / rate`` (when ``target`` rows are likely, ``rate``
  the recent events per second: no point waiting for more than a batch),
- but never later than ``budget`` after it (the latency budget: an event
  committed just after a read waits at most about this long for the next):
  1 ms, or ``busy_budget`` 2 ms once the rate passes ``busy_rate`` (2,000
  events/s), where halving the reads matters to writers (B1 at ~11,000
  events/s) and no latency target is set;
- and never sooner than ``floor`` after it;
- and after a read that took longer than that, still pause ``pause``, so a
  database slowed down by load is not read back to back;
- and when reads come back empty (events have just stopped, or come a few
  ms apart: the loop keeps polling for a while before it falls asleep on
  the doorbell, relay/runtime.py), after ``grace`` empty reads in a row the
  interval doubles with each further one, up to ``idle_max``. Polling at the
  budget all through the quiet window before sleeping was most of an idle
  relay's CPU (issue 22). An event arriving then waits at most ``idle_max``
  for the next read; at 1,000 events/s four empty 1 ms reads in a row
  happen ~2% of the time and cost one 2 ms interval.

The defaults are set by B2's targets (p50 <= 2 ms, p99 <= 10 ms commit ->
client at 1,000 events/s x 100 clients): with the 2 ms budget p50 was
2.4-2.5 ms there (BENCHMARKS.md, issue 22), a 1 ms budget takes ~0.5 ms off.
"""

from __future__ import annotations

# Defaults (seconds, rows).
LATENCY_BUDGET = 0.001
# From this rate on (events/s, smoothed) the budget is BUSY_BUDGET instead.
BUSY_RATE = 2000.0
BUSY_BUDGET = 0.002
FLOOR = 0.001
PAUSE = 0.0005
# Empty reads in a row before the interval starts to double, and its cap.
GRACE = 3
IDLE_MAX = 0.010
# How much of the rate estimate each read replaces (an exponential average).
SMOOTHING = 0.3


class Cadence:
    """Tracks the event rate over reads and says how long to wait before the next."""

    __slots__ = (
        "_last_start",
        "budget",
        "busy_budget",
        "busy_rate",
        "empty",
        "floor",
        "grace",
        "idle_max",
        "pause",
        "rate",
        "target",
    )

    def __init__(
        self,
        target: int,
        *,
        budget: float = LATENCY_BUDGET,
        busy_rate: float = BUSY_RATE,
        busy_budget: float = BUSY_BUDGET,
        floor: float = FLOOR,
        pause: float = PAUSE,
        grace: int = GRACE,
        idle_max: float = IDLE_MAX,
    ) -> None:
        self.target = max(1, target)
        self.budget = budget
        self.busy_rate = busy_rate
        self.busy_budget = max(busy_budget, budget)
        self.floor = min(floor, budget)
        self.pause = pause
        self.grace = grace
        self.idle_max = max(idle_max, self.budget)
        self.empty = 0  # empty reads in a row
        self.rate = 0.0  # events per second, smoothed
        self._last_start: float | None = None

    def observe(self, started: float, rows: int) -> None:
        """A read that started at ``started`` (monotonic) returned ``rows``:
        the events committed since the previous read started."""
        if self._last_start is not None and started > self._last_start:
            now_rate = rows / (started - self._last_start)
            self.rate += SMOOTHING * (now_rate - self.rate)
        self._last_start = started
        self.empty = 0 if rows else self.empty + 1

    def interval(self) -> float:
        """Start to start: when ``target`` rows are likely, within [floor, budget];
        past ``grace`` empty reads in a row, doubling up to ``idle_max``."""
        if self.empty > self.grace:
            return min(self.idle_max, self.budget * 2.0 ** min(self.empty - self.grace, 16))
        if self.rate <= 0.0:
            return self.budget
        budget = self.busy_budget if self.rate >= self.busy_rate else self.budget
        return min(budget, max(self.floor, self.target / self.rate))

    def delay(self, now: float) -> float:
        """Seconds to wait at ``now`` (monotonic) before the next read."""
        if self._last_start is None:
            return self.pause
        return max(self.pause, self._last_start + self.interval() - now)
