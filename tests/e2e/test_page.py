"""The console page served by the real app: page and assets without a token
(the assets themselves are checked in tests/unit/test_page.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from outbox.api.pages import STATIC_DIR
from tests.support.servers import serve_app


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
