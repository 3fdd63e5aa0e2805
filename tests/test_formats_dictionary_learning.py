"""dictionary_learning releases (dictionary_learning_1 family: SAEBench sets, andyrdt, Matryoshka): ``ae.pt`` +
``config.json`` for each dictionary class, equal SAELens."""
from __future__ import annotations

import pytest
import torch

from formats_ref import add_repo, compare, json_bytes, pt_bytes, randn, report, saelens_ref
from saescope.sae import SAE

D, D_SAE, K = 32, 128, 12


def _state(cls: str, g) -> dict:
    enc, dec = randn(g, D_SAE, D, scale=0.3), randn(g, D, D_SAE, scale=0.2)
    b_enc, b_dec = randn(g, D_SAE, scale=0.2), randn(g, D, scale=0.1)
    if cls == "AutoEncoder":
        return {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec, "bias": b_dec}
    if cls == "AutoEncoderTopK":
        return {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec, "b_dec": b_dec,
                "k": torch.tensor(K), "threshold": torch.tensor(0.3)}
    if cls == "GatedAutoEncoder":
        return {"encoder.weight": enc, "decoder.weight": dec, "decoder_bias": b_dec, "r_mag": randn(g, D_SAE, scale=0.2),
                "gate_bias": b_enc, "mag_bias": randn(g, D_SAE, scale=0.2)}
    if cls == "BatchTopKSAE":
        return {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec, "b_dec": b_dec,
                "k": torch.tensor(K), "threshold": torch.tensor(0.25)}
    if cls == "MatryoshkaBatchTopKSAE":
        return {"W_enc": enc.T.contiguous(), "b_enc": b_enc, "W_dec": dec.T.contiguous(), "b_dec": b_dec,
                "k": torch.tensor(K), "threshold": torch.tensor(0.25), "group_sizes": torch.tensor([32, 96])}
    if cls == "JumpReluAutoEncoder":
        return {"W_enc": enc.T.contiguous(), "b_enc": b_enc, "W_dec": dec.T.contiguous(), "b_dec": b_dec,
                "threshold": torch.rand(D_SAE, generator=g) * 0.4}
    raise AssertionError(cls)


# (release, sae_id, repo, path, dictionary class)
CASES = [
    ("sae_bench_pythia70m_sweep_standard_ctx128_0712", "blocks.3.hook_resid_post__trainer_10", "canrager/lm_sae",
     "pythia70m_sweep_standard_ctx128_0712/resid_post_layer_3/trainer_10", "AutoEncoder"),
    ("sae_bench_pythia70m_sweep_topk_ctx128_0730", "blocks.3.hook_resid_post__trainer_0", "canrager/lm_sae",
     "pythia70m_sweep_topk_ctx128_0730/resid_post_layer_3/trainer_0", "AutoEncoderTopK"),
    ("sae_bench_pythia70m_sweep_gated_ctx128_0730", "blocks.3.hook_resid_post__trainer_0", "canrager/lm_sae",
     "pythia70m_sweep_gated_ctx128_0730/resid_post_layer_3/trainer_0", "GatedAutoEncoder"),
    ("sae_bench_pythia70m_sweep_panneal_ctx128_0730", "blocks.3.hook_resid_post__trainer_16", "canrager/lm_sae",
     "pythia70m_sweep_panneal_ctx128_0730/resid_post_layer_3/trainer_16", "JumpReluAutoEncoder"),
    ("llama-3.1-8b-instruct-andyrdt", "resid_post_layer_3_trainer_1", "andyrdt/saes-llama-3.1-8b-instruct",
     "resid_post_layer_3/trainer_1", "BatchTopKSAE"),
    ("saebench_gemma-2-2b_width-2pow14_date-0107", "blocks.12.hook_resid_post__trainer_0",
     "canrager/saebench_gemma-2-2b_width-2pow14_date-0107",
     "gemma-2-2b_matryoshka_batch_top_k_width-2pow14_date-0107/resid_post_layer_12/trainer_0", "MatryoshkaBatchTopKSAE"),
]


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(29)
    repos: dict = {}
    for _, _, repo, path, cls in CASES:
        layer = int(path.split("resid_post_layer_")[1].split("/")[0])
        trainer = {"dict_class": cls, "activation_dim": D, "dict_size": D_SAE, "layer": layer, "k": K,
                   "lm_name": "EleutherAI/pythia-70m-deduped"}
        repos.setdefault(repo, {})[f"{path}/config.json"] = json_bytes({"trainer": trainer, "buffer": {"ctx_len": 128}})
        repos[repo][f"{path}/ae.pt"] = pt_bytes(_state(cls, g))
    for repo, files in repos.items():
        add_repo(hub_cache, repo, files)
    return hub_cache


@pytest.mark.parametrize("release,sae_id,repo,path,cls", CASES, ids=[c[-1] for c in CASES])
def test_equals_saelens(cache, monkeypatch, release, sae_id, repo, path, cls):
    ours = SAE.from_pretrained(release, sae_id)
    layer = int(path.split("resid_post_layer_")[1].split("/")[0])
    assert ours.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
    ref = saelens_ref(release, sae_id, monkeypatch)
    report(f"dictionary_learning {cls}", compare(ours, ref, randn(torch.Generator().manual_seed(1), 2, 7, D)))
