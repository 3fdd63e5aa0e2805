"""Saved attribution graphs in the web app, over HTTP (FastAPI's TestClient): the list page, the view page, the JSON
route, and what a hostile or broken graphs folder gets (a 404/422 page with one line, never a traceback, never a
file outside the folder). Graph files are written with circuit-tracer's own graph-file models (graph_fixtures)."""
from __future__ import annotations

import json
import re

import pytest

from graph_fixtures import FEATURES, build_graph, write_graph

pytestmark = pytest.mark.usefixtures("one_thread")
SERVED = "tiny:resid2-topk"


@pytest.fixture(scope="module")
def lm_sae():
    from saescope.lm import LanguageModel
    from saescope.sae import SAE

    lm = LanguageModel.from_pretrained("tiny")
    return lm, SAE.from_spec(SERVED)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    write_graph(d / "cat.json", transcoders=["tiny:another-transcoder", SERVED])
    hostile = build_graph(slug="hostile")
    hostile["nodes"][6]["clerp"] = "</script><script>alert(1)</script><!--"
    hostile["metadata"]["prompt"] = "<img src=x onerror=alert(1)>"
    hostile["metadata"]["info"] = {"replacement_score": 0.61234, "completeness_score": "<b>"}
    (d / "hostile.json").write_text(json.dumps(hostile))
    (d / "truncated.json").write_text('{"metadata": {"prompt_tokens": ["a"]}, "nodes": [')
    dangling = build_graph()
    dangling["links"].append({"source": "E_100_0", "target": "no-such-node", "weight": 1.0})
    (d / "dangling.json").write_text(json.dumps(dangling))
    (d / "graph-metadata.json").write_text(json.dumps({"graphs": []}))     # circuit-tracer's folder index
    (d / "notes.txt").write_text("not a graph")
    from safetensors.torch import save_file
    import torch

    save_file({"W_enc": torch.zeros(2, 2)}, str(d / "sae_weights.safetensors"))     # weights, not a graph: not listed
    (d / "junk.safetensors").write_bytes(b"\xff" * 64)
    (d.parent / "outside.json").write_text(json.dumps(build_graph(slug="outside")))
    return d


@pytest.fixture(scope="module")
def client(lm_sae, folder):
    from fastapi.testclient import TestClient

    from saescope.server import create_app

    lm, sae = lm_sae
    return TestClient(create_app(lm, sae, SERVED, graphs=[folder]))


def _embedded(page: str, element_id: str):
    m = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_list_page_and_api(client, folder):
    rows = {r["name"]: r for r in client.get("/api/graphs").json()}
    assert set(rows) == {"cat", "hostile", "truncated", "dangling"}       # not graph-metadata.json, not notes.txt
    assert rows["cat"]["prompt"] == "The cat sat on" and rows["cat"]["n_nodes"] == 15 and rows["cat"]["n_links"] == 16
    assert rows["truncated"]["error"].startswith("truncated.json: not valid JSON (line 1")
    assert "dangling.json: links[16].target: missing or not the node_id of a node" in rows["dangling"]["error"]
    page = client.get("/graphs")
    assert page.status_code == 200 and 'href="/graph/cat"' in page.text and "not valid JSON" in page.text
    assert 'id="graphs-link"' in client.get("/").text          # the index links to the graphs


def test_api_graph_is_the_file_and_valid_for_circuit_tracer(client, folder):
    from circuit_tracer.frontend.graph_models import Model

    r = client.get("/api/graph/cat")
    assert r.status_code == 200 and r.json() == json.loads((folder / "cat.json").read_text())
    Model.model_validate(r.json())                  # still the peer's schema


def test_view_page_embeds_the_graph_and_the_link_layers(client, folder):
    r = client.get("/graph/cat")
    assert r.status_code == 200 and '<script src="/static/graph.js"></script>' in r.text
    assert _embedded(r.text, "graph-data") == json.loads((folder / "cat.json").read_text())
    config = _embedded(r.text, "graph-config")
    # transcoder_list[1] is the served SAE: layer 1 features link to /feature/<id>; layer 0 (another one) does not
    assert config["link_layers"] == ["1"] and config["feature_url"] == "/feature/"
    assert config["transcoder_layers"] == ["0", "1"] and config["layer_feature_url"] == "/graph/cat/feature/"
    assert config["api"] == "/api/graph/cat"
    facts = re.search(r'<p class="muted" id="graph-facts">(.*?)</p>', r.text).group(1)
    assert facts == "5 tokens · 15 nodes · 16 links · pruned at node threshold 0.8 · model saescope-test"
    assert client.get("/static/graph.js").status_code == 200 and client.get("/static/graph.css").status_code == 200
    layer1 = [f for f in FEATURES if f[0] == 1]
    for _, _, idx, *_ in layer1:
        assert client.get(f"/feature/{idx}").status_code == 200       # the link targets exist


def test_layer_feature_pages(client):
    # layer 1's transcoder is the served SAE: its page there; layer 0's is not loadable here: one line, no traceback
    r = client.get("/graph/cat/feature/1/5")
    assert r.status_code == 200 and "Feature 5" in r.text and "tiny:resid2-topk" in r.text
    assert 'href="/graph/cat/feature/1/' in r.text                     # nearest features stay in this transcoder
    assert client.get("/graph/cat/feature/1/100000").status_code == 404
    r = client.get("/graph/cat/feature/0/7")
    assert r.status_code == 422 and "Traceback" not in r.text and "tiny:another-transcoder" in r.text
    assert client.get("/graph/cat/feature/5/7").status_code == 404       # no transcoder recorded for layer 5
    assert client.get("/graph/hostile/feature/0/7").status_code == 404   # the graph records none
    assert client.get("/graph/nope/feature/0/7").status_code == 404
    assert client.get("/graph/truncated/feature/0/7").status_code == 422


def test_hostile_label_stays_inside_its_script(client):
    r = client.get("/graph/hostile")
    assert r.status_code == 200
    assert "<script>alert(1)" not in r.text and "<!--" not in r.text.split("<main>")[1] and "<img" not in r.text
    assert "<img" not in client.get("/graphs").text and "&lt;img src=x" in client.get("/graphs").text
    facts = re.search(r'<p class="muted" id="graph-facts">(.*?)</p>', r.text).group(1)
    assert facts.endswith("replacement score 0.612 · model saescope-test")      # a non-number score: left out
    data = _embedded(r.text, "graph-data")
    assert data["nodes"][6]["clerp"] == "</script><script>alert(1)</script><!--"


@pytest.mark.parametrize("name", ["truncated", "dangling"])
def test_bad_files_give_a_one_line_422_page(client, name):
    r = client.get(f"/graph/{name}")
    assert r.status_code == 422 and "Traceback" not in r.text and f"{name}.json: " in r.text
    msg = re.search(r'<p class="err">(.*?)</p>', r.text).group(1)
    assert "\n" not in msg
    api = client.get(f"/api/graph/{name}")
    assert api.status_code == 422 and api.json()["detail"].startswith(f"{name}.json: ")


@pytest.mark.parametrize("name", ["outside", "..%2Foutside", "../outside", "%2E%2E%2Foutside", "graph-metadata",
                                  "notes", "notes.txt", "cat.json", "nope", "%2E%2E", "sae_weights", "junk"])
def test_only_listed_names_are_opened(client, name):
    for url in (f"/graph/{name}", f"/api/graph/{name}"):
        r = client.get(url)
        assert r.status_code == 404 and '"slug"' not in r.text and "Traceback" not in r.text, (url, r.status_code)


def test_host_check_applies(client):
    assert client.get("/api/graph/cat", headers={"host": "evil.example"}).status_code == 421


def test_file_limits(tmp_path):
    from saescope.errors import InputError
    from saescope.server.graph_files import GraphFolder

    write_graph(tmp_path / "big.json")
    with pytest.raises(InputError, match=r"big.json: .* bytes is more than the 100-byte limit"):
        GraphFolder([tmp_path], max_bytes=100).load("big")
    (tmp_path / "big.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputError, match="big.json: not UTF-8"):
        GraphFolder([tmp_path]).load("big")
    g = build_graph()
    g["nodes"][3]["ctx_idx"] = 99
    (tmp_path / "big.json").write_text(json.dumps(g))
    with pytest.raises(InputError, match=r"nodes\[3\]\.ctx_idx: missing or not a position of the 5 prompt tokens"):
        GraphFolder([tmp_path]).load("big")
    g = build_graph()
    g["nodes"][6]["layer"] = "mlp"
    (tmp_path / "big.json").write_text(json.dumps(g))
    with pytest.raises(InputError, match=r"nodes\[6\]\.layer: 'mlp' is not a layer number"):
        GraphFolder([tmp_path]).load("big")
    g = build_graph()
    g["links"][0]["weight"] = float("nan")
    (tmp_path / "big.json").write_text(json.dumps(g))
    with pytest.raises(InputError, match=r"links\[0\]\.weight: missing or not a finite number"):
        GraphFolder([tmp_path]).load("big")


def test_link_layers_by_spec_or_directory(tmp_path):
    from saescope.assets import tiny_sae_dir
    from saescope.server.graph_files import feature_link_layers

    g = build_graph(transcoders=[str(tiny_sae_dir()), "tiny:x"])
    assert feature_link_layers(g, SERVED, [tiny_sae_dir()]) == ["0"]
    g["metadata"]["info"] = {"transcoders": {"1": {"sae": SERVED}}}        # saescope's own field wins
    assert feature_link_layers(g, SERVED, []) == ["1"]
    assert feature_link_layers(build_graph(), SERVED, []) == []           # a graph that does not say: no links


def test_intervene_validates_nodes(client):
    r = client.post("/api/graph/cat/intervene", json={"nodes": ["E_101_1"], "mode": "off"})
    assert r.status_code == 422 and "not a transcoder feature" in r.json()["detail"]
    r = client.post("/api/graph/cat/intervene", json={"nodes": ["9_9_9"], "mode": "off"})
    assert r.status_code == 422 and "'9_9_9' is not in graph 'cat'" in r.json()["detail"]
    r = client.post("/api/graph/cat/intervene", json={"nodes": ["1_5_3"], "mode": "sideways"})
    assert r.status_code == 422
    assert client.post("/api/graph/nope/intervene", json={"nodes": ["1_5_3"]}).status_code == 404
    r = client.post("/api/graph/hostile/intervene", json={"nodes": ["1_5_3"]})        # no transcoder_list
    assert r.status_code == 422 and "does not record its transcoders" in r.json()["detail"]


def test_cli_serve_missing_graphs_folder_is_one_line_exit_2(capsys, tmp_path):
    from saescope.cli import main

    code = main(["serve", "--port", "0", "--graphs", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--graphs" in err and "no such folder" in err
