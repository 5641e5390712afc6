"""Headless Chromium through Playwright for the console tests.

The system browser (Debian package ``chromium``, ``/usr/bin/chromium``) is
launched directly: no ``playwright install``, nothing downloaded. Tests skip
with the reason when it or the ``playwright`` package is missing.
Screenshots go to ``test-artifacts/`` (gitignored), kept after the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT
from tests.support.waiting import wait_for

CHROMIUM = os.environ.get("OUTBOX_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)",
)


def playwright() -> Any:
    return pytest.importorskip(
        "playwright.async_api",
        reason="the playwright package is not installed (pip install playwright)",
    )


@contextlib.asynccontextmanager
async def open_page(width: int = 1400, height: int = 900) -> AsyncIterator[Any]:
    """A fresh browser page; JavaScript errors on it fail the test at the end."""
    api = playwright()
    async with api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": width, "height": height})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            await browser.close()


async def screenshot(page: Any, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def texts(page: Any, selector: str) -> list[str]:
    found: list[str] = await page.eval_on_selector_all(
        selector, "els => els.map(e => e.textContent)"
    )
    return found


async def count(page: Any, selector: str) -> int:
    n: int = await page.eval_on_selector_all(selector, "els => els.length")
    return n


async def wait_count(page: Any, selector: str, n: int, timeout: float = 20, what: str = "") -> None:
    """Poll (the page's CSP forbids the eval behind wait_for_function)."""

    async def enough() -> bool:
        return await count(page, selector) >= n

    await wait_for(enough, timeout=timeout, what=what or f"{n} x {selector}")


async def ids(page: Any, selector: str = "#events li.ev") -> list[int]:
    found: list[str] = await page.eval_on_selector_all(
        selector, "els => els.map(e => e.dataset.id)"
    )
    return [int(i) for i in found]


async def login(page: Any, base_url: str, token: str) -> None:
    """Open the console with the token in the link, as `outbox demo` prints it."""
    await page.goto(f"{base_url}/#token={token}")
    await page.wait_for_selector('#status[data-state="live"]', timeout=WAIT_MS)
