"""Attribution graphs (saescope.graph): exact replacement model, completeness of every node, files, interventions,
CLI. Random-weight per-layer transcoders (tests/graph_case.py) on the bundled tiny model and a GPT-2 zoo model."""
from __future__ import annotations

import json

import pytest
import torch

import graph_case
import model_zoo
from saescope.errors import SaescopeError
from saescope.graph import (ReplacementModel, attribute, constant_terms, intervene, load_graph, load_transcoders,
                            trace)
from saescope.lm import LanguageModel

PROMPT = "The cat sat on the mat because it"


@pytest.fixture(scope="module")
def tiny():
    lm = LanguageModel.from_pretrained("tiny", dtype=torch.float32)
    return lm, graph_case.random_transcoders(lm, d_sae=128, threshold=2.5)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    d = model_zoo.build("gpt2", tmp_path_factory.mktemp("gpt2"), n_layers=3)
    lm = LanguageModel.from_pretrained(str(d), dtype=torch.float32)
    graph_case.realistic_embedding_scale(lm)
    return lm, graph_case.random_transcoders(lm, d_sae=128, threshold=2.0)


def _completeness(lm, tcs, n_rows=6):
    """Each checked target: pre-activation (from the forward pass) vs incoming edges + constant terms (the model's
    biases, position embeddings and b_dec, read by separate backward passes). Returns the largest difference."""
    rm = ReplacementModel(lm, tcs)
    ids = rm.tokens(PROMPT)
    assert rm.check_exact(ids) < 1e-4
    att = attribute(rm, ids, quiet=True)
    n_f, n = att.n_features, att.adjacency.shape[0]
    assert n_f > 10
    k = len(att.targets.token_ids)
    rows = sorted(set(torch.linspace(0, n_f - 1, n_rows).long().tolist())) + list(range(n - k, min(n, n - k + 2)))
    const = constant_terms(rm, att, rows)
    lg = att.setup.logits[-1].double()
    errs = []
    for r, c in zip(rows, const.tolist()):
        got = float(att.adjacency[r].double().sum()) + c
        if r < n_f:
            want = float(att.setup.pre[r])
        else:
            t = int(att.targets.token_ids[r - (n - k)])
            want = float(lg[t] - lg.mean())
        errs.append(abs(got - want))
    # a source's edges into targets it cannot reach (same or later layer, later position) are zero
    f = att.setup.features
    later = (f[:, None, 0] <= f[None, :, 0]) | (f[None, :, 1] > f[:, None, 1])
    assert att.adjacency[:n_f, :n_f][later].abs().max() == 0
    return max(errs)


def test_completeness_bundled_model(tiny):
    assert _completeness(*tiny) < 1e-4


def test_completeness_gpt2_shaped(gpt2):
    assert _completeness(*gpt2) < 1e-4


@pytest.fixture(scope="module")
def tiny_graph(tiny):
    return trace(*tiny, PROMPT, quiet=True)


def test_trace_files_round_trip(tiny_graph, tmp_path):
    g = tiny_graph
    assert g.info["max_logit_error"] < 1e-4 and 0 <= g.info["replacement_score"] <= 1
    compact = load_graph(g.save(tmp_path / "g.safetensors"))
    assert torch.equal(compact.adjacency, g.adjacency) and torch.equal(compact.features, g.features)
    assert compact.token_strings == g.token_strings and compact.transcoders == g.transcoders
    path = g.save(tmp_path / "g.json")
    raw = json.loads(path.read_text())
    assert set(raw) == {"metadata", "qParams", "nodes", "links"}
    assert {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp", "influence", "activation",
            "is_target_logit", "token_prob"} <= set(raw["nodes"][0])
    kinds = {n["feature_type"] for n in raw["nodes"]}
    assert {"embedding", "logit"} <= kinds
    back = load_graph(path)
    ids = {n["node_id"] for n in raw["nodes"]}
    for link in raw["links"][:50]:                     # every link is an edge of the full graph, same weight
        assert link["source"] in ids and link["target"] in ids
    w = {(lk["source"], lk["target"]): lk["weight"] for lk in raw["links"]}
    from saescope.graph.neuronpedia import node_ids
    full_ids, back_ids = node_ids(g), node_ids(back)
    for (s, t), weight in list(w.items())[:50]:
        assert g.adjacency[full_ids.index(t), full_ids.index(s)] == pytest.approx(weight)
        assert back.adjacency[back_ids.index(t), back_ids.index(s)] == pytest.approx(weight)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(SaescopeError):
        load_graph(tmp_path / "bad.safetensors")


def test_intervene_turn_off_changes_prediction(tiny, tiny_graph):
    lm, tcs = tiny
    g = tiny_graph
    last = g.n_pos - 1
    # the feature at the last position with the largest direct effect on the top logit
    row = g.adjacency[g.logit_index(0), :g.n_features].clone()
    row[g.features[:, 1] != last] = 0
    i = int(row.abs().argmax())
    L, p, f = g.features[i].tolist()
    same = intervene(lm, tcs, PROMPT, [(L, p, f, float(g.activations[i]))], max_new_tokens=2)
    assert same.baseline.top[0]["prob"] == pytest.approx(same.intervened.top[0]["prob"], abs=1e-5)
    off = intervene(lm, tcs, PROMPT, [{"node_id": f"{L}_{f}_{p}", "value": 0}], max_new_tokens=2)
    assert off.baseline.top[0]["id"] == int(g.logit_ids[0])
    assert off.intervened.top != off.baseline.top
    assert json.dumps(off.to_dict())
    with pytest.raises(SaescopeError):
        intervene(lm, tcs, PROMPT, [(9, 0, 0, 0.0)])


def test_bad_input(tiny):
    lm, tcs = tiny
    with pytest.raises(SaescopeError, match="no transcoder for layer"):
        ReplacementModel(lm, tcs[:-1])
    with pytest.raises(SaescopeError, match="no-such"):
        load_transcoders(lm, "tiny:mlp{L}-no-such")


def test_cli_trace(tmp_path, tiny, capsys):
    from saescope.cli import main

    lm, tcs = tiny
    for L, t in enumerate(tcs):
        t.save(tmp_path / "tcs" / f"layer{L}")
        labels = {str(i): f"L{L} feature {i}" for i in range(t.d_sae)}
        (tmp_path / "tcs" / f"layer{L}" / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "g.json"
    assert main(["trace", PROMPT, "--transcoders", str(tmp_path / "tcs"), "--out", str(out), "--json",
                 "--node-threshold", "1", "--edge-threshold", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["features"] > 0 and out.is_file()
    feats = [n for n in json.loads(out.read_text())["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats and all(n["clerp"] == f"L{n['layer']} feature {n['node_id'].split('_')[1]}" for n in feats)
    assert main(["trace", "The cat", "--transcoders", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert main(["trace", "The cat", "--out", str(tmp_path / "g.txt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
