"""sql/: every named statement is whole, uniquely named and used by its name.

Static checks over the files (no database): a Python module that asks for
``query(name, file)`` gets a statement that exists, and no block is a
fragment meant to be glued into another.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from outbox.sqlfiles import bare_query, queries, query, sql_dir
from tests.support.paths import ROOT

# What a whole statement (or a psycopg.sql template of one) starts with.
_STATEMENT = re.compile(
    r"^(SELECT|WITH|INSERT|UPDATE|DELETE|SET|LISTEN|NOTIFY|LOCK|CREATE|DROP|ALTER|COMMENT|DO"
    r"|TRUNCATE|VACUUM|ANALYZE|VALUES|CALL|GRANT|REVOKE)\b"
)
_USE = re.compile(r"""query\(\s*"([a-z0-9_]+)",\s*(?:"([a-z0-9_]+\.sql)"|(_SQL|SQL_FILE))""")
_MODULE_FILE = re.compile(r"""^(?:_SQL|SQL_FILE)\s*=\s*"([a-z0-9_]+\.sql)"$""", re.MULTILINE)
# A module's own shorthand for query(name, its file): def sql(name: str) -> str.
_HELPER = re.compile(
    r"""^def (\w+)\(name: str\) -> str:\n(?:[^\n]*\n){0,4}?\s+return query\(name, """
    r"""(?:"([a-z0-9_]+\.sql)"|(_SQL|SQL_FILE))\)""",
    re.MULTILINE,
)


def _named_files() -> list[str]:
    return sorted(p.name for p in sql_dir().glob("*.sql") if not re.match(r"^\d{3}_", p.name))


def _strip_comments(text: str) -> str:
    return "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("--")
    ).strip()


@pytest.mark.parametrize("filename", _named_files())
def test_every_block_is_a_whole_statement(filename: str) -> None:
    found = queries(filename)
    assert found, f"sql/{filename} has no named statements"
    for name, text in found.items():
        body = _strip_comments(text)
        assert _STATEMENT.match(body), f"sql/{filename} {name} is not a whole statement"


def test_no_catch_all_queries_file() -> None:
    assert not (sql_dir() / "queries.sql").exists()


def _symlinked(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    return any((ROOT / parent).is_symlink() for parent in rel.parents)


def test_every_query_the_code_asks_for_exists() -> None:
    uses = 0
    for folder in ("outbox", "relay", "api", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if _symlinked(path):
                continue
            uses += _check_module(path)
    # The patterns do find the uses (there are over a hundred).
    assert uses > 100


def _check_module(path: Path) -> int:
    text = path.read_text(encoding="utf-8")
    default = _MODULE_FILE.search(text)

    def resolve(filename: str, alias: str) -> str:
        if alias:
            assert default, f"{path.name} uses {alias} without defining it"
            return default.group(1)
        return filename

    found = [(name, resolve(f, a)) for name, f, a in _USE.findall(text)]
    for helper, f, a in _HELPER.findall(text):
        filename = resolve(f, a)
        calls = re.findall(rf"""\b{helper}\(\s*"([a-z0-9_]+)"\s*\)""", text)
        found += [(name, filename) for name in calls]
    imported = re.search(r"from outbox\.api\.endpoint import \(?([^)]*?)\)?\n\S", text)
    if imported and re.search(r"\bsql\b", imported.group(1)):
        # api/endpoint.py's sql(name) is query(name, "api.sql").
        calls = re.findall(r"""\bsql\(\s*"([a-z0-9_]+)"\s*\)""", text)
        found += [(name, "api.sql") for name in calls]
    if path.name == "demo_domain.py":
        # _value(conn, "name", ...) runs a demo.sql statement too.
        found += [(n, "demo.sql") for n in re.findall(r'_value\(\s*\w+,\s*"([a-z0-9_]+)"', text)]
    for name, filename in found:
        assert name in queries(filename), f"{path.name}: no {name!r} in sql/{filename}"
    return len(found)


@pytest.mark.parametrize(
    ("name", "filename"), [("feed_read", "feed.sql"), ("dispatch_batch", "dispatch.sql")]
)
def test_hot_statements_are_sent_without_comments_and_fit_psycopgs_query_cache(
    name: str, filename: str
) -> None:
    full, bare = query(name, filename), bare_query(name, filename)
    assert "--" in full  # the reasons are in the file
    assert not any(line.lstrip().startswith("--") for line in bare.split("\n"))
    # Same lines (blanked), so an error position still points into the file's text.
    assert bare.count("\n") == full.count("\n")
    assert [ln for ln in bare.split("\n") if ln] == [
        ln for ln in full.split("\n") if ln and not ln.lstrip().startswith("--")
    ]
    # psycopg caches a query's converted placeholders only up to 4,096 characters.
    assert len(bare.encode()) <= 4096
