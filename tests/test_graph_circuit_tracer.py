"""Agreement with circuit-tracer 0.5.0 (TransformerLens backend) on the same GPT-2 weights and per-layer skip
transcoders: same active features, same logit targets, edge weights within 1e-4 relative.

circuit-tracer runs in a subprocess ($SAESCOPE_CIRCUIT_TRACER_PYTHON, else this interpreter); it needs a
transformers/huggingface_hub it imports with (it was run with transformers 4.57.3, TransformerLens 3.2.1).
The test skips, with the reason, when circuit-tracer cannot be imported there."""
from __future__ import annotations

import pytest
import torch

import graph_case
import model_zoo
from saescope.graph import ReplacementModel, attribute
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
