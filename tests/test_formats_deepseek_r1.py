"""DeepSeek-R1-Distill SAE (deepseek_r1 family): ``encoder``/``decoder`` ReLU SAE equal SAELens."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, pt_bytes, randn, report, saelens_ref
from saescope.sae import SAE

D, D_SAE = 48, 192


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(17)
    add_repo(hub_cache, "qresearch/DeepSeek-R1-Distill-Llama-8B-SAE-l19", {"DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt": pt_bytes({
        "encoder.weight": randn(g, D_SAE, D, scale=0.3).bfloat16(), "encoder.bias": randn(g, D_SAE, scale=0.3, shift=-0.2).bfloat16(),
        "decoder.weight": randn(g, D, D_SAE, scale=0.2).bfloat16(), "decoder.bias": randn(g, D, scale=0.1).bfloat16()})})
    return hub_cache


def test_equals_saelens(cache, monkeypatch):
    release, sae_id = "deepseek-r1-distill-llama-8b-qresearch", "blocks.19.hook_resid_post"
    ours = SAE.from_pretrained(release, sae_id)
    assert ours.dtype == torch.float32  # bf16 file, computed in fp32 on the CPU
    assert (ours.cfg.architecture, ours.cfg.apply_b_dec_to_input) == ("relu", False)
    assert ours.cfg.metadata.model_name == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    ref = saelens_ref(release, sae_id, monkeypatch, overrides={"d_in": D, "d_sae": D_SAE})
    report("deepseek_r1", compare(ours, ref, randn(torch.Generator().manual_seed(1), 2, 7, D)))
