"""Llama Scope (llama_scope family): ``hyperparams.json`` + ``checkpoints/final.safetensors`` JumpReLU SAEs with
the dataset-norm scaling folded into the weights, equal SAELens (which folds the release's norm_scaling_factor
and scales the scalar threshold by sqrt(d_model) / dataset_average_activation_norm.in)."""
from __future__ import annotations

import math

import pytest
import torch

from formats_ref import add_repo, compare, json_bytes, randn, report, saelens_ref, st_bytes
from saescope.sae import SAE

D, D_SAE, NORM_IN = 64, 512, 0.9
REL, SAE_ID, PATH = "llama_scope_lxr_8x", "l3r_8x", "Llama3_1-8B-Base-L3R-8x"


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(19)
    hp = {"d_model": D, "d_sae": D_SAE, "hook_point_in": "blocks.3.hook_resid_post",
          "hook_point_out": "blocks.3.hook_resid_post", "jump_relu_threshold": 0.05,
          "dataset_average_activation_norm": {"in": NORM_IN, "out": NORM_IN}}
    weights = {"encoder.weight": randn(g, D_SAE, D, scale=0.2), "encoder.bias": randn(g, D_SAE, scale=0.2),
               "decoder.weight": randn(g, D, D_SAE, scale=0.1), "decoder.bias": randn(g, D, scale=0.1)}
    add_repo(hub_cache, "fnlp/Llama3_1-8B-Base-LXR-8x", {
        f"{PATH}/hyperparams.json": json_bytes(hp),
        f"{PATH}/checkpoints/final.safetensors": st_bytes({k: v.bfloat16() for k, v in weights.items()})})
    return hub_cache


def test_equals_saelens(cache, monkeypatch):
    from saescope.sae.registry import get_release

    s = get_release(REL).sae(SAE_ID).norm_scaling_factor
    assert s == pytest.approx(20.177339901477833)  # the release list's value for this SAE
    ours = SAE.from_pretrained(REL, SAE_ID)
    m = ours.cfg.metadata
    assert (ours.cfg.architecture, ours.cfg.apply_b_dec_to_input, ours.cfg.input_transform) == ("jumprelu", False, "none")
    assert (m.hook_name, m.model_name, m.extra["norm_scaling_factor_folded"]) == ("blocks.3.hook_resid_post",
                                                                                  "meta-llama/Llama-3.1-8B", s)
    assert torch.allclose(ours.threshold, torch.full((D_SAE,), 0.05 * math.sqrt(D) / NORM_IN))
    ref = saelens_ref(REL, SAE_ID, monkeypatch)
    x = randn(torch.Generator().manual_seed(1), 2, 7, D, scale=1.0 / s)   # raw activations: x * s ~ unit scale
    report("llama_scope", compare(ours, ref, x))
