"""The graph pages on a graph made by ``saescope.graph.trace`` (the bundled tiny model, random per-layer
transcoders saved to disk), and the intervention route end to end: its baseline is the model's own next-token
distribution, a turned-off feature changes the prediction exactly as the same edit through ``saescope.interp``'s
clamp hook does, and the feature links follow the transcoder being served."""
from __future__ import annotations

import json

import pytest
import torch

from graph_fixtures import random_transcoders

pytest.importorskip("saescope.graph")
pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "The cat sat on the"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fastapi.testclient import TestClient

    from saescope.graph import trace, write_json
    from saescope.lm import LanguageModel
    from saescope.server import create_app

    tmp = tmp_path_factory.mktemp("traced")
    lm = LanguageModel.from_pretrained("tiny", dtype=torch.float32)
    tcs = random_transcoders(lm, tmp)
    graphs = tmp / "graphs"
    graphs.mkdir()
    g = trace(lm, tcs, PROMPT, quiet=True)
    write_json(g, graphs / "cat.json", node_threshold=0.9, edge_threshold=0.99)
    g.save(graphs / "compact.safetensors")           # saescope's compact format: shown pruned by the defaults
    (graphs / "broken.safetensors").write_bytes((graphs / "compact.safetensors").read_bytes()[:4000])
    served = tcs[1]
    client = TestClient(create_app(lm, served, str(served.path), graphs=[graphs]))
    return client, lm, tcs, json.loads((graphs / "cat.json").read_text()), g


def test_traced_graph_pages(setup):
    from circuit_tracer.frontend.graph_models import Model

    client, lm, tcs, graph, _ = setup
    Model.model_validate(graph)
    assert client.get("/api/graph/cat").json() == graph
    page = client.get("/graph/cat")
    assert page.status_code == 200
    config = json.loads(page.text.split('id="graph-config">')[1].split("</script>")[0])
    assert config["link_layers"] == ["1"]              # the served SAE is layer 1's transcoder
    assert config["transcoder_layers"] == [str(L) for L in range(lm.info.n_layers)]
    feats = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder" and n["layer"] == "1"]
    if feats:
        assert client.get("/feature/" + feats[0]["node_id"].split("_")[1]).status_code == 200
    # another layer's feature page: that layer's transcoder, loaded from the path the graph records
    for L in (0, 2):
        r = client.get(f"/graph/cat/feature/{L}/3")
        assert r.status_code == 200 and str(tcs[L].path) in r.text and "Logit lens" in r.text


def _feature_node(graph):
    feats = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats, "the traced graph has no feature nodes"
    last = max(n["ctx_idx"] for n in feats)
    return max((n for n in feats if n["ctx_idx"] == last), key=lambda n: n["activation"])


def test_intervene_route_end_to_end(setup):
    from saescope.interp.steer import Intervention, SteeringHook
    from saescope.site import attach

    client, lm, tcs, graph, _ = setup
    node = _feature_node(graph)
    layer, feat, pos = (int(x) for x in node["node_id"].split("_"))
    r = client.post("/api/graph/cat/intervene", json={"nodes": [node["node_id"]], "mode": "clamp", "value": 25.0,
                                                      "max_new_tokens": 4, "top_k": 5})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["graph"] == "cat" and d["mode"] == "clamp" and len(d["baseline"]["top"]) == 5
    assert isinstance(d["baseline"]["generation"], str) and isinstance(d["intervened"]["generation"], str)
    # baseline: the model's own distribution after the prompt, as the transcoders tokenise it
    att = attach(lm, tcs[layer])
    ids = att.tokens(PROMPT, reserve=4, truncate=False, what="prompt")
    with torch.no_grad():
        p = torch.softmax(lm(ids)[0, -1].float(), -1)
        hook = SteeringHook(att, [Intervention((feat,), "clamp", 25.0, f"at:{pos}")]).edits()
        with lm.intervene(hook):
            q = torch.softmax(lm(ids)[0, -1].float(), -1)
    for side, probs in (("baseline", p), ("intervened", q)):
        top = d[side]["top"]
        assert [t["id"] for t in top] == probs.topk(5).indices.tolist()
        assert [t["prob"] for t in top] == pytest.approx(probs.topk(5).values.tolist(), rel=1e-5)
    assert not torch.allclose(p, q)                      # the clamp moved the prediction
    off = client.post("/api/graph/cat/intervene", json={"nodes": [node["node_id"]], "mode": "off"})
    assert off.status_code == 200 and off.json()["baseline"]["top"][:5] == d["baseline"]["top"]
    assert off.json()["nodes"] == [{"layer": layer, "position": pos, "feature": feat, "value": 0.0}]
    every = client.post("/api/graph/cat/intervene",
                        json={"nodes": [node["node_id"]], "mode": "off", "all_positions": True})
    assert every.status_code == 200
    assert every.json()["nodes"] == [{"layer": layer, "position": None, "feature": feat, "value": 0.0}]


def test_compact_graph_files_are_shown(setup):
    from saescope.graph import to_json

    client, lm, tcs, graph, g = setup
    rows = {r["name"]: r for r in client.get("/api/graphs").json()}
    assert set(rows) == {"cat", "compact", "broken"}
    assert rows["broken"]["error"].startswith("broken.safetensors: ") and "\n" not in rows["broken"]["error"]
    assert client.get("/api/graph/compact").json() == json.loads(json.dumps(to_json(g, slug="compact")))
    assert client.get("/graph/compact").status_code == 200
    r = client.get("/graph/broken")
    assert r.status_code == 422 and "Traceback" not in r.text

