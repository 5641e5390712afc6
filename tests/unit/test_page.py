"""The admin page's assets: nothing from elsewhere, nothing the CSP would block, scripts parse
(serving them under the real app is tests/e2e/test_page.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from outbox.api.pages import STATIC_DIR

ASSETS = sorted(p for p in STATIC_DIR.iterdir() if p.is_file())


@pytest.mark.parametrize("asset", ASSETS, ids=lambda p: p.name)
def test_nothing_is_fetched_from_the_internet(asset: Path) -> None:
    text = asset.read_text(encoding="utf-8")
    # The SVG namespace is a name, not a fetch.
    text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"(https?:)?//[a-z0-9-]+\.[a-z]", text, re.I), asset.name
    assert "@import" not in text


def test_no_inline_script_or_style_that_the_csp_would_block() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("script", sorted(STATIC_DIR.glob("*.js")), ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    res = subprocess.run(
        ["node", "--input-type=module", "--check"],
        input=script.read_text(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
