"""``settle_heap`` (cli/server.py): what startup left alive leaves the
collector's full passes; what comes later is collected as before. In a
subprocess: the freeze is for a process's whole life, not a test's."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
import outbox.cli.serve  # what `outbox serve` has imported by then
from outbox.cli.server import settle_heap

class Cycle:
    def __init__(self):
        self.me = self

before = len(gc.get_objects())
settle_heap()
frozen = gc.get_freeze_count()
Cycle(); Cycle()  # garbage made after startup: a reference cycle each
collected = gc.collect()
print(before, frozen, collected, len(gc.get_objects()))
"""


def test_startup_objects_leave_full_collections_later_garbage_does_not() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    before, frozen, collected, tracked = out.split()
    assert int(frozen) > 10_000  # the imported modules, classes and functions
    assert int(frozen) >= int(before) // 2
    assert int(collected) >= 2  # the later cycles are still found and freed
    assert int(tracked) < int(frozen) // 10  # what a full pass still walks
