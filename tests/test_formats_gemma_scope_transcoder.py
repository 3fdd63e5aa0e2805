"""Gemma Scope transcoders (gemma_2_transcoder family): ``params.npz`` JumpReLU transcoders equal SAELens."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, npz_bytes, randn, report, saelens_ref
from saescope.errors import CheckpointError
from saescope.sae import SAE

D, D_SAE = 40, 128
SAE_ID = "layer_7/width_16k/average_l0_70"


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(7)
    add_repo(hub_cache, "google/gemma-scope-2b-pt-transcoders", {f"{SAE_ID}/params.npz": npz_bytes({
        "W_enc": randn(g, D, D_SAE, scale=0.3), "W_dec": randn(g, D_SAE, D, scale=0.2),
        "b_enc": randn(g, D_SAE, scale=0.2), "b_dec": randn(g, D, scale=0.1),
        "threshold": torch.rand(D_SAE, generator=g) * 0.5})})
    return hub_cache


def test_equals_saelens(cache, monkeypatch):
    ours = SAE.from_pretrained("gemma-scope-2b-pt-transcoders", SAE_ID)
    m = ours.cfg.metadata
    assert ours.is_transcoder and not ours.cfg.skip and ours.cfg.architecture == "jumprelu"
    assert (m.hook_name, m.hook_name_out) == ("blocks.7.ln2.hook_normalized", "blocks.7.hook_mlp_out")
    assert m.neuronpedia_id == "gemma-2-2b/7-gemmascope-transcoder-16k"
    ref = saelens_ref("gemma-scope-2b-pt-transcoders", SAE_ID, monkeypatch,
                      overrides={"d_in": D, "d_out": D, "d_sae": D_SAE})
    report("gemma_scope_transcoder", compare(ours, ref, randn(torch.Generator().manual_seed(1), 2, 9, D)))


def test_unknown_array_refused(tmp_path):
    from saescope.sae.formats import families

    folder = tmp_path / "layer_1" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    (folder / "params.npz").write_bytes(npz_bytes({"W_enc": torch.ones(2, 3), "W_dec": torch.ones(3, 2),
                                                   "b_enc": torch.ones(3), "b_dec": torch.ones(2),
                                                   "threshold": torch.ones(3), "W_skip": torch.ones(2, 2)}))
    with pytest.raises(CheckpointError, match="unexpected tensor.*w_skip"):
        families.read("gemma_scope_transcoder", folder, {})
