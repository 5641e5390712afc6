"""The admin page as served by `outbox serve`: assets, headers, nothing from elsewhere."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from outbox.api.pages import STATIC_DIR
from tests.conftest import serve_app

ASSETS = sorted(p for p in STATIC_DIR.iterdir() if p.is_file())


async def test_page_and_assets_are_served_without_a_token(settings: Any) -> None:
    async with serve_app(settings) as srv, httpx.AsyncClient(base_url=srv.base_url) as client:
        r = await client.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert f"ws://127.0.0.1:{srv.port}" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert (await client.head("/")).status_code == 200

        # Everything the page refers to exists, with a usable content type.
        refs = set(re.findall(r'(?:src|href)="(/static/[^"#]+)', r.text))
        for js in STATIC_DIR.glob("*.js"):
            refs |= {f"/static/{m}" for m in re.findall(r'from "\./([^"]+)"', js.read_text())}
        assert {"/static/app.js", "/static/app.css", "/static/feed.js"} <= refs
        types = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        for ref in sorted(refs):
            a = await client.get(ref)
            assert a.status_code == 200, ref
            assert types[Path(ref).suffix] in a.headers["content-type"], ref
            assert a.headers["x-content-type-options"] == "nosniff"

        assert (await client.get("/static/nope.js")).status_code == 404
        assert (await client.get("/static/../pages.py")).status_code == 404
        assert (await client.get("/static/%2e%2e/pages.py")).status_code == 404


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
