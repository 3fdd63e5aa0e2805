"""Goodfire (goodfire family): ``encoder_linear``/``decoder_linear`` ReLU SAEs equal SAELens."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, pt_bytes, randn, report, saelens_ref
from saescope.sae import SAE

D, D_SAE = 48, 192


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(13)
    add_repo(hub_cache, "Goodfire/Llama-3.1-8B-Instruct-SAE-l19", {"Llama-3.1-8B-Instruct-SAE-l19.pth": pt_bytes({
        "encoder_linear.weight": randn(g, D_SAE, D, scale=0.3), "encoder_linear.bias": randn(g, D_SAE, scale=0.3, shift=-0.2),
        "decoder_linear.weight": randn(g, D, D_SAE, scale=0.2), "decoder_linear.bias": randn(g, D, scale=0.1)})})
    return hub_cache


def test_equals_saelens(cache, monkeypatch):
    ours = SAE.from_pretrained("goodfire-llama-3.1-8b-instruct", "layer_19")
    m = ours.cfg.metadata
    assert (ours.cfg.architecture, ours.cfg.apply_b_dec_to_input) == ("relu", False)
    assert (m.hook_name, m.model_name) == ("blocks.19.hook_resid_post", "meta-llama/Llama-3.1-8B-Instruct")
    ref = saelens_ref("goodfire-llama-3.1-8b-instruct", "layer_19", monkeypatch, overrides={"d_in": D, "d_sae": D_SAE})
    report("goodfire", compare(ours, ref, randn(torch.Generator().manual_seed(1), 2, 7, D)))
