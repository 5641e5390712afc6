"""The feed loop's busy cadence (relay/cadence.py): bounded by the latency budget."""

from __future__ import annotations

from outbox.relay.cadence import Cadence


def test_no_rate_yet_waits_the_budget_from_the_last_start() -> None:
    c = Cadence(1000, budget=0.002, floor=0.001, pause=0.0005)
    c.observe(10.0, 0)
    assert c.interval() == 0.002
    assert abs(c.delay(10.0005) - 0.0015) < 1e-9


def test_low_rate_reads_at_the_budget_high_rate_when_a_batch_is_likely() -> None:
    c = Cadence(100, budget=0.002, floor=0.001)
    t = 0.0
    c.observe(t, 0)
    for _ in range(50):  # 1,000 events/s: 100 rows take 100 ms > budget
        t += 0.002
        c.observe(t, 2)
    assert c.interval() == 0.002
    for _ in range(50):  # 100,000 events/s: 100 rows in 1 ms
        t += 0.002
        c.observe(t, 200)
    assert abs(c.interval() - 0.001) < 1e-6  # the floor (the rate is a smoothed estimate)
    c2 = Cadence(100, budget=0.002, floor=0.0001)
    c2.observe(0.0, 0)
    for i in range(1, 60):
        c2.observe(i * 0.002, 150)  # 75,000 events/s
    assert abs(c2.interval() - 100 / c2.rate) < 1e-12
    assert c2.interval() < 0.002


def test_a_slow_read_still_pauses_never_back_to_back() -> None:
    c = Cadence(1000, budget=0.002, pause=0.0005)
    c.observe(5.0, 10)
    assert c.delay(5.050) == 0.0005  # the read took 50 ms: pause, then read


def test_the_wait_never_exceeds_the_budget() -> None:
    c = Cadence(1000, budget=0.002)
    c.observe(1.0, 3)
    c.observe(1.5, 0)  # a long quiet gap drives the rate down
    for now in (1.5, 1.5001, 1.501):
        assert c.delay(now) <= 0.002 + 1e-9


def test_empty_reads_past_the_grace_back_off_up_to_the_cap() -> None:
    c = Cadence(1000, budget=0.002, grace=2, idle_max=0.010)
    t = 0.0
    c.observe(t, 5)
    intervals = []
    for _ in range(8):
        t += 0.002
        c.observe(t, 0)
        intervals.append(round(c.interval(), 6))
    assert intervals == [0.002, 0.002, 0.004, 0.008, 0.010, 0.010, 0.010, 0.010]
    c.observe(t + 0.01, 1)  # an event: back to the budget at once
    assert c.interval() <= 0.002


def test_an_empty_read_now_and_then_keeps_the_budget() -> None:
    """At 1,000 events/s a 2 ms read is empty 13% of the time: no back-off."""
    c = Cadence(1000, budget=0.002)
    t = 0.0
    for rows in (2, 0, 3, 0, 0, 1, 2):
        t += 0.002
        c.observe(t, rows)
        assert c.interval() <= 0.002
