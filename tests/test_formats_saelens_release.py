"""SAELens-native releases (no conversion): the release facts applied on top of the checkpoint equal SAELens's
``from_pretrained``: a dataset-norm scaling factor folded into the weights (gpt2-small-mlp-tm, legacy
``normalize_activations: true``), the runtime ``constant_norm_rescale`` override (mistral-7b-res-wg), and the
centring that stands in for TransformerLens's centred writing weights."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, json_bytes, randn, rel_err, report, saelens_ref, st_bytes
from saescope.sae import SAE

D, D_SAE = 32, 128
TM_PATH = "sae_group_gpt2_blocks.4.hook_mlp_out_24576:v0"
WG_PATH = "mistral_7b_layer_16"


def _legacy_cfg(hook: str, normalize) -> dict:
    return {"model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": 4, "d_in": D, "d_sae": D_SAE,
            "dtype": "torch.float32", "context_size": 128, "normalize_activations": normalize,
            "dataset_path": "Skylion007/openwebtext"}


def _weights(g) -> bytes:
    return st_bytes({"W_enc": randn(g, D, D_SAE, scale=0.3), "b_enc": randn(g, D_SAE, scale=0.2),
                     "W_dec": randn(g, D_SAE, D, scale=0.2), "b_dec": randn(g, D, scale=0.1)})


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(59)
    add_repo(hub_cache, "tommmcgrath/gpt2-small-mlp-out-saes", {
        f"{TM_PATH}/cfg.json": json_bytes(_legacy_cfg("blocks.4.hook_mlp_out", True)),
        f"{TM_PATH}/sae_weights.safetensors": _weights(g)})
    add_repo(hub_cache, "JoshEngels/Mistral-7B-Residual-Stream-SAEs", {
        f"{WG_PATH}/cfg.json": json_bytes(dict(_legacy_cfg("blocks.16.hook_resid_pre", False), model_name="mistral-7b")),
        f"{WG_PATH}/sae_weights.safetensors": _weights(g)})
    return hub_cache


def test_norm_scaling_factor_folded_like_saelens(cache, monkeypatch):
    ours = SAE.from_pretrained("gpt2-small-mlp-tm", "blocks.4.hook_mlp_out")
    s = ours.cfg.metadata.extra["norm_scaling_factor_folded"]
    assert s == pytest.approx(1.81673478700627)   # the release list's value for this SAE
    assert ours.cfg.input_transform == "center" and ours.cfg.metadata.model_name == "gpt2"
    ref = saelens_ref("gpt2-small-mlp-tm", "blocks.4.hook_mlp_out", monkeypatch)
    x = randn(torch.Generator().manual_seed(1), 2, 7, D, shift=0.3)
    centred = x - x.mean(-1, keepdim=True)       # what TransformerLens's centred writing weights give SAELens
    with torch.no_grad():
        f, f_ref = ours.encode(x), ref.encode(centred)
        assert 0.05 < float((f_ref > 0).float().mean()) < 0.95
        err = max(rel_err(f, f_ref), rel_err(ours(x), ref(centred) + x.mean(-1, keepdim=True)))
        unfolded = SAE.from_state_dict(ours.cfg, {**dict(ours.named_parameters()), "W_enc": ours.W_enc / s})
        assert rel_err(unfolded.encode(x), f_ref) > 1e-3          # the fold matters
    assert err < 1e-5
    report("saelens-native (norm scaling folded, centred)", err)


def test_constant_norm_rescale_override_like_saelens(cache, monkeypatch):
    ours = SAE.from_pretrained("mistral-7b-res-wg", "blocks.16.hook_resid_pre")
    assert ours.cfg.input_transform == "constant_norm_rescale"
    assert ours.cfg.metadata.model_name == "mistralai/Mistral-7B-v0.1"
    ref = saelens_ref("mistral-7b-res-wg", "blocks.16.hook_resid_pre", monkeypatch)
    report("saelens-native (constant_norm_rescale)",
           compare(ours, ref, randn(torch.Generator().manual_seed(2), 2, 7, D, scale=0.2)))
