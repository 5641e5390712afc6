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
