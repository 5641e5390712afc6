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

from collections.abc import Iterable
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


def problem(path: Path, fixturenames: Iterable[str]) -> str | None:
    """Why a test at ``path`` needing ``fixturenames`` is misplaced, or None."""
    tier = tier_of(path)
    if tier is None:
        folders = "tests/{" + ",".join(TIERS) + "}/"
        return f"test files live in a tier folder ({folders}), see tests/support/tiers.py"
    # fixturenames is the closure: every fixture the test needs, however indirectly.
    needed = set(fixturenames)
    if tier == "unit" and needed & DB_FIXTURES:
        via = sorted(needed & (DB_FIXTURES | NAMED))
        return (
            f"a unit test cannot use the database (fixtures {', '.join(via)}); move it to tests/db/"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems: list[str] = []
    for item in items:
        why = problem(item.path, getattr(item, "fixturenames", ()))
        if why is not None:
            problems.append(f"{item.nodeid}: {why}")
            continue
        item.add_marker(getattr(pytest.mark, str(tier_of(item.path))))
    if problems:
        raise pytest.UsageError("\n".join(problems))
