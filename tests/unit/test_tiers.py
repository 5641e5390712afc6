"""The tier plugin (tests/support/tiers.py): a unit test cannot reach the
database through any fixture, and every test file sits in a tier folder."""

from __future__ import annotations

from tests.support.tiers import TESTS, problem, tier_of


def test_each_folder_is_its_tier() -> None:
    for tier in ("unit", "db", "e2e", "faults"):
        assert tier_of(TESTS / tier / "test_x.py") == tier
    assert tier_of(TESTS / "test_x.py") is None
    assert tier_of(TESTS / "support" / "db.py") is None
    assert tier_of(TESTS.parent / "bench" / "test_x.py") is None


def test_a_unit_test_needing_a_database_fixture_is_refused() -> None:
    unit = TESTS / "unit" / "test_x.py"
    assert problem(unit, ["tmp_path", "caplog"]) is None
    # As pytest reports it: the closure, so conn brings db_url and template_db.
    why = problem(unit, ["conn", "db_url", "template_db", "request"])
    assert why is not None
    assert "cannot use the database (fixtures conn, db_url, template_db)" in why
    assert "tests/db/" in why
    assert problem(unit, ["empty_db_url"]) is not None
    for tier in ("db", "e2e", "faults"):
        assert problem(TESTS / tier / "test_x.py", ["conn", "db_url", "template_db"]) is None


def test_a_test_file_outside_the_tiers_is_refused() -> None:
    why = problem(TESTS / "test_flat.py", [])
    assert why is not None and "tier folder" in why
