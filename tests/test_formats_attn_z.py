"""Kissane & Krzyzanowski hook_z SAEs (connor_rob_hook_z family): ``NAME.pt`` + ``NAME_cfg.json`` equal SAELens on
the same (TransformerLens hook_z) input; the value-bias shift to raw z is tested in test_sae_release.py."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, json_bytes, pt_bytes, randn, report, saelens_ref
from saescope.sae import SAE
from saescope.sae.registry import get_release

D, D_SAE, N_HEADS = 32, 128, 4
REL, SAE_ID = "gpt2-small-hook-z-kk", "blocks.7.hook_z"


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(61)
    path = get_release(REL).sae(SAE_ID).path
    add_repo(hub_cache, "ckkissane/attn-saes-gpt2-small-all-layers", {
        path: pt_bytes({"W_enc": randn(g, D, D_SAE, scale=0.3), "b_enc": randn(g, D_SAE, scale=0.2),
                        "W_dec": randn(g, D_SAE, D, scale=0.2), "b_dec": randn(g, D, scale=0.1)}),
        path[:-3] + "_cfg.json": json_bytes({"act_size": D, "dict_size": D_SAE, "act_name": "blocks.7.attn.hook_z"})})
    return hub_cache


def test_equals_saelens(cache, monkeypatch):
    ours = SAE.from_pretrained(REL, SAE_ID)
    assert ours.cfg.metadata.hook_name == "blocks.7.attn.hook_z" and ours.cfg.apply_b_dec_to_input
    ref = saelens_ref(REL, SAE_ID, monkeypatch)
    x = randn(torch.Generator().manual_seed(1), 2, 7, N_HEADS, D // N_HEADS)
    report("attn_z", compare(ours, ref, x))
