"""``python -m soak``: the whole system under steady load for minutes, judged
by the fault suite's oracle (tests/faults/harness.py), with end-to-end
latency and the server's memory over time. See docs/guarantees.md."""
