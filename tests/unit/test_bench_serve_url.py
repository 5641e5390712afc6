"""bench.system.serve_url: BENCH_SERVE_HOST moves only the server's connection."""

from __future__ import annotations

import pytest
from psycopg import conninfo

from bench.system import serve_url

URL = "postgresql://postgres@127.0.0.1:5432/bench_b1_x"


def test_without_the_variable_the_url_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_SERVE_HOST", raising=False)
    assert serve_url(URL) == URL


def test_the_variable_replaces_the_host_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_SERVE_HOST", "/var/run/postgresql")
    info = conninfo.conninfo_to_dict(serve_url(URL))
    assert info == {
        "host": "/var/run/postgresql",
        "port": "5432",
        "user": "postgres",
        "dbname": "bench_b1_x",
    }
