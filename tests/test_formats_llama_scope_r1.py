"""Llama Scope R1-Distill (llama_scope_r1_distill family): ``config.json`` + ``sae_weights.safetensors`` with
``log_jumprelu_threshold`` and the release's norm scaling folded, equal SAELens."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, json_bytes, randn, report, saelens_ref, st_bytes
from saescope.sae import SAE

D, FACTOR = 48, 4
REL, SAE_ID, PATH = "llama_scope_r1_distill", "l5r_800m_slimpajama", "800M-Slimpajama-0-OpenR1-Math-220k/L5R"


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(23)
    d_sae = D * FACTOR
    add_repo(hub_cache, "fnlp/Llama-Scope-R1-Distill", {
        f"{PATH}/config.json": json_bytes({"d_model": D, "expansion_factor": FACTOR,
                                           "hook_point_in": "blocks.5.hook_resid_post"}),
        f"{PATH}/sae_weights.safetensors": st_bytes({
            "encoder.weight": randn(g, d_sae, D, scale=0.2), "encoder.bias": randn(g, d_sae, scale=0.2),
            "decoder.weight": randn(g, D, d_sae, scale=0.1), "decoder.bias": randn(g, D, scale=0.1),
            "log_jumprelu_threshold": randn(g, d_sae, scale=0.5, shift=-2.5)})})
    return hub_cache


def test_equals_saelens(cache, monkeypatch):
    from saescope.sae.registry import get_release

    s = get_release(REL).sae(SAE_ID).norm_scaling_factor
    ours = SAE.from_pretrained(REL, SAE_ID)
    assert ours.cfg.metadata.hook_name == "blocks.5.hook_resid_post"
    assert ours.cfg.metadata.model_name == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    ref = saelens_ref(REL, SAE_ID, monkeypatch)
    x = randn(torch.Generator().manual_seed(1), 2, 7, D, scale=1.0 / s)
    report("llama_scope_r1", compare(ours, ref, x))
