"""Agreement with circuit-tracer 0.5.0 (TransformerLens backend) on the same GPT-2 weights and per-layer skip
transcoders: same active features, same logit targets, edge weights within 1e-4 relative.

circuit-tracer runs in a subprocess ($SAESCOPE_CIRCUIT_TRACER_PYTHON, else this interpreter); it needs a
transformers/huggingface_hub it imports with (it was run with transformers 4.57.3, TransformerLens 3.2.1).
The test skips, with the reason, when circuit-tracer cannot be imported there."""
from __future__ import annotations

import json

import pytest
import torch

import graph_case
import model_zoo
from saescope.graph import Graph, ReplacementModel, attribute, to_json
from saescope.lm import LanguageModel


def test_edges_match_circuit_tracer(tmp_path):
    why = graph_case.peer_unavailable()
    if why:
        pytest.skip(why)
    d = model_zoo.build("gpt2", tmp_path / "gpt2", n_layers=3)
    lm = LanguageModel.from_pretrained(str(d), dtype=torch.float32)
    tcs = graph_case.random_transcoders(lm, d_sae=256, threshold=2.0)
    graph_case.save_circuit_tracer_layout(tcs, tmp_path / "tc")
    rm = ReplacementModel(lm, tcs)
    ids = rm.tokens("The cat sat on the mat and then it ran")
    ours = attribute(rm, ids, quiet=True)
    peer, info = graph_case.run_peer(d, tmp_path / "tc", ids[0].tolist(), tmp_path)
    assert torch.equal(peer["active_features"], ours.setup.features)
    assert torch.equal(peer["logit_ids"], ours.targets.token_ids)
    assert torch.allclose(peer["activation_values"], ours.setup.activations.cpu(), rtol=1e-4, atol=1e-5)
    A, B = ours.adjacency, peer["adjacency"]
    assert A.shape == B.shape and ours.n_features > 100
    scale = B.abs().max()
    big = B.abs() > 1e-3 * scale                   # edges of the active nodes that matter
    assert ((A - B).abs() <= 1e-4 * B.abs() + 1e-6 * scale).all(), float(((A - B).abs()[big] / B.abs()[big]).max())
    assert float((A - B).abs().max() / scale) < 1e-5

    # the Neuronpedia JSON: circuit-tracer's create_graph_files vs saescope's to_json on the same (its) adjacency
    theirs = json.loads((tmp_path / "ct.json").read_text())
    g = Graph("", ids[0], theirs["metadata"]["prompt_tokens"], peer["active_features"], peer["activation_values"],
              B, peer["logit_ids"], peer["logit_probs"], [lm.to_string(torch.tensor([int(t)])) for t in peer["logit_ids"]],
              3, "test")
    mine = to_json(g, slug="ct", node_threshold=0.8, edge_threshold=0.98)
    assert [n["node_id"] for n in mine["nodes"]] == [n["node_id"] for n in theirs["nodes"]]
    for a, b in zip(mine["nodes"], theirs["nodes"]):
        assert set(a) == set(b)
        for k in a:
            if isinstance(b[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["node_id"], k)
            elif k != "clerp" or b["feature_type"] != "logit":
                assert a[k] == b[k], (a["node_id"], k, a[k], b[k])
    assert [(lk["source"], lk["target"]) for lk in mine["links"]] == [(lk["source"], lk["target"]) for lk in theirs["links"]]
    assert [lk["weight"] for lk in mine["links"]] == pytest.approx([lk["weight"] for lk in theirs["links"]], rel=1e-6)
    assert mine["qParams"] == theirs["qParams"] and set(mine["metadata"]) == set(theirs["metadata"])
