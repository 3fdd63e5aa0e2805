"""The attribution-graph view in a real headless Chromium (Debian's /usr/bin/chromium via Playwright; never a
downloaded browser): nodes and edges drawn by the thresholds, hover details, click-through to the feature page,
pin + supernode kept in the URL, thresholds filtering, and the intervention panel. The graph file is written with
circuit-tracer's graph-file models (graph_fixtures). Screenshots go to test-artifacts/."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse
from urllib.request import urlopen

import pytest

from chromium import ARTIFACTS, open_page, require_chromium
from graph_fixtures import build_graph, random_transcoders, write_graph

SERVED = "tiny:resid2-topk"

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]

require_chromium()


@pytest.fixture(scope="module")
def server(one_thread, tmp_path_factory):
    from report_helpers import ThreadServer

    from saescope.lm import LanguageModel
    from saescope.sae import SAE
    from saescope.server import create_app

    d = tmp_path_factory.mktemp("graphs")
    write_graph(d / "cat.json", transcoders=["tiny:another-transcoder", SERVED])
    empty = build_graph(slug="empty")
    empty["nodes"] = [n for n in empty["nodes"] if n["feature_type"] == "embedding"]
    empty["links"] = []
    (d / "empty.json").write_text(json.dumps(empty))
    lm = LanguageModel.from_pretrained("tiny")
    try:                               # a graph traced by saescope.graph, for the end-to-end intervention
        from saescope.graph import trace, write_json
    except ImportError:
        pass
    else:
        write_json(trace(lm, random_transcoders(lm, tmp_path_factory.mktemp("tc")), "The cat sat on the", quiet=True),
                   d / "traced.json", node_threshold=0.9)
    srv = ThreadServer(create_app(lm, SAE.from_spec(SERVED), SERVED, graphs=[d]))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def page(server):
    with open_page(1300, 1000, 30_000) as pg:
        yield pg


def _expected(node_t: float, edge_t: float):
    """The nodes and edges the view should draw, by the rule the page states: embeddings and logits always;
    other nodes with cumulative influence <= the node threshold and at least one drawn edge; edges with
    |weight| >= edge threshold x the largest |weight| between kept nodes."""
    g = build_graph()
    keep = {n["node_id"] for n in g["nodes"] if n["feature_type"] in ("embedding", "logit") or n["influence"] <= node_t}
    top = max(abs(e["weight"]) for e in g["links"])
    edges = [e for e in g["links"] if e["source"] in keep and e["target"] in keep and abs(e["weight"]) >= edge_t * top]
    touched = {e["source"] for e in edges} | {e["target"] for e in edges}
    nodes = {n["node_id"] for n in g["nodes"] if n["node_id"] in keep and
             (n["node_id"] in touched or n["feature_type"] in ("embedding", "logit"))}
    return nodes, [e for e in edges if e["source"] in nodes and e["target"] in nodes]


def _drawn(page):
    ids = set(page.eval_on_selector_all("#graph-svg g.node", "els => els.map(e => e.dataset.id)"))
    edges = page.eval_on_selector_all("#graph-svg path.edge", "els => els.map(e => [e.dataset.source, "
                                      "e.dataset.target, e.classList.contains('pos') ? 1 : -1])")
    return ids, edges


def test_graph_view_draws_hovers_and_links(server, page):
    page.goto(server.url + "graphs")
    page.click("a[href='/graph/cat']")
    page.wait_for_selector("#graph-svg g.node")
    nodes, edges = _expected(0.8, 0.02)
    ids, drawn = _drawn(page)
    assert ids == nodes and len(nodes) == 14
    assert sorted(d[:2] for d in drawn) == sorted([e["source"], e["target"]] for e in edges)
    assert all(d[2] == (1 if e["weight"] >= 0 else -1) for d in drawn for e in edges
               if [e["source"], e["target"]] == d[:2])
    assert {"neg"} <= set(page.eval_on_selector_all("path.edge.neg", "els => els.map(e => 'neg')"))
    # layers: embeddings at the bottom, logits at the top; tokens along the axis
    y = {i: page.eval_on_selector(f"g.node[data-id='{i}'] > *", "e => e.getBBox().y") for i in ("E_101_1", "0_7_1",
                                                                                                  "1_5_3", "3_262_4")}
    assert y["E_101_1"] > y["0_7_1"] > y["1_5_3"] > y["3_262_4"]
    assert page.eval_on_selector_all("#graph-svg text.tok", "els => els.map(e => e.firstChild.nodeValue)") == \
        ["<|endoftext…", "The", " cat", " sat", " on"]
    # hover: details with activation, influence and the strongest edges
    page.hover("g.node[data-id='1_5_3']")
    detail = page.inner_text("#graph-detail")
    assert "after an animal" in detail and "3.000" in detail and "0.050" in detail
    assert "strongest inputs" in detail and "cats & <animals>" in detail and "-0.600" in detail
    assert "strongest outputs" in detail and 'Output " the"' in detail
    _shot(page, "browser-graph-hover.png")
    # layer 1's transcoder is the served SAE: its features link to the feature page; layer 0's do not
    assert page.get_attribute("#graph-detail a.feature-link", "href") == "/feature/5"
    page.hover("g.node[data-id='0_7_1']")      # layer 0: the page of the transcoder the graph records for it
    assert page.get_attribute("#graph-detail a.feature-link", "href") == "/graph/cat/feature/0/7"
    page.hover("g.node[data-id='0_0_2']")      # an error node: no feature page
    assert page.locator("#graph-detail a.feature-link").count() == 0
    page.click("g.node[data-id='1_5_3']")
    assert parse_qs(urlparse(page.url).query)["clickedId"] == ["1_5_3"]
    page.click("#graph-detail a.feature-link")
    page.wait_for_url("**/feature/5")
    assert "Feature 5" in page.title()
    page.go_back()
    page.wait_for_selector("#graph-svg g.node.clicked[data-id='1_5_3']")    # the clicked node came back from the URL
    assert page.errors == []


def test_pin_and_supernode(server, page):
    page.goto(server.url + "graph/cat")
    page.wait_for_selector("#graph-svg g.node")
    page.click("g.node[data-id='1_5_3']")
    page.click("#graph-detail .pin-btn")
    page.click("g.node[data-id='0_7_1']", modifiers=["Control"])
    page.click("g.node[data-id='0_3_2']", modifiers=["Control"])
    assert page.eval_on_selector_all("#pinned-t tr", "els => els.map(e => e.dataset.id)") == ["1_5_3", "0_7_1", "0_3_2"]
    assert page.locator("#graph-svg g.node.pinned").count() == 3
    page.check("input.sel[data-id='0_7_1']")
    page.check("input.sel[data-id='0_3_2']")
    page.fill("#supernode-name", "say cat")
    page.click("#group-go")
    q = parse_qs(urlparse(page.url).query)
    assert q["pinnedIds"] == ["1_5_3,0_7_1,0_3_2"]
    assert json.loads(q["supernodes"][0]) == [["say cat", "0_7_1", "0_3_2"]]      # Neuronpedia's qParams.supernodes
    assert page.locator("#graph-svg rect.supernode-box[data-name='say cat']").count() == 1
    # the pinned subgraph draws the supernode as one box, joined to the pinned feature it feeds
    sub = page.eval_on_selector_all("#subgraph-svg g.snode", "els => els.map(e => e.dataset.id)")
    assert sorted(sub) == ["1_5_3", "sn:say cat"]
    sub_edges = page.eval_on_selector_all("#subgraph-svg path.edge", "els => els.map(e => [e.dataset.source, "
                                          "e.dataset.target, e.querySelector('title').textContent])")
    assert [e[:2] for e in sub_edges] == [["sn:say cat", "1_5_3"]]
    assert sub_edges[0][2].endswith(": 1.800")            # 0.7 + 1.1, the two members' edges summed
    _shot(page, "browser-graph-supernode.png")
    # a second group of the same name gets its own name; "download with pins" writes them into qParams
    page.check("input.sel[data-id='1_5_3']")
    page.fill("#supernode-name", "say cat")
    page.click("#group-go")
    names = page.eval_on_selector_all("#supernodes .sn", "els => els.map(e => e.dataset.name)")
    assert names == ["say cat", "say cat (2)"]
    with page.expect_download() as dl:
        page.click("#graph-download")
    saved = json.loads(Path(dl.value.path()).read_text())
    from circuit_tracer.frontend.graph_models import Model

    Model.model_validate(saved)
    assert saved["qParams"]["pinnedIds"] == ["1_5_3", "0_7_1", "0_3_2"] and saved["qParams"]["clickedId"] == "1_5_3"
    assert saved["qParams"]["supernodes"] == [["say cat", "0_7_1", "0_3_2"], ["say cat (2)", "1_5_3"]]
    assert saved["nodes"] == build_graph(transcoders=["tiny:another-transcoder", SERVED])["nodes"]
    page.click("#supernodes .sn[data-name='say cat (2)'] .ungroup")
    # a reload restores pins and supernodes from the URL
    page.reload()
    page.wait_for_selector("#subgraph-svg g.snode.supernode")
    assert page.locator("#graph-svg g.node.pinned").count() == 3
    page.click("#supernodes .ungroup")
    assert "supernodes" not in parse_qs(urlparse(page.url).query)
    page.click("#pin-clear")
    assert page.locator("#graph-svg g.node.pinned").count() == 0 and "pinnedIds" not in page.url
    assert page.errors == []


def test_thresholds_filter_in_the_browser(server, page):
    page.goto(server.url + "graph/cat")
    page.wait_for_selector("#graph-svg g.node")
    for node_t, edge_t in ((0.25, 0.02), (0.8, 0.3), (1.0, 0.0)):
        page.eval_on_selector("#node-threshold", f"e => {{ e.value = {node_t}; e.dispatchEvent(new Event('input')); }}")
        page.eval_on_selector("#edge-threshold", f"e => {{ e.value = {edge_t}; e.dispatchEvent(new Event('input')); }}")
        nodes, edges = _expected(node_t, edge_t)
        page.wait_for_function(f"document.getElementById('node-threshold-v').textContent === '{node_t:.2f}' && "
                               f"document.getElementById('edge-threshold-v').textContent === '{edge_t:.2f}'")
        ids, drawn = _drawn(page)
        assert ids == nodes and len(drawn) == len(edges), (node_t, edge_t)
        assert page.inner_text("#graph-counts") == f"{len(nodes)} of 15 nodes, {len(edges)} of 16 edges"
    assert len(_expected(0.25, 0.02)[0]) < len(_expected(1.0, 0.0)[0])
    assert page.errors == []


def test_graph_without_links(server, page):
    page.goto(server.url + "graph/empty?pinnedIds=E_101_1,not-a-node&supernodes=%5Bbroken")
    page.wait_for_selector("#graph-svg g.node")
    assert page.inner_text("#graph-counts") == "5 of 5 nodes, 0 of 0 edges"
    assert page.locator("#pinned-t tr").count() == 1            # unknown ids and unreadable supernodes are dropped
    page.hover("g.node[data-id='E_101_1'] > :first-child")     # the shape (a pinned node's label is wider)
    assert "Emb: The" in page.inner_text("#graph-detail") and "strongest" not in page.inner_text("#graph-detail")
    assert page.errors == []


def test_intervention_panel(server, page):
    """The panel posts the selected features and shows both sides; the reply is the route's JSON shape
    (served here by the browser's request interception, so this test is about the page, not the model)."""
    sent = []
    reply = {"baseline": {"top": [{"token": " the", "prob": 0.61}, {"token": " a", "prob": 0.22}], "text": " the mat."},
             "intervened": {"top": [{"token": " a", "prob": 0.4}], "text": " a chair."}}

    def handle(route):
        sent.append(json.loads(route.request.post_data))
        route.fulfill(status=200, content_type="application/json", body=json.dumps(reply))

    page.route("**/api/graph/cat/intervene", handle)
    page.goto(server.url + "graph/cat?pinnedIds=1_5_3,E_101_1")
    page.wait_for_selector("#pinned-t")
    page.check("input.sel[data-id='1_5_3']")
    page.check("input.sel[data-id='E_101_1']")            # not a feature: left out of the request
    page.select_option("#intervene-mode", "clamp")
    page.fill("#intervene-value", "-2.5")
    page.click("#intervene-go")
    page.wait_for_selector("#intervene-out table.iv")
    assert sent == [{"nodes": ["1_5_3"], "mode": "clamp", "value": -2.5, "max_new_tokens": 12, "all_positions": False}]
    out = page.inner_text("#intervene-out")
    assert "clamped to -2.5" in out and " the mat." in out and " a chair." in out and "0.610" in out
    _shot(page, "browser-graph-intervene.png")
    page.unroute("**/api/graph/cat/intervene")
    assert page.errors == []


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_intervention_on_a_traced_graph(server, page):
    """End to end: the page, the route, saescope.graph.intervene and the model (skipped without saescope.graph)."""
    pytest.importorskip("saescope.graph")
    graph = json.loads(urlopen(server.url + "api/graph/traced").read())
    feats = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    node = max(feats, key=lambda n: (n["ctx_idx"], n["activation"]))["node_id"]
    page.goto(server.url + f"graph/traced?pinnedIds={node}")
    page.wait_for_selector("#pinned-t")
    page.check(f"input.sel[data-id='{node}']")
    page.select_option("#intervene-mode", "clamp")
    page.fill("#intervene-value", "30")
    page.fill("#intervene-max", "3")
    with page.expect_response("**/api/graph/traced/intervene") as resp:
        page.click("#intervene-go")
    d = resp.value.json()
    page.wait_for_selector("#intervene-out table.iv")
    cells = page.locator("#intervene-out table.iv > tbody > tr > td")
    for i, side in enumerate(("baseline", "intervened")):
        first = d[side]["top"][0]
        text = cells.nth(i).inner_text()
        assert json.dumps(first["token"]) in text and f"{first['prob']:.3f}" in text
    assert cells.nth(3).inner_text().strip() == d["intervened"]["generation"].strip()
    assert page.inner_text("#intervene-err") == "" and page.errors == []
    _shot(page, "browser-graph-traced-intervene.png")

