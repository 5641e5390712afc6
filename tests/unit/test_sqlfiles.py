"""sql/: every named statement is whole, uniquely named and used by its name.

Static checks over the files (no database): a Python module that asks for
``query(name, file)`` gets a statement that exists, and no block is a
fragment meant to be glued into another.
"""

from __future__ import annotations

import re

import pytest

from outbox.sqlfiles import queries, sql_dir
from tests.support.paths import ROOT

# What a whole statement (or a psycopg.sql template of one) starts with.
_STATEMENT = re.compile(
    r"^(SELECT|WITH|INSERT|UPDATE|DELETE|SET|LISTEN|CREATE|DROP|ALTER|COMMENT|DO|TRUNCATE)\b"
)
_USE = re.compile(r"""query\(\s*"([a-z0-9_]+)",\s*(?:"([a-z0-9_]+\.sql)"|(_SQL|SQL_FILE))""")
_MODULE_FILE = re.compile(r"""^(?:_SQL|SQL_FILE)\s*=\s*"([a-z0-9_]+\.sql)"$""", re.MULTILINE)
# Modules' own shorthands for query(name, their file).
_SHORTHAND = {
    "api": (re.compile(r"""\bsql\(\s*"([a-z0-9_]+)"\)"""), "api.sql"),
    "demo_domain.py": (re.compile(r'\b(?:_q\(|_value\(\s*\w+,)\s*"([a-z0-9_]+)"'), "demo.sql"),
}


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


def test_every_query_the_code_asks_for_exists() -> None:
    uses = 0
    for path in sorted(ROOT.glob("*/*.py")):
        folder = path.parts[-2]
        if folder not in {"outbox", "relay", "api", "cli"}:
            continue
        text = path.read_text(encoding="utf-8")
        default = _MODULE_FILE.search(text)
        found: list[tuple[str, str]] = []
        for name, filename, alias in _USE.findall(text):
            if alias:
                assert default, f"{path.name} uses {alias} without defining it"
                filename = default.group(1)
            found.append((name, filename))
        for key in (folder, path.name):
            if key in _SHORTHAND:
                pattern, filename = _SHORTHAND[key]
                found += [(name, filename) for name in pattern.findall(text)]
        for name, filename in found:
            assert name in queries(filename), f"{path.name}: no {name!r} in sql/{filename}"
        uses += len(found)
    # The patterns above do find the uses (there are about a hundred).
    assert uses > 80
