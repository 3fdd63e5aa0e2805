"""The local app in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; never a downloaded
browser): open the index, search a text and see features, open a feature page, steer and see two completions.
Screenshots go to test-artifacts/. Skipped without /usr/bin/chromium unless SAESCOPE_REQUIRE_BROWSER=1."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]

if not CHROMIUM.exists():
    if os.environ.get("SAESCOPE_REQUIRE_BROWSER") == "1":
        raise RuntimeError("SAESCOPE_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing (apt-get install chromium)")
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(one_thread, saescope_server):
    return saescope_server


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(60_000)
        pg.errors = errors
        yield pg
        browser.close()


def test_index_search_feature_page_and_steer(server, page):
    page.goto(server.url)
    rows = page.locator("#features tbody tr")
    assert rows.count() == 96
    page.fill("#q", "fifth")
    assert rows.count() == 1 and "fifth feature" in rows.first.inner_text()
    page.fill("#q", "")
    page.select_option("#sort", "max")
    first_max = float(rows.nth(0).locator("td").nth(3).inner_text())
    second_max = float(rows.nth(1).locator("td").nth(3).inner_text())
    assert first_max >= second_max
    page.screenshot(path=str(ARTIFACTS / "browser-index.png"), full_page=True)

    # search via inference: type a text, see the top features per token
    page.fill("#read-text", "The cat sat on the mat")
    page.click("#read-go")
    page.wait_for_selector("#read-out .rtok a.feat")
    assert page.locator("#read-out .rtok").count() >= 6
    page.screenshot(path=str(ARTIFACTS / "browser-read.png"), full_page=True)

    # click through to a feature page
    link = page.locator("#read-out a.feat").first
    index = link.get_attribute("href").rsplit("/", 1)[1]
    link.click()
    page.wait_for_url(f"**/feature/{index}")
    assert page.locator("h1").inner_text().startswith(f"Feature {index}")
    assert page.locator(".ex").count() >= 1 and page.locator("svg.hist").count() == 1
    page.screenshot(path=str(ARTIFACTS / "browser-feature.png"), full_page=True)

    # steer from the feature page (prefilled with this feature): baseline and steered completions
    assert page.input_value("#steer-features") == index
    page.fill("#steer-prompt", "Once upon a time")
    page.fill("#steer-strength", "8")
    page.fill("#steer-max", "8")
    page.click("#steer-go")
    page.wait_for_function("document.getElementById('steer-steered').textContent.length > 20 && "
                           "!document.getElementById('steer-steered').textContent.includes('\u2026')")
    baseline, steered = page.inner_text("#steer-baseline"), page.inner_text("#steer-steered")
    assert baseline.startswith("Once upon a time") and steered.startswith("Once upon a time")
    assert baseline != steered
    assert page.inner_text("#steer-err") == ""
    page.screenshot(path=str(ARTIFACTS / "browser-steer.png"), full_page=True)

    # a bad request shows the server's one-line error instead of completions
    page.fill("#steer-features", "100000")
    page.click("#steer-go")
    page.wait_for_function("document.getElementById('steer-err').textContent.length > 0")
    assert "out of range" in page.inner_text("#steer-err")
    assert page.errors == []


def test_unknown_feature_page_is_404(server, page):
    resp = page.goto(server.url + "feature/100000")
    assert resp.status == 404 and "No feature 100000" in page.inner_text("h1")
