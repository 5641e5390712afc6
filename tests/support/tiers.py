"""The test tiers (a pytest plugin): every test file lives in one tier folder.

- ``tests/unit/``   no PostgreSQL, nothing but this process (loopback test
                    peers allowed): cursor, matcher, signing, SSRF checks,
                    duration/schedule parsing, WebSocket framing, the page.
- ``tests/db/``     needs PostgreSQL: the library and relay components
                    in-process against a real server.
- ``tests/e2e/``    the product as a user runs it: the whole app under a real
                    uvicorn, ``outbox``/``python -m`` subprocesses, a browser.
- ``tests/faults/`` the whole system under injected faults, one oracle.

Each test gets its tier's marker (``-m unit`` etc.). A unit test that asks
for a database fixture, directly or through another fixture, is a usage
error at collection, so the unit tier cannot reach PostgreSQL by accident.
A test file outside the tier folders is an error too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.db import DB_FIXTURES

TESTS = Path(__file__).resolve().parent.parent
TIERS = ("unit", "db", "e2e", "faults")
# Shown in the error when they are in the way (detection is by DB_FIXTURES alone).
NAMED = frozenset({"db_url", "conn", "aconn", "settings"})


def tier_of(path: Path) -> str | None:
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems: list[str] = []
    for item in items:
        tier = tier_of(item.path)
        if tier is None:
            problems.append(
                f"{item.nodeid}: test files live in a tier folder "
                f"(tests/{{{','.join(TIERS)}}}/), see tests/support/tiers.py"
            )
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "unit":
            # fixturenames is the closure: every fixture the test needs, however indirectly.
            needed = set(getattr(item, "fixturenames", ()))
            if needed & DB_FIXTURES:
                via = sorted(needed & (DB_FIXTURES | NAMED))
                problems.append(
                    f"{item.nodeid}: a unit test cannot use the database "
                    f"(fixtures {', '.join(via)}); move it to tests/db/"
                )
    if problems:
        raise pytest.UsageError("\n".join(problems))
