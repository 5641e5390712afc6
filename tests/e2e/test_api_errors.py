"""REST errors on the real server: the body size cap under uvicorn (the error
handling alone, on a tiny app, is tests/unit/test_api_errors.py)."""

from __future__ import annotations

from typing import Any

from outbox.api.config import Settings
from tests.support.api import api_client


async def test_body_cap_on_the_real_server(settings: Settings) -> None:
    capped = settings.replace(max_request_body=4096)
    async with api_client(capped) as client:
        body: dict[str, Any] = {
            "name": "h",
            "url": "http://127.0.0.1:9/",
            "event_type": "a.b",
            "description": "d" * 5000,
        }
        resp = await client.post("/webhooks", json=body)
        assert resp.status_code == 413 and resp.json()["detail"].startswith("request body")
        body["description"] = "d" * 1000
        assert (await client.post("/webhooks", json=body)).status_code == 201
