"""Gemma Scope (gemma_2 family): ``params.npz`` SAEs on the residual stream (incl. the embedding SAEs, whose
weights are rescaled by sqrt(d_in)) and on attention hook_z, equal SAELens's own loader."""
from __future__ import annotations

import math

import pytest
import torch

from formats_ref import add_repo, compare, npz_bytes, randn, report, saelens_ref
from saescope.sae import SAE

D, D_SAE, N_HEADS = 48, 160, 4


def _params(g, d_in):
    return npz_bytes({"W_enc": randn(g, d_in, D_SAE, scale=0.3), "W_dec": randn(g, D_SAE, d_in, scale=0.2),
                      "b_enc": randn(g, D_SAE, scale=0.2), "b_dec": randn(g, d_in, scale=0.1),
                      "threshold": torch.rand(D_SAE, generator=g) * 0.5})


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(5)
    add_repo(hub_cache, "google/gemma-scope-2b-pt-res", {
        "embedding/width_4k/average_l0_6/params.npz": _params(g, D),
        "layer_3/width_16k/average_l0_59/params.npz": _params(g, D)})
    add_repo(hub_cache, "google/gemma-scope-2b-pt-att", {"layer_5/width_16k/average_l0_135/params.npz": _params(g, D)})
    return hub_cache


CASES = [("gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6", "hook_embed"),
         ("gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical", "blocks.3.hook_resid_post"),
         ("gemma-scope-2b-pt-att-canonical", "layer_5/width_16k/canonical", "blocks.5.attn.hook_z")]


@pytest.mark.parametrize("release,sae_id,hook", CASES)
def test_equals_saelens(cache, monkeypatch, release, sae_id, hook):
    ours = SAE.from_pretrained(release, sae_id)
    assert ours.cfg.metadata.hook_name == hook and ours.cfg.metadata.model_name == "google/gemma-2-2b"
    ref = saelens_ref(release, sae_id, monkeypatch, overrides={"d_in": D, "d_sae": D_SAE})
    shape = (2, 6, N_HEADS, D // N_HEADS) if hook.endswith("hook_z") else (2, 6, D)   # SAELens reshapes hook_z
    x = randn(torch.Generator().manual_seed(2), *shape, scale=1.0 if hook != "hook_embed" else math.sqrt(D))
    report(f"gemma_scope {sae_id}", compare(ours, ref, x))


def test_embedding_rescale_is_applied(cache):
    emb = SAE.from_pretrained("gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6")
    from saescope.sae.formats import gemma_scope

    from saescope.sae.formats.common import materialize

    cfg, raw, _ = gemma_scope.read(emb.path)
    assert torch.allclose(emb.W_enc * math.sqrt(D), materialize(raw["W_enc"]), rtol=1e-6)
    assert emb.cfg.metadata.extra["embedding_scale_folded"] == pytest.approx(math.sqrt(D))
