"""Gemma Scope 2 (gemma_3 family): SAEs and (affine) transcoders in the published layout
(``<kind>/layer_L_width_W_l0_S[_affine]/params.safetensors`` + optional ``config.json``) equal SAELens."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, json_bytes, randn, report, saelens_ref, st_bytes
from saescope.errors import CheckpointError
from saescope.sae import SAE

REPO = "google/gemma-scope-2-270m-pt"
D, D_SAE = 32, 96
TC = "transcoder/layer_15_width_262k_l0_big_affine"
RES = "resid_post/layer_12_width_16k_l0_big"
ATT = "attn_out/layer_12_width_16k_l0_big"


def _params(g, d_in, d_out, affine=False) -> bytes:
    p = {"w_enc": randn(g, d_in, D_SAE, scale=0.4), "w_dec": randn(g, D_SAE, d_out, scale=0.2),
         "b_enc": randn(g, D_SAE, scale=0.2), "b_dec": randn(g, d_out, scale=0.1),
         "threshold": torch.rand(D_SAE, generator=g) * 0.6}
    if affine:
        p["affine_skip_connection"] = randn(g, d_in, d_out, scale=0.1)
    return st_bytes(p)


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(3)
    cfg_res = {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
               "hf_hook_point_in": "model.layers.12.output", "width": 16384, "l0": 150}
    add_repo(hub_cache, REPO, {f"{TC}/params.safetensors": _params(g, D, D, affine=True),
                               f"{RES}/params.safetensors": _params(g, D, D), f"{RES}/config.json": json_bytes(cfg_res),
                               f"{ATT}/params.safetensors": _params(g, 2 * D, 2 * D),
                               "transcoder/layer_3_width_16k_l0_big_affine/params.safetensors": _params(g, D, D)})
    return hub_cache


@pytest.mark.parametrize("release,sae_id", [("gemma-scope-2-270m-pt-transcoders", TC),
                                            ("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_big"),
                                            ("gemma-scope-2-270m-pt-att", "layer_12_width_16k_l0_big")])
def test_equals_saelens(cache, monkeypatch, release, sae_id):
    ours = SAE.from_pretrained(release, sae_id)
    ref = saelens_ref(release, sae_id, monkeypatch)
    x = randn(torch.Generator().manual_seed(1), 3, 7, ours.d_in)
    report(f"gemma_scope_2 {release}", compare(ours, ref, x))


def test_transcoder_metadata(cache):
    tc = SAE.from_pretrained("gemma-scope-2-270m-pt-transcoders", TC)
    m = tc.cfg.metadata
    assert tc.is_transcoder and tc.cfg.skip and tc.cfg.architecture == "jumprelu" and not tc.cfg.apply_b_dec_to_input
    # the normalised MLP input (SAELens says blocks.15.hook_mlp_in, which is the residual before the norm)
    assert (m.hook_name, m.hook_name_out) == ("blocks.15.mlp.hook_in", "blocks.15.hook_mlp_out")
    assert m.extra["hf_hook_name"] == "model.layers.15.pre_feedforward_layernorm"
    assert (m.model_name, m.prepend_bos, m.release) == ("google/gemma-3-270m", True, "gemma-scope-2-270m-pt-transcoders")
    sae = SAE.from_pretrained("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_big")
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post" and not sae.is_transcoder
    assert sae.cfg.metadata.extra["hf_hook_point_in"] == "model.layers.12.output"   # from the config.json
    att = SAE.from_pretrained("gemma-scope-2-270m-pt-att", "layer_12_width_16k_l0_big")
    assert att.cfg.metadata.hook_name == "blocks.12.attn.hook_z" and att.d_in == 2 * D


def test_affine_name_without_skip_tensor_is_refused(cache, tmp_path):
    import shutil

    from saescope.sae.formats import families

    src = SAE.from_pretrained("gemma-scope-2-270m-pt-transcoders", TC).path
    dst = tmp_path / "transcoder" / "layer_3_width_16k_l0_big_affine"
    dst.mkdir(parents=True)
    g = torch.Generator().manual_seed(9)
    (dst / "params.safetensors").write_bytes(_params(g, D, D))
    with pytest.raises(CheckpointError, match="affine_skip_connection absent"):
        families.read("gemma_scope_2", dst, {})
    shutil.copy(src / "params.safetensors", dst / "params.safetensors")
    (dst / "params.safetensors").write_bytes(st_bytes({"w_enc": torch.ones(2, 2), "extra_bias": torch.ones(2)}))
    with pytest.raises(CheckpointError, match="unexpected tensor.*extra_bias"):
        families.read("gemma_scope_2", dst, {})
