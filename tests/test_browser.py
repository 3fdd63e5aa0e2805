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


# --- hostile labels: HTML comment and script breakers --------------------------------------------------------------

HOSTILE = ["<!--<script>", "</script><script>alert(1)</script>", "]]>", "\u2028line\u2029sep", "<![CDATA[",
           "<img src=x onerror=alert(2)>", "\" onmouseover=\"alert(3)", "</ScRiPt ><script>alert(4)</script>",
           "<!--", "</style><svg onload=alert(5)>", "&lt;b&gt; &amp;", "\ud800 lone surrogate", "'><iframe src=javascript:alert(6)>"]


def hostile_label(i: int) -> str:
    """Feature 0: a comment end; then the breakers in turn. No later "-->" undoes a "<!--<script>" (a later "-->"
    would end the script's escaped state and hide the bug)."""
    return "--> #0" if i == 0 else f"{HOSTILE[(i - 1) % len(HOSTILE)]} #{i}"


def _shown(label: str) -> str:
    """A label as the page shows it (a lone surrogate becomes U+FFFD)."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in label)


@pytest.fixture(scope="module")
def hostile(gpt2_dir, tmp_path_factory, one_thread):
    """An SAE whose every feature carries a hostile label; its static dashboard and the app serving it."""
    import json

    import torch

    from report_helpers import ThreadServer, make_corpus, make_sae
    from saescope.site import load_labels
    from saescope.lm import LanguageModel
    from saescope.report import FeatureStore, StatsConfig, compute_feature_stats
    from saescope.report.dashboard import write_dashboard
    from saescope.server import ServerConfig, create_app

    tmp = tmp_path_factory.mktemp("hostile")
    lm = LanguageModel.from_pretrained(str(gpt2_dir))
    sae = make_sae(lm.name, tmp / "sae")
    labels = {str(i): hostile_label(i) for i in range(sae.d_sae)}
    (sae.path / "labels.json").write_text(json.dumps(labels))
    assert len(load_labels(sae)) == sae.d_sae
    cfg = StatsConfig(n_tokens=8 * 24, context_size=24, batch_size=8, top_k=3, window=3, checkpoint_every=0)
    torch.set_num_threads(1)
    compute_feature_stats(lm, sae, make_corpus(8, 24), cfg, out=sae.path / "features.sqlite")
    with FeatureStore.for_sae(sae) as store:
        write_dashboard(store, tmp / "dash")
    srv = ThreadServer(create_app(lm, sae, str(sae.path), FeatureStore.for_sae(sae), ServerConfig()))
    yield {"url": srv.url, "dash": tmp / "dash", "d_sae": sae.d_sae}
    srv.close()


def _watch(page):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return dialogs


def test_hostile_labels_static_dashboard(hostile, page):
    """The static index with a label of every breaker: the table is complete, labels shown as text, no dialog."""
    dialogs = _watch(page)
    page.goto((hostile["dash"] / "index.html").as_uri())
    rows = page.locator("#features tbody tr")
    assert rows.count() == min(hostile["d_sae"], 200)
    labels = rows.locator("td.label")
    assert [labels.nth(i).text_content() for i in range(rows.count())] == \
        [_shown(hostile_label(i)) for i in range(rows.count())]
    page.fill("#q", "cdata")
    assert rows.count() == len([i for i in range(hostile["d_sae"]) if "CDATA" in hostile_label(i)]) > 0
    page.fill("#q", "")
    page.screenshot(path=str(ARTIFACTS / "browser-hostile-dashboard.png"), full_page=True)
    for i in (0, 1, 2, 6, 10, 12):
        page.goto((hostile["dash"] / "features" / f"{i}.html").as_uri())
        assert page.locator("h1 .label").text_content() == _shown(hostile_label(i))
        assert page.locator("svg.hist").count() == 1
    page.mouse.move(300, 100)
    assert dialogs == [] and page.errors == []


def test_hostile_labels_server(hostile, page):
    """`/` and the feature pages of the app with the same labels; the read panel shows them as text too."""
    dialogs = _watch(page)
    page.goto(hostile["url"])
    rows = page.locator("#features tbody tr")
    assert rows.count() == min(hostile["d_sae"], 200)
    labels = rows.locator("td.label")
    assert [labels.nth(i).text_content() for i in range(rows.count())] == \
        [_shown(hostile_label(i)) for i in range(rows.count())]
    page.screenshot(path=str(ARTIFACTS / "browser-hostile-index.png"), full_page=True)
    page.fill("#read-text", "The cat sat on the mat")
    page.click("#read-go")
    page.wait_for_selector("#read-out .rtok a.feat")
    # every feature link shows its label as text: an unescaped "<!--" would swallow the links after it, an
    # unescaped <img onerror> would fire a dialog
    links = page.locator("#read-out a.feat")
    assert links.count() == 5 * page.locator("#read-out .rtok").count()
    for j in range(links.count()):
        index = int(links.nth(j).get_attribute("href").rsplit("/", 1)[1])
        assert links.nth(j).text_content().endswith(_shown(hostile_label(index))), (index, links.nth(j).text_content())
    page.hover("#read-out a.feat >> nth=0")
    page.screenshot(path=str(ARTIFACTS / "browser-hostile-read.png"), full_page=True)
    for i in (0, 1, 4, 7):
        page.goto(hostile["url"] + f"feature/{i}")
        assert page.locator("h1 .label").text_content() == _shown(hostile_label(i))
    assert dialogs == [] and page.errors == []
