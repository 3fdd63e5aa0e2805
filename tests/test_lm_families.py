"""The llama-like families (llama, mistral, qwen2, gemma, gemma2) and sequential GPT-NeoX.

Mistral (grouped-query attention) and Qwen2 are checked hook by hook against TransformerLens; TransformerLens
builds Llama/Gemma configs from the model *name* (real sizes), so those are checked by independent
recomputation from the HF modules instead.
"""
from __future__ import annotations

import pytest
import torch

from hubcache import add_model_dir
from saescope.lm import LanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

TEXT = "Sparse autoencoders find features in the residual stream."
SMALL = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             max_position_embeddings=128, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _make(kind: str, out):
    import transformers as tf

    from conftest import _save_tokenizer

    torch.manual_seed(hash(kind) % 1000)
    if kind == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=None))
    elif kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL, num_key_value_heads=2, use_sliding_window=False))
    elif kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL, num_key_value_heads=2))
    elif kind == "gemma":
        model = tf.GemmaForCausalLM(tf.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=16))
    elif kind == "gemma2":
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16,
                                                     sliding_window=64, query_pre_attn_scalar=16))
    elif kind == "neox-sequential":
        model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**SMALL, use_parallel_residual=False, rotary_pct=0.25))
    else:
        raise ValueError(kind)
    with torch.no_grad():   # non-trivial norm weights, so a wrong hook placement would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    _save_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def family_lm(tmp_path_factory, hub_cache):
    made = {}

    def get(kind: str) -> LanguageModel:
        if kind not in made:
            folder = _make(kind, tmp_path_factory.mktemp(kind))
            if kind == "mistral":
                add_model_dir(hub_cache, "mistralai/Mistral-7B-v0.1", folder)
            if kind == "qwen2":
                add_model_dir(hub_cache, "Qwen/Qwen2-0.5B", folder)
            made[kind] = LanguageModel.from_pretrained(str(folder), device="cpu")
        return made[kind]

    return get


@pytest.mark.parametrize("kind,tl_name", [("mistral", "mistralai/Mistral-7B-v0.1"), ("qwen2", "Qwen/Qwen2-0.5B")])
def test_llama_like_hooks_match_transformerlens(family_lm, kind, tl_name):
    from transformer_lens import HookedTransformer

    lm = family_lm(kind)
    tl = HookedTransformer.from_pretrained_no_processing(tl_name, hf_model=lm.hf_model, tokenizer=lm.tokenizer,
                                                         device="cpu", dtype=torch.float32).eval()
    tokens = lm.to_tokens(TEXT)
    ours = lm.run(tokens, capture=lm.hook_names(), return_logits=True)
    _, cache = tl.run_with_cache(tokens)
    for name in lm.hook_names():
        assert ours[name].shape == cache[name].shape, name
        assert rel_err(ours[name], cache[name]) < 1e-4, name
    assert rel_err(ours["logits"], tl(tokens)) < 1e-4
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(0))
    with lm.intervene({"blocks.1.hook_resid_mid": lambda a: a + vec}):
        edited = lm(tokens)
    theirs = tl.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_mid", lambda a, hook: a + vec)])
    assert rel_err(edited, theirs) < 1e-4


@pytest.mark.parametrize("kind", ["llama", "gemma", "gemma2", "neox-sequential"])
def test_hooks_recompute_from_hf_modules(family_lm, kind):
    """resid_pre/post are the HF hidden states; the sublayer hooks add up and are their modules' outputs."""
    lm = family_lm(kind)
    assert lm.info.family == {"neox-sequential": "gpt_neox", "gemma2": "gemma2"}.get(kind, "llama")
    assert not lm.info.parallel_residual and len(lm.hook_names()) == 7 * lm.info.n_layers
    tokens = lm.to_tokens(TEXT)
    acts = lm.run(tokens, capture=lm.hook_names(), return_logits=True)
    with torch.no_grad():
        hf = lm.hf_model(tokens, output_hidden_states=True)
    fam = lm.family
    for L in range(lm.info.n_layers):
        a = {k: acts[f"blocks.{L}.{k}"] for k in ["hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                                                 "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]}
        block = lm._layers[L]
        assert rel_err(a["hook_resid_pre"], hf.hidden_states[L]) < 1e-5
        if L + 1 < lm.info.n_layers:   # HF's last hidden state has the final norm applied
            assert rel_err(a["hook_resid_post"], hf.hidden_states[L + 1]) < 1e-5
        assert rel_err(a["hook_resid_mid"], a["hook_resid_pre"] + a["hook_attn_out"]) < 1e-5
        assert rel_err(a["hook_resid_post"], a["hook_resid_mid"] + a["hook_mlp_out"]) < 1e-5
        assert a["attn.hook_z"].shape[-2:] == (lm.info.n_heads, lm.info.d_head)
        with torch.no_grad():
            o_proj = block.get_submodule(fam.attn_o_proj)(a["attn.hook_z"].flatten(-2))
            down = block.get_submodule(fam.mlp_down)(a["mlp.hook_post"])
        if kind == "gemma2":   # the sandwich norms sit between the projections and the residual
            o_proj = block.post_attention_layernorm(o_proj)
            down = block.post_feedforward_layernorm(down)
        assert rel_err(a["hook_attn_out"], o_proj) < 1e-5
        assert rel_err(a["hook_mlp_out"], down) < 1e-5
    assert rel_err(acts["logits"], hf.logits) < 1e-5


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_resid_mid_write_and_generation(family_lm, kind):
    lm = family_lm(kind)
    tokens = lm.to_tokens(TEXT)
    block = lm._layers[1]
    r = torch.randn(1, tokens.shape[1], lm.info.d_model, generator=torch.Generator().manual_seed(1))
    with lm.intervene({"blocks.1.hook_resid_mid": lambda a: r}):
        post = lm.run(tokens, capture="blocks.1.hook_resid_post")["blocks.1.hook_resid_post"]
    norm = block.pre_feedforward_layernorm if kind == "gemma2" else block.post_attention_layernorm
    with torch.no_grad():
        mlp = block.mlp(norm(r))
        if kind == "gemma2":
            mlp = block.post_feedforward_layernorm(mlp)
    assert rel_err(post, r + mlp) < 1e-5
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(2))
    with lm.intervene({"blocks.1.hook_resid_pre": lambda a: a + vec}):   # KV cache + rotary positions
        out = lm.generate(tokens, max_new_tokens=5)
        ids = tokens
        for _ in range(5):
            ids = torch.cat([ids, lm(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)
