"""Qwen Scope (qwen_scope family): ``layer{L}.sae.pt`` TopK SAEs (transposed W_enc/W_dec, k from the repo
name) equal SAELens."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, pt_bytes, randn, report, saelens_ref
from saescope.sae import SAE

D, D_SAE = 48, 256
REPO = "Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(11)
    add_repo(hub_cache, REPO, {"layer5.sae.pt": pt_bytes({
        "W_enc": randn(g, D_SAE, D, scale=0.3), "W_dec": randn(g, D, D_SAE, scale=0.2),
        "b_enc": randn(g, D_SAE, scale=0.2), "b_dec": randn(g, D, scale=0.1)})})
    return hub_cache


def test_equals_saelens(cache, monkeypatch):
    ours = SAE.from_pretrained("qwen-scope-3-1.7b-base-w32k-l50", "layer5")
    m = ours.cfg.metadata
    assert (ours.cfg.architecture, ours.cfg.k, ours.cfg.apply_b_dec_to_input) == ("topk", 50, False)
    assert (m.hook_name, m.model_name, m.prepend_bos) == ("blocks.5.hook_resid_post", "Qwen/Qwen3-1.7B-Base", True)
    assert m.extra["hf_hook_name"] == "model.layers.5"
    ref = saelens_ref("qwen-scope-3-1.7b-base-w32k-l50", "layer5", monkeypatch, overrides={"d_in": D, "d_sae": D_SAE})
    x = randn(torch.Generator().manual_seed(1), 2, 7, D)
    report("qwen_scope", compare(ours, ref, x))
    with torch.no_grad():
        assert int((ours.encode(x) > 0).sum(-1).max()) <= 50


def test_local_file_detected_and_converted(cache, tmp_path):
    from saescope.cli import main

    registered = SAE.from_pretrained("qwen-scope-3-1.7b-base-w32k-l50", "layer5")
    local = registered.path / "layer5.sae.pt"        # inside the hub cache: the repo name gives k
    assert SAE.load(local).cfg.k == 50
    assert main(["convert", str(local), str(tmp_path / "native"), "--format", "qwen_scope"]) == 0
    native = SAE.load(tmp_path / "native")
    assert native.cfg.k == 50 and torch.equal(native.W_enc, registered.W_enc)
