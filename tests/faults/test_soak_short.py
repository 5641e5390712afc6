"""The CI version of the soak (``python -m soak --short``): under a minute of
steady load with a receiver failing 20% and resuming WebSocket clients; the
command exits non-zero when the oracle fails."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.relay import ROOT


def test_short_soak_passes_the_oracle() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_") or k.endswith("URL")}
    r = subprocess.run(
        [sys.executable, "-m", "soak", "--short"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "oracle:             PASS" in r.stdout
    for line in ("events committed:", "delivered:", "repeated:", "p99", "RSS slope:"):
        assert line in r.stdout, r.stdout
    assert "Traceback" not in r.stderr, r.stderr


def test_bad_flags_name_the_flag() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "soak", "--rate", "fast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "--rate" in r.stderr and "Traceback" not in r.stderr
