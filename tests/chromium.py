"""Debian's /usr/bin/chromium driven by Playwright for the browser tests (never a downloaded browser).

``require_chromium()`` at a test module's top skips it without the browser (or fails when SAESCOPE_REQUIRE_BROWSER=1,
as in CI); ``open_page(width, height, timeout_ms)`` yields a page whose ``errors`` list collects page errors."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("SAESCOPE_REQUIRE_BROWSER") == "1":
        raise RuntimeError("SAESCOPE_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing (apt-get install chromium)")
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)


@contextmanager
def open_page(width: int, height: int, timeout_ms: int):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(timeout_ms)
        page.errors = errors
        try:
            yield page
        finally:
            browser.close()
