"""Where the embedded PostgreSQL starter looks for server binaries and its
data directory, as documented (starting a cluster is tests/e2e/test_demo_embedded.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from outbox.cli.embedded import default_dir, find_bindir

BINDIR = find_bindir()


def test_binaries_and_directory_are_found_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert find_bindir({"OUTBOX_PG_BINDIR": str(tmp_path)}) is None
    assert default_dir({"OUTBOX_EMBEDDED_DIR": str(tmp_path / "x")}) == tmp_path / "x"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "outbox-relay" / "pg"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_dir({}) == Path("/var/lib/outbox-relay/pg")
    if BINDIR is not None:
        assert find_bindir({"OUTBOX_PG_BINDIR": str(BINDIR)}) == BINDIR
