"""Temporal SAEs (temporal family) are listed but refused with the reason: their features at a token depend on
the previous tokens (SAELens's TemporalSAE shows it below), which a per-token SAE cannot express."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, st_bytes
from saescope.errors import CheckpointError
from saescope.sae import SAE

REL, SAE_ID, PATH = "temporal-sae-gemma-2-2b", "blocks.12.hook_resid_post", "gemma-2-2B/layer_12/temporal"


def test_refused_with_reason_before_any_download(hub_cache):
    with pytest.raises(CheckpointError, match="cannot be loaded: temporal SAEs encode each token with attention"):
        SAE.from_pretrained(REL, SAE_ID)
    from saescope.sae.registry import get_release, search

    assert get_release(REL).unsupported and any(s["name"] == REL for s, _ in search("temporal"))


def test_features_depend_on_context_in_saelens(hub_cache, monkeypatch):
    pytest.importorskip("sae_lens")
    import yaml

    from formats_ref import saelens_ref

    d, factor = 64, 2
    conf = {"llm": {"dimin": d}, "sae": {"exp_factor": factor, "n_heads": 1, "n_attn_layers": 1, "bottleneck_factor": 1,
                                         "sae_diff_type": "topk", "kval_topk": 8, "tied_weights": True,
                                         "scaling_factor": 1.0},
            "data": {"dtype": "float32"}}
    from sae_lens.saes.temporal_sae import TemporalSAE, TemporalSAEConfig

    g = torch.Generator().manual_seed(31)
    cfg = TemporalSAEConfig(d_in=d, d_sae=d * factor, n_heads=1, n_attn_layers=1, bottleneck_factor=1,
                            sae_diff_type="topk", kval_topk=8, tied_weights=True, dtype="float32", device="cpu")
    sae = TemporalSAE(cfg)
    state = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in sae.state_dict().items()}
    published = {"W_dec": "D", "b_dec": "b", "W_enc": "E"}   # the temporalSAEs checkpoint names
    add_repo(hub_cache, "canrager/temporalSAEs", {
        f"{PATH}/conf.yaml": yaml.safe_dump(conf).encode(),
        f"{PATH}/latest_ckpt.safetensors": st_bytes({published.get(k, k): v for k, v in state.items()})})
    ref = saelens_ref(REL, SAE_ID, monkeypatch)
    x = torch.randn(1, 6, d, generator=g)
    y = x.clone()
    y[:, 2] += 1.0                                   # change an earlier token only
    with torch.no_grad():
        f_x, f_y = ref.encode(x), ref.encode(y)
    assert torch.equal(f_x[:, :2], f_y[:, :2])      # causal: before the change, identical
    assert not torch.allclose(f_x[:, 3:], f_y[:, 3:])  # later tokens' features change with the context
