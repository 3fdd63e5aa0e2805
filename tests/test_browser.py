"""The local app in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; never a downloaded
browser): open the index, search a text and see features, open a feature page, steer and see two completions.
Screenshots go to test-artifacts/. Skipped without /usr/bin/chromium unless SAESCOPE_REQUIRE_BROWSER=1."""
from __future__ import annotations

import pytest

from chromium import ARTIFACTS, open_page, require_chromium

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]

require_chromium()


@pytest.fixture(scope="module")
def server(one_thread, saescope_server):
    return saescope_server


@pytest.fixture(scope="module")
def page(server):
    with open_page(1200, 900, 60_000) as pg:
        yield pg


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_index_search_sort_and_dense_filter(server, page):
    page.goto(server.url)
    rows = page.locator("#features tbody tr")
    assert rows.count() == 96
    # explanations and labels are shown; labels are marked "auto"
    row11 = page.locator("#features tbody tr", has=page.locator("a[href='/feature/11']"))
    assert "ships and maritime navigation" in row11.inner_text() and "0.83" in row11.inner_text()
    assert "auto" in page.locator("#features tbody tr", has=page.locator("a[href='/feature/5']")).inner_text()
    # search goes to /api/search: a word only an explanation holds
    page.fill("#q", "maritime")
    page.wait_for_function("document.getElementById('count').textContent.indexOf('(search)') >= 0")
    assert rows.count() == 1 and rows.first.locator("td").first.inner_text() == "11"
    _shot(page, "browser-index-search.png")
    page.fill("#q", "fifth")
    page.wait_for_function("document.getElementById('count').textContent === '1 features (search)'")
    assert "fifth feature" in rows.first.inner_text()
    page.fill("#q", "")
    page.wait_for_function("document.querySelectorAll('#features tbody tr').length === 96")
    page.select_option("#sort", "max")
    first_max = float(rows.nth(0).locator("td").nth(4).inner_text())
    second_max = float(rows.nth(1).locator("td").nth(4).inner_text())
    assert first_max >= second_max
    # dense features are marked, and can be hidden
    n_dense = page.locator("#features tbody tr.dense").count()
    assert 0 < n_dense < 96 and page.locator("#features tbody tr.dense .badge.dense").count() == n_dense
    _shot(page, "browser-index.png")
    page.check("#hide-dense")
    assert rows.count() == 96 - n_dense and page.locator("#features tbody tr.dense").count() == 0
    _shot(page, "browser-index-dense-hidden.png")
    page.uncheck("#hide-dense")
    assert page.errors == []


def test_read_view_is_heat_coloured(server, page):
    page.goto(server.url)
    page.fill("#read-text", "The cat sat on the mat. Café 日本")
    page.click("#read-go")
    page.wait_for_selector("#read-heat .htok")
    toks = page.locator("#read-heat .htok")
    assert toks.count() >= 8
    colours = [toks.nth(j).evaluate("e => getComputedStyle(e).backgroundColor") for j in range(toks.count())]
    assert len(set(colours)) > 3                                        # shaded by activation, not one colour
    texts = [toks.nth(j).inner_text() for j in range(toks.count())]
    assert "\ufffd" not in "".join(texts) and "日" in texts and "\u25cc" in texts     # split characters merged
    toks.nth(3).hover()
    detail = page.locator("#read-detail")
    assert detail.locator("a.feat").count() >= 1 and texts[3] in detail.inner_text()
    _shot(page, "browser-read.png")
    # colour by a chosen feature: the one on top at token 3
    chosen = detail.locator("a.feat").first.get_attribute("href").rsplit("/", 1)[1]
    page.fill("#read-feature", chosen)
    page.click("#read-go")
    page.wait_for_function(f"document.getElementById('read-out').textContent.indexOf('feature #{chosen}') >= 0")
    _shot(page, "browser-read-feature.png")
    assert page.errors == []


def test_feature_page_panels(server, page):
    page.goto(server.url + "feature/11")
    assert page.locator("h1").inner_text().startswith("Feature 11")
    assert "ships and maritime navigation" in page.inner_text("#explanation")
    assert "detection balanced accuracy 0.83" in page.inner_text("#explanation")
    assert page.locator(".ex").count() >= 1
    svg = page.locator("svg.hist")
    assert svg.count() == 1 and svg.locator("text.xt").count() >= 3 and "tokens" in svg.text_content()
    box = svg.bounding_box()
    bars = svg.locator("rect")
    xs = [bars.nth(j).bounding_box() for j in range(bars.count())]
    assert (max(b["x"] + b["width"] for b in xs) - min(b["x"] for b in xs)) > 0.7 * box["width"]
    near = page.locator("#nearest li a")
    assert near.count() == 10
    _shot(page, "browser-feature.png")
    target = near.first.get_attribute("href")
    near.first.click()
    page.wait_for_url("**" + target)
    # a dense feature carries the badge
    dense = next(i for i in range(96) if page.request.get(server.url + f"api/feature/{i}").json()["dense"])
    page.goto(server.url + f"feature/{dense}")
    assert page.locator("h1 .badge.dense").count() == 1
    _shot(page, "browser-feature-dense.png")
    assert page.errors == []


def test_steering_samples(server, page):
    page.goto(server.url + "feature/3")
    assert page.input_value("#steer-rows .steer-feature") == "3"
    page.click("#steer-add")
    page.locator("#steer-rows .steer-feature").nth(1).fill("9")
    page.locator("#steer-rows .steer-strength").nth(1).fill("-4")
    page.fill("#steer-prompt", "Once upon a time")
    page.fill("#steer-max", "8")
    page.fill("#steer-temp", "1")
    page.fill("#steer-n", "3")
    page.fill("#steer-seed", "7")
    page.click("#steer-go")
    page.wait_for_selector("#steer-samples tbody tr")
    samples = page.locator("#steer-samples tbody tr")
    assert samples.count() == 3
    assert page.inner_text("#steer-prompt-shown") == "Once upon a time"
    first = [samples.nth(j).inner_text() for j in range(3)]
    assert not any(t.split("\t")[1].startswith("Once upon") for t in first)      # continuations, prompt apart
    assert "add #3 \u00d7 12" in page.inner_text("#steer-out") or "#9 \u00d7 -4" in page.inner_text("#steer-out")
    _shot(page, "browser-steer.png")
    page.click("#steer-go")                                           # same seed, same samples
    page.wait_for_function("document.querySelectorAll('#steer-samples tbody tr').length === 3")
    assert [samples.nth(j).inner_text() for j in range(3)] == first
    # errors in plain words
    page.locator("#steer-rows .steer-strength").nth(1).fill("")
    page.click("#steer-go")
    page.wait_for_function("document.getElementById('steer-err').textContent.length > 0")
    assert page.inner_text("#steer-err") == "Strengths (strength): each entry must be a number."
    page.locator("#steer-rows .steer-strength").nth(1).fill("2")
    page.locator("#steer-rows .steer-feature").first.fill("100000")
    page.click("#steer-go")
    page.wait_for_function("document.getElementById('steer-err').textContent.indexOf('out of range') >= 0")
    assert "--" not in page.inner_text("#steer-err")
    _shot(page, "browser-steer-error.png")
    assert page.errors == []


def test_attribution_view(server, page):
    page.goto(server.url)
    page.fill("#attr-text", "The cat sat on the")
    page.click("#attr-go")
    page.wait_for_selector("#attr-table tbody tr")
    assert page.locator("#attr-table tbody tr").count() >= 1
    assert page.locator("#attr-out .target-pos").count() == 1 and page.inner_text("#attr-target-shown")
    assert "logit" in page.inner_text("#attr-out") and "rest of network" in page.inner_text("#attr-out")
    _shot(page, "browser-attribute-dla.png")
    page.select_option("#attr-method", "gradient")
    page.click("#attr-go")
    page.wait_for_function("document.getElementById('attr-out').textContent.indexOf('gradient attribution') >= 0")
    assert page.locator("#attr-table thead th").nth(1).inner_text() == "position"
    _shot(page, "browser-attribute-gradient.png")
    page.fill("#attr-target", " two words")
    page.click("#attr-go")
    page.wait_for_function("document.getElementById('attr-err').textContent.length > 0")
    assert "not one" in page.inner_text("#attr-err")
    assert page.errors == []


def test_unknown_feature_page_is_404_and_favicon(server, page):
    resp = page.goto(server.url + "feature/100000")
    assert resp.status == 404 and "No feature 100000" in page.inner_text("h1")
    icon = page.request.get(server.url + "favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_without_statistics(gpt2_dir, page, tmp_path_factory):
    """`serve` without a feature store: feature pages say so and show the logit lens and nearest features."""
    from report_helpers import ThreadServer, make_sae
    from saescope.lm import LanguageModel
    from saescope.server import ServerConfig, create_app

    lm = LanguageModel.from_pretrained(str(gpt2_dir))
    sae = make_sae(lm.name, tmp_path_factory.mktemp("nostats") / "sae")
    srv = ThreadServer(create_app(lm, sae, str(sae.path), None, ServerConfig()))
    try:
        page.goto(srv.url + "feature/5")
        body = page.inner_text("main")
        assert "never fired" not in body and "No feature statistics were built" in body
        assert "fifth feature" in page.inner_text("h1") and page.locator("#nearest li").count() == 10
        assert "Logit lens" in body and page.locator("svg.hist").count() == 0
        _shot(page, "browser-no-stats.png")
        page.goto(srv.url)
        assert page.locator("#features tbody tr").count() == 96 and page.locator("#hide-dense").count() == 0
    finally:
        srv.close()
    assert page.errors == []


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
    labels = rows.locator("td.label-cell .label")
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
    labels = rows.locator("td.label-cell .label")
    assert [labels.nth(i).text_content() for i in range(rows.count())] == \
        [_shown(hostile_label(i)) for i in range(rows.count())]
    page.screenshot(path=str(ARTIFACTS / "browser-hostile-index.png"), full_page=True)
    page.fill("#read-text", "The cat sat on the mat")
    page.click("#read-go")
    page.wait_for_selector("#read-heat .htok")
    # every feature link shows its label as text: an unescaped "<!--" would swallow the links after it, an
    # unescaped <img onerror> would fire a dialog
    toks = page.locator("#read-heat .htok")
    for t in range(toks.count()):
        toks.nth(t).hover()
        links = page.locator("#read-detail a.feat")
        assert links.count() == 5
        for j in range(links.count()):
            index = int(links.nth(j).get_attribute("href").rsplit("/", 1)[1])
            assert links.nth(j).text_content().endswith(_shown(hostile_label(index))), (index, links.nth(j).text_content())
        assert toks.nth(t).get_attribute("title").count("#") >= 5
    page.screenshot(path=str(ARTIFACTS / "browser-hostile-read.png"), full_page=True)
    for i in (0, 1, 4, 7):
        page.goto(hostile["url"] + f"feature/{i}")
        assert page.locator("h1 .label").text_content() == _shown(hostile_label(i))
    assert dialogs == [] and page.errors == []
