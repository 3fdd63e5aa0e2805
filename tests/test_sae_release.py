"""Offline release: gpt2-small-res-jb from a hub cache laid out like jbloom/GPT2-Small-SAEs-Reformatted
(legacy SAELens cfg.json, random weights), applied to saescope's raw activations, equals
TransformerLens (default processing, i.e. centred writing weights) + SAELens on the same weights."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from hubcache import add_repo
from saescope.sae import SAE

REPO = "jbloom/GPT2-Small-SAEs-Reformatted"
HOOK = "blocks.6.hook_resid_pre"
D_MODEL, D_SAE = 64, 512


def _legacy_cfg(hook: str, layer: int) -> dict:
    """The keys of the real repo's pre-6.0 SAELens cfg.json (values sized for the test model)."""
    return {"model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": layer, "hook_point_head_index": None,
            "dataset_path": "Skylion007/openwebtext", "is_dataset_tokenized": False, "context_size": 128,
            "use_cached_activations": False, "d_in": D_MODEL, "n_batches_in_buffer": 128,
            "total_training_tokens": 300000000, "store_batch_size": 32, "device": "mps", "seed": 42,
            "dtype": "torch.float32", "b_dec_init_method": "geometric_median", "expansion_factor": D_SAE // D_MODEL,
            "l1_coefficient": 8e-05, "lr": 0.0004, "lr_warm_up_steps": 5000, "train_batch_size": 4096,
            "use_ghost_grads": False, "feature_sampling_window": 1000, "dead_feature_window": 5000,
            "dead_feature_threshold": 1e-08, "log_to_wandb": True, "d_sae": D_SAE,
            "run_name": f"{D_SAE}-L1-8e-05-LR-0.0004-Tokens-3.000e+08"}


@pytest.fixture(scope="module")
def release_cache(hub_cache, tmp_path_factory):
    g = torch.Generator().manual_seed(6)
    files = {}
    for layer, hook in [(6, HOOK), (11, "blocks.11.hook_resid_post")]:
        weights = {"W_enc": torch.randn(D_MODEL, D_SAE, generator=g) * 0.3, "b_enc": torch.randn(D_SAE, generator=g) * 0.2 - 0.1,
                   "W_dec": torch.randn(D_SAE, D_MODEL, generator=g) * 0.1, "b_dec": torch.randn(D_MODEL, generator=g) * 0.05,
                   "scaling_factor": torch.ones(D_SAE)}
        tmp = tmp_path_factory.mktemp("w") / "sae_weights.safetensors"
        save_file(weights, tmp)
        sp = tmp.with_name("sparsity.safetensors")
        save_file({"sparsity": torch.rand(D_SAE, generator=g) * -5}, sp)
        files[f"{hook}/cfg.json"] = json.dumps(_legacy_cfg(hook, layer)).encode()
        files[f"{hook}/sae_weights.safetensors"] = tmp
        files[f"{hook}/sparsity.safetensors"] = sp
    return add_repo(hub_cache, REPO, files)


def test_from_pretrained_offline_metadata(release_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae = SAE.from_pretrained("gpt2-small-res-jb", HOOK)
    m = sae.cfg.metadata
    assert (m.hook_name, m.model_name, m.neuronpedia_id, m.prepend_bos) == (HOOK, "gpt2", "gpt2-small/6-res-jb", True)
    assert sae.cfg.input_transform == "center" and sae.cfg.apply_b_dec_to_input and sae.cfg.architecture == "relu"
    assert sae.log_sparsity is not None and sae.log_sparsity.shape == (D_SAE,)
    assert m.context_size == 128 and m.dataset_path == "Skylion007/openwebtext"
    assert SAE.from_spec(f"gpt2-small-res-jb:{HOOK}").cfg == sae.cfg
    # an SAE of the release that is not in the cache: a one-line error, not a traceback or a download
    with pytest.raises(Exception, match="not in the local Hugging Face cache"):
        SAE.from_pretrained("gpt2-small-res-jb", "blocks.3.hook_resid_pre")


TOKENS = torch.tensor([[0, 17, 901, 44, 3021, 7, 7, 250, 1999, 5, 64, 12]])


@pytest.fixture(scope="module")
def models(gpt2_hub, gpt2_dir):
    """saescope's LanguageModel and TransformerLens with default processing, on the same GPT-2-shaped weights."""
    pytest.importorskip("sae_lens")
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM

    from saescope.lm import LanguageModel

    lm = LanguageModel.from_pretrained(gpt2_hub, device="cpu")
    tl = HookedTransformer.from_pretrained("gpt2", hf_model=AutoModelForCausalLM.from_pretrained(gpt2_dir),
                                           tokenizer=lm.tokenizer, device="cpu", dtype=torch.float32).eval()
    return lm, tl


def test_features_equal_transformerlens_plus_saelens(release_cache, models, one_thread):
    import sae_lens as sl

    lm, tl = models
    tokens = TOKENS
    ours = SAE.from_pretrained("gpt2-small-res-jb", HOOK)
    ours_post = SAE.from_pretrained("gpt2-small-res-jb", "blocks.11.hook_resid_post")
    acts = lm.run(tokens, capture=[HOOK, "blocks.11.hook_resid_post"])
    _, cache = tl.run_with_cache(tokens, names_filter=[HOOK, "blocks.11.hook_resid_post"])
    for hook, sae in [(HOOK, ours), ("blocks.11.hook_resid_post", ours_post)]:
        ref_sae = sl.SAE.load_from_disk(release_cache / hook)
        with torch.no_grad():
            f_ref = ref_sae.encode(cache[hook])
            f = sae.encode(acts[hook])
            out_ref = ref_sae.decode(f_ref)
            out = sae(acts[hook])
        assert f.shape == f_ref.shape == (1, tokens.shape[1], D_SAE)
        assert (f_ref > 0).float().mean() > 0.02
        assert torch.allclose(f, f_ref, atol=1e-3), (hook, (f - f_ref).abs().max())
        # reconstructions agree up to the centring: TL's stream is ours minus its mean
        mean = acts[hook].mean(-1, keepdim=True)
        assert torch.allclose(out, out_ref + mean, atol=1e-3)
        # without the centring transform the features differ: the test can tell conventions apart
        plain = sae.cfg.replace(input_transform="none")
        sae_plain = SAE.from_state_dict(plain, dict(sae.named_parameters()))
        with torch.no_grad():
            assert (sae_plain.encode(acts[hook]) - f_ref).abs().max() > 1e-2


def test_tiny_release_reads_bundled_folder(tmp_path, monkeypatch):
    import saescope.assets as assets
    from saescope.sae import SAEConfig, SAEMetadata

    monkeypatch.setattr(assets, "TINY", tmp_path)
    with pytest.raises(Exception, match="no SAEs bundled yet"):
        SAE.from_spec("tiny:resid2-topk")
    sae = SAE(SAEConfig("topk", 16, 64, k=4, metadata=SAEMetadata(model_name="tiny", hook_name="blocks.2.hook_resid_pre")))
    sae.save(tmp_path / "saes" / "resid2-topk")
    got = SAE.from_spec("tiny:resid2-topk")
    assert got.cfg.metadata.hook_name == "blocks.2.hook_resid_pre" and got.cfg.metadata.release == "tiny"
    assert torch.equal(got.W_dec, sae.W_dec)
    with pytest.raises(Exception, match="no SAE 'other'.*resid2-topk"):
        SAE.from_spec("tiny:other")


def test_hook_z_release_with_value_bias_shift(hub_cache, models, tmp_path, one_thread):
    """gpt2-small-hook-z-kk layout (NAME.pt + NAME_cfg.json): on raw z, with the attach layer's named convention
    (z - (b_V + ln_1.b @ W_V)), the features equal SAELens's on TransformerLens's processed hook_z; attaching
    never changes the SAE."""
    import sae_lens as sl

    from saescope.sae.registry import get_release
    from saescope.site import attach, check_fits, fingerprint

    lm, tl = models
    entry = get_release("gpt2-small-hook-z-kk").sae("blocks.4.hook_z")
    g = torch.Generator().manual_seed(4)
    d_sae = 256
    state = {"W_enc": torch.randn(D_MODEL, d_sae, generator=g) * 0.5, "b_enc": torch.randn(d_sae, generator=g) * 0.1,
             "W_dec": torch.randn(d_sae, D_MODEL, generator=g) * 0.1, "b_dec": torch.randn(D_MODEL, generator=g) * 0.1}
    torch.save(state, tmp_path / "w.pt")
    cfg = {"act_size": D_MODEL, "dict_size": d_sae, "act_name": "blocks.4.attn.hook_z", "layer": 4, "seed": 49}
    add_repo(hub_cache, "ckkissane/attn-saes-gpt2-small-all-layers",
             {entry.path: tmp_path / "w.pt", entry.path[:-3] + "_cfg.json": json.dumps(cfg).encode()})
    sae = SAE.from_pretrained("gpt2-small-hook-z-kk", "blocks.4.hook_z")
    assert sae.cfg.metadata.hook_name == "blocks.4.attn.hook_z" and sae.cfg.metadata.extra["input_shift"] == "attn_value_bias"

    hook = "blocks.4.attn.hook_z"
    z = lm.run(TOKENS, capture=[hook])[hook]                          # [1, pos, n_heads, d_head], raw HF
    _, cache = tl.run_with_cache(TOKENS, names_filter=[hook])
    ref = sl.SAE.from_pretrained("gpt2-small-hook-z-kk", "blocks.4.hook_z")
    with torch.no_grad():
        f_ref = ref.encode(cache[hook])
        blk = lm.hf_model.transformer.h[4]
        W_V = blk.attn.c_attn.weight[:, 2 * D_MODEL:]
        shift = blk.attn.c_attn.bias[2 * D_MODEL:] + blk.ln_1.bias @ W_V
        assert (sae.encode(z) - f_ref).abs().max() > 1e-2     # the convention gap is real
    assert torch.allclose(lm.attention_value_bias(4).reshape(-1), shift)
    before = fingerprint(sae), sae.cfg
    check_fits(lm, sae)
    att = attach(lm, sae)
    assert (fingerprint(sae), sae.cfg) == before and att.conventions == ("attn_value_bias",)
    with torch.no_grad():
        f = att.features(TOKENS)
        assert torch.allclose(f, f_ref, atol=1e-4), (f - f_ref).abs().max()
        x_hat = att.site.port.to_raw(sae(att.site.to_sae(z)))       # reconstruction in raw z space
        assert x_hat.shape == z.flatten(-2).shape
        assert torch.allclose(x_hat, (ref(cache[hook]) + shift.reshape(z.shape[-2:])).flatten(-2), atol=1e-4)
    assert (f_ref > 0).float().mean() > 0.02



def test_cached_release_never_touches_the_network(release_cache, monkeypatch):
    """Online mode, files cached: loading asks the cache only (an unreachable hub would cost retries)."""
    import huggingface_hub
    from huggingface_hub import constants

    real = huggingface_hub.hf_hub_download
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if not kwargs.get("local_files_only"):
            raise AssertionError("network access for a cached file")
        return real(*args, **kwargs)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    sae = SAE.from_pretrained("gpt2-small-res-jb", HOOK)
    assert sae.d_sae == D_SAE and calls and all(calls)
