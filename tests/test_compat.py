"""The fast compatibility subset (marker ``compat``): the parts of saescope that lean on transformers,
tokenizers, huggingface_hub and safetensors, each checked against those libraries' own code paths.

CI runs ``pytest -m compat`` in a venv with the oldest declared transformers and again with the newest
(`.ci/run`); the main suite runs it with whatever the environment has. It needs neither TransformerLens nor
SAELens, so it runs where their pins would not install. Keep it under a minute.
"""
from __future__ import annotations

import json

import pytest
import torch

from saescope.lm import LanguageModel
from saescope.sae import SAE, SAEConfig, SAEMetadata
from test_sae_release import release_cache  # noqa: F401  (the offline release fixture)

pytestmark = [pytest.mark.compat, pytest.mark.usefixtures("one_thread")]
TEXT = "The history of the city begins with a small settlement on the river"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A Llama-shaped model with grouped-query attention (rotary, RMSNorm, SwiGLU), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import _save_tokenizer

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0,
                      eos_token_id=0, tie_word_embeddings=False)
    out = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    _save_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def models(gpt2_hub, pythia_hub, llama_dir):
    """The bundled model, and GPT-2, Pythia (from the offline hub cache) and Llama (a directory)."""
    return {name: LanguageModel.from_pretrained(src, device="cpu")
            for name, src in [("tiny", "tiny"), ("gpt2", gpt2_hub), ("pythia", pythia_hub), ("llama", str(llama_dir))]}


def test_loading_and_dtype(models, gpt2_hub):
    assert {m.info.family for m in models.values()} == {"gpt2", "gpt_neox", "llama"}
    half = LanguageModel.from_pretrained(gpt2_hub, device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.hf_model.parameters())


@pytest.mark.parametrize("name", ["tiny", "gpt2", "pythia", "llama"])
def test_residual_hooks_equal_hidden_states(models, name):
    """blocks.L.hook_resid_pre = transformers' own hidden_states[L]; the last resid_post feeds the final norm."""
    lm = models[name]
    ids = lm.to_tokens(TEXT)
    names = [f"blocks.{L}.hook_resid_pre" for L in range(lm.info.n_layers)]
    acts = lm.run(ids, capture=names)
    with torch.no_grad():
        hs = lm.hf_model(ids, output_hidden_states=True).hidden_states
    for L, hook in enumerate(names):
        torch.testing.assert_close(acts[hook], hs[L], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "pythia", "llama"])
def test_steered_generation_equals_hf_generate(models, name):
    """A write at blocks.1.hook_resid_pre, at every KV-cached step: the same tokens as transformers' generate with
    a forward pre-hook doing the same edit."""
    lm = models[name]
    a = lm.to_tokens(TEXT)
    b = lm.to_tokens("In the morning the soldiers marched north across the frozen plain towards the town")
    assert b.shape[1] >= a.shape[1]
    ids = torch.cat([a, b[:, : a.shape[1]]])
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(1)) * 6.0
    with lm.intervene({"blocks.1.hook_resid_pre": lambda a: a + vec}):
        ours = lm.generate(ids, max_new_tokens=12)
    block = lm.hf_model.get_submodule(lm.family.layers)[1]

    def pre_hook(module, args, kwargs):
        if args:
            return (args[0] + vec, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vec}

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            ref = lm.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                       min_new_tokens=12, do_sample=False, pad_token_id=0)
    finally:
        handle.remove()
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, lm.generate(ids, max_new_tokens=12))   # the edit mattered


def test_read_and_steer_on_the_bundled_model(models, capsys):
    from saescope.cli import main

    lm, sae = models["tiny"], SAE.from_spec("tiny:resid2-topk")
    assert main(["read", TEXT, "--top", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = lm.to_tokens(TEXT)
    with torch.no_grad():
        f = sae.encode(lm.run(ids, capture=sae.cfg.metadata.hook_name)[sae.cfg.metadata.hook_name].to(sae.dtype))[0]
    assert len(out["tokens"]) == ids.shape[1]
    for row, fr in zip(out["tokens"], f):
        vals, idx = fr.float().topk(3)
        assert [x["index"] for x in row["features"]] == [int(i) for i, v in zip(idx, vals) if v > 0]
    argv = ["steer", "The", "--feature", "3", "--max-new-tokens", "8", "--seed", "1", "--json"]
    assert main(argv + ["--strength", "0"]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert zero["steered"] == zero["baseline"]
    assert main(argv + ["--strength", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["steered"] != zero["baseline"]


def test_sae_release_through_the_hub_cache(release_cache):
    """hf_hub_download from the offline cache (huggingface_hub) and safetensors reading: the release equals the
    same folder loaded from its snapshot path."""
    from test_sae_release import HOOK

    sae = SAE.from_pretrained("gpt2-small-res-jb", HOOK)
    direct = SAE.load(release_cache / HOOK)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(sae, name), getattr(direct, name))


def test_native_save_load_round_trip(tmp_path):
    cfg = SAEConfig("topk", d_in=32, d_sae=96, k=4, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre"))
    sae = SAE(cfg, seed=0)
    sae.save(tmp_path / "sae")
    back = SAE.load(tmp_path / "sae")
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert back.cfg == sae.cfg and torch.equal(back(x), sae(x))


def test_planner_counts_gpt2_small(tmp_path, monkeypatch):
    """The planner builds the architecture on the meta device from config.json alone."""
    from huggingface_hub import constants

    from gpt2_small import GPT2_SMALL_PARAMS, publish_gpt2_small_configs
    from saescope.plan import model_shape

    publish_gpt2_small_configs(tmp_path / "hub", layers=[8])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_shape("gpt2").n_params == GPT2_SMALL_PARAMS


def test_no_future_or_deprecation_warning_from_saescope_calls(llama_dir):
    """Loading, reading, caching, linearising and KV-cached generation on a GPT-2 and a Llama model raise no
    FutureWarning or DeprecationWarning (the pytest config hides them, so they are recorded here explicitly)."""
    import warnings

    from saescope import steer
    from saescope.interp.steer import Intervention

    from saescope.assets import tiny_sae_dir

    sae = SAE.load(tiny_sae_dir())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for name in ("tiny", str(llama_dir)):
            lm = LanguageModel.from_pretrained(name)
            lm.run(TEXT, capture=["blocks.1.hook_resid_pre"], return_logits=True)
            with lm.linearized():
                lm(TEXT, grad=True).sum().backward()
            lm.generate(TEXT, max_new_tokens=4, do_sample=False)
            if name == "tiny":
                with steer(lm, sae, Intervention(1, "clamp", 2.0)):
                    lm.generate(TEXT, max_new_tokens=4, do_sample=False)
    bad = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in seen
           if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not bad, "\n".join(bad)
