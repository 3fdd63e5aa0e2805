"""Every model family of tests/model_zoo.py, hook by hook.

- against TransformerLens 4.x (``TransformerBridge`` in compatibility mode on the raw weights), for every family, in
  its own interpreter (``SAESCOPE_TL4_PYTHON``; TransformerLens 4 cannot share an environment with SAELens 6);
- against TransformerLens 3.9 (saescope's reference) where it builds its config from our small HF config
  (for Llama/Gemma it uses the real sizes of the name, so those are covered by TransformerLens 4 only);
- by recomputation from the HF modules (residual sums, output projections) and HF's own hidden states and logits;
- generation with an intervention equals a step-by-step recomputation, for every family.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubcache import add_model_dir
from model_zoo import FAMILY_NAMES, ZOO, build
from saescope.errors import HookError, ModelLoadError
from saescope.lm import LanguageModel
from saescope.lm.hookpoints import GEMMA2, KINDS, NORM_KINDS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

TEXT = "Sparse autoencoders find features in the residual stream."   # 13 tokens: longer than the sliding windows
TL4_SCRIPT = Path(__file__).resolve().parent / "tl4" / "compare_hooks.py"
# TransformerLens 4 routes the published (multimodal) Qwen3.5 checkpoint to an adapter that needs torchvision; its
# text-only adapter (the model saescope loads) is chosen by naming the text architecture.
TL4_BOOT = {"qwen3_5": {"hf_config_overrides": {"architectures": ["Qwen3_5ForCausalLM"]}}}
TOL = 1e-4
TL4_ERRORS: dict[str, dict[str, float]] = {}   # family -> kind -> max relative error (printed with -s)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = build(name, tmp_path_factory.mktemp(name))
        return made[name]

    return get


@pytest.fixture(scope="module")
def zoo_lm(zoo_dir):
    made: dict[str, LanguageModel] = {}

    def get(name: str) -> LanguageModel:
        if name not in made:
            made[name] = LanguageModel.from_pretrained(str(zoo_dir(name)), device="cpu")
        return made[name]

    return get


def _layer_types(lm: LanguageModel) -> list[str] | None:
    return getattr(lm.hf_model.config.get_text_config(), "layer_types", None)


def _tokens(lm: LanguageModel) -> torch.Tensor:
    return lm.to_tokens(TEXT, prepend_bos=True)


def _xhat(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps), centred first for a LayerNorm (one with a bias)."""
    x = x.double()
    if isinstance(norm, torch.nn.LayerNorm) or getattr(norm, "bias", None) is not None:
        x = x - x.mean(-1, keepdim=True)
    eps = next(getattr(norm, a) for a in ("eps", "variance_epsilon") if hasattr(norm, a))
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


# ----------------------------------------------------------------------------------------------- family maps
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_hooks_recompute_from_hf_modules(zoo_lm, zoo_dir, name):
    """resid_pre/post are HF's hidden states; the sublayer hooks add up; z and post go through their projections."""
    lm = zoo_lm(name)
    entry = ZOO[name]
    assert json.loads((zoo_dir(name) / "config.json").read_text())["model_type"] == entry.model_type
    assert lm.info.family == entry.family
    tokens = _tokens(lm)
    acts = lm.run(tokens, capture=lm.hook_names(extended=True), return_logits=True)
    with torch.no_grad():
        hf = lm.hf_model(tokens, output_hidden_states=True)
    assert rel_err(acts["logits"], hf.logits) < 1e-5
    fam, n = lm.family, lm.info.n_layers
    if name != "gpt2":   # no position embeddings: block 0 reads the (scaled) token embedding itself
        assert torch.equal(acts["hook_embed"], acts["blocks.0.hook_resid_pre"])
    for L in range(n):
        a = {k: acts.get(f"blocks.{L}.{k}") for k in KINDS + NORM_KINDS}
        block = lm._layers[L]
        assert rel_err(a["hook_resid_pre"], hf.hidden_states[L]) < 1e-5
        # hook_normalized: x̂ of the norm's input (TransformerLens: before weight and bias)
        assert rel_err(a["ln1.hook_normalized"], _xhat(a["hook_resid_pre"], block.get_submodule(fam.ln1))) < 1e-5
        ln2_in = a["hook_resid_pre"] if lm.info.parallel_residual else a["hook_resid_mid"]
        assert rel_err(a["ln2.hook_normalized"], _xhat(ln2_in, block.get_submodule(fam.ln2))) < 1e-5
        if L + 1 < n:   # HF's last hidden state has the final norm applied
            assert rel_err(a["hook_resid_post"], hf.hidden_states[L + 1]) < 1e-5
        if lm.info.parallel_residual:
            assert a["hook_resid_mid"] is None
            assert rel_err(a["hook_resid_post"], a["hook_resid_pre"] + a["hook_attn_out"] + a["hook_mlp_out"]) < 1e-5
        else:
            assert rel_err(a["hook_resid_mid"], a["hook_resid_pre"] + a["hook_attn_out"]) < 1e-5
            assert rel_err(a["hook_resid_post"], a["hook_resid_mid"] + a["hook_mlp_out"]) < 1e-5
        sandwich = fam.attn_out == GEMMA2.attn_out   # Gemma-2/3: post-norms between projections and residual
        if a["attn.hook_z"] is not None:
            assert a["attn.hook_z"].shape[-2:] == (lm.info.n_heads, lm.info.d_head)
            with torch.no_grad():
                o = block.get_submodule(fam.attn_o_proj)(a["attn.hook_z"].flatten(-2))
                o = block.post_attention_layernorm(o) if sandwich else o
            assert rel_err(a["hook_attn_out"], o) < 1e-5
        if a["mlp.hook_post"] is not None:
            assert a["mlp.hook_post"].shape[-1] == lm.info.d_mlp == lm.hook_width(f"blocks.{L}.mlp.hook_post")
            with torch.no_grad():
                d = block.get_submodule(fam.mlp_down)(a["mlp.hook_post"])
                d = block.post_feedforward_layernorm(d) if sandwich else d
            assert rel_err(a["hook_mlp_out"], d) < 1e-5


def test_multimodal_checkpoints_load_their_language_model(zoo_lm, zoo_dir):
    """Gemma-3 4B+ and Qwen3.5 are published with a vision tower: saescope runs their language model, unchanged."""
    import transformers as tf

    for name, cls in [("gemma3", tf.Gemma3ForConditionalGeneration), ("qwen3_5", tf.Qwen3_5ForConditionalGeneration)]:
        lm = zoo_lm(name)
        full = cls.from_pretrained(zoo_dir(name)).eval()
        tokens = _tokens(lm)
        with torch.no_grad():
            assert rel_err(lm(tokens), full(input_ids=tokens).logits) < 1e-5, name
        text = full.config.text_config
        assert (lm.info.n_layers, lm.info.d_model, lm.info.d_vocab) == \
            (text.num_hidden_layers, text.hidden_size, text.vocab_size), name


def test_moe_has_no_mlp_hook_post(zoo_lm):
    lm = zoo_lm("qwen3_moe")
    cfg = lm.hf_model.config
    assert lm.info.d_mlp == cfg.moe_intermediate_size != cfg.intermediate_size   # one expert's width
    assert not any(h.endswith("mlp.hook_post") for h in lm.hook_names())
    for call in (lambda: lm.run(TEXT, capture="blocks.1.mlp.hook_post"),
                 lambda: lm.hook_width("blocks.0.mlp.hook_post"),
                 lambda: lm.intervene({"blocks.2.mlp.hook_post": lambda a: a}).__enter__()):
        with pytest.raises(HookError, match=r"mixture-of-experts.*hook_mlp_out") as err:
            call()
        assert "\n" not in str(err.value) and lm.name in str(err.value)
    # hook_mlp_out is the MoE block's output: what the block adds to the residual after its router-weighted experts
    acts = lm.run(TEXT, capture=["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"])
    block = lm._layers[1]
    with torch.no_grad():
        moe = block.mlp(block.post_attention_layernorm(acts["blocks.1.hook_resid_mid"]))
    assert rel_err(acts["blocks.1.hook_mlp_out"], moe) < 1e-5


def test_hybrid_attention_layers(zoo_lm):
    """Qwen3.5: hook_attn_out on every layer (the token mixer's output); attn.hook_z on softmax layers only."""
    lm = zoo_lm("qwen3_5_text")
    types = _layer_types(lm)
    assert set(types) == {"linear_attention", "full_attention"}
    names = lm.hook_names()
    for L, kind in enumerate(types):
        assert (f"blocks.{L}.attn.hook_z" in names) == (kind == "full_attention")
        assert f"blocks.{L}.hook_attn_out" in names
    linear = types.index("linear_attention")
    with pytest.raises(HookError, match=rf"layer {linear} .*linear-attention") as err:
        lm.run(TEXT, capture=f"blocks.{linear}.attn.hook_z")
    assert "\n" not in str(err.value)
    out = lm.run(TEXT, capture=[f"blocks.{linear}.hook_resid_pre", f"blocks.{linear}.hook_attn_out"])
    block = lm._layers[linear]
    with torch.no_grad():
        mixed = block.linear_attn(block.input_layernorm(out[f"blocks.{linear}.hook_resid_pre"]))
    assert rel_err(out[f"blocks.{linear}.hook_attn_out"], mixed) < 1e-5


def test_family_map_that_does_not_fit_is_a_load_error(zoo_lm):
    lm = zoo_lm("llama")
    with pytest.raises(ModelLoadError, match=r"does not fit the gemma2 family map: block 0 .*post_attention_layernorm|"
                                             r"does not fit the gemma2 family map: block 0 .*post_feedforward") as err:
        LanguageModel(lm.hf_model, lm.tokenizer, "llama-as-gemma2", GEMMA2)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["llama", "gemma2", "gemma3_text", "qwen3_moe"])
def test_resid_mid_write(zoo_lm, name):
    lm = zoo_lm(name)
    tokens = _tokens(lm)
    block = lm._layers[1]
    r = torch.randn(1, tokens.shape[1], lm.info.d_model, generator=torch.Generator().manual_seed(1))
    with lm.intervene({"blocks.1.hook_resid_mid": lambda a: r}):
        post = lm.run(tokens, capture="blocks.1.hook_resid_post")["blocks.1.hook_resid_post"]
    sandwich = hasattr(block, "pre_feedforward_layernorm")
    norm = block.pre_feedforward_layernorm if sandwich else block.post_attention_layernorm
    with torch.no_grad():
        mlp = block.mlp(norm(r))
        if sandwich:
            mlp = block.post_feedforward_layernorm(mlp)
    assert rel_err(post, r + mlp) < 1e-5


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_generation_with_intervention(zoo_lm, name):
    """KV cache (hybrid/sliding caches included) + interventions = recomputing the whole prefix at each step."""
    lm = zoo_lm(name)
    tokens = _tokens(lm)
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(2))
    with lm.intervene({"blocks.1.hook_resid_pre": lambda a: a + vec}):
        out = lm.generate(tokens, max_new_tokens=4)
        ids = tokens
        for _ in range(4):
            ids = torch.cat([ids, lm(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


# ----------------------------------------------------------------------------------------------- TransformerLens 3.9
@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if ZOO[n].tl3_name])
def test_matches_transformerlens39(zoo_lm, zoo_dir, hub_cache, name):
    from transformer_lens import HookedTransformer

    tl_name = ZOO[name].tl3_name
    add_model_dir(hub_cache, tl_name, zoo_dir(name))   # TransformerLens reads the config of the name from the hub
    lm = zoo_lm(name)
    tl = HookedTransformer.from_pretrained_no_processing(tl_name, hf_model=lm.hf_model, tokenizer=lm.tokenizer,
                                                         device="cpu", dtype=torch.float32).eval()
    assert lm.info.default_prepend_bos == tl.cfg.default_prepend_bos
    tokens = _tokens(lm)
    ours = lm.run(tokens, capture=lm.hook_names(), return_logits=True)
    _, cache = tl.run_with_cache(tokens)
    for hook in lm.hook_names():
        assert ours[hook].shape == cache[hook].shape, hook
        assert rel_err(ours[hook], cache[hook]) < TOL, hook
    assert rel_err(ours["logits"], tl(tokens)) < TOL
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_post" if lm.info.parallel_residual else "blocks.1.hook_resid_mid"
    with lm.intervene({hook: lambda a: a + vec}):
        edited = lm(tokens)
    theirs = tl.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook: a + vec)])
    assert rel_err(edited, theirs) < TOL


# ----------------------------------------------------------------------------------------------- TransformerLens 4
def tl4_hook_name(lm: LanguageModel, hook: str) -> str:
    """The TransformerLens 4 name of a saescope hook (they agree except where noted)."""
    if not hook.startswith("blocks."):
        return hook
    _, layer, kind = hook.split(".", 2)
    types = _layer_types(lm)
    if kind == "hook_attn_out" and types and types[int(layer)] == "linear_attention":
        return f"blocks.{layer}.linear_attn.hook_out"   # TL4 has no hook_attn_out alias on linear-attention layers
    return hook


@pytest.fixture(scope="module")
def tl4_refs(zoo_lm, zoo_dir, tmp_path_factory) -> dict[str, Path]:
    """Runs tests/tl4/compare_hooks.py once for every zoo model; {name: safetensors of TL4's activations}."""
    exe = os.environ.get("SAESCOPE_TL4_PYTHON")
    if not exe:
        pytest.skip("TransformerLens 4 comparison: set SAESCOPE_TL4_PYTHON to a Python with transformer_lens 4.x "
                    "(.ci/run builds one)")
    if not Path(exe).is_file():
        pytest.fail(f"SAESCOPE_TL4_PYTHON={exe} is not a file")
    out = tmp_path_factory.mktemp("tl4")
    jobs = []
    for name in FAMILY_NAMES:
        lm = zoo_lm(name)
        jobs.append({"model": str(zoo_dir(name)), "out": str(out / f"{name}.safetensors"),
                     "hooks": [tl4_hook_name(lm, h) for h in lm.hook_names(extended=True)],
                     "boot": TL4_BOOT.get(name, {})})
    spec = out / "jobs.json"
    spec.write_text(json.dumps({"tokens": _tokens(zoo_lm("gpt2")).tolist(), "jobs": jobs}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([exe, str(TL4_SCRIPT), str(spec)], capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        pytest.fail(f"{TL4_SCRIPT.name} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {name: Path(job["out"]) for name, job in zip(FAMILY_NAMES, jobs)}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_matches_transformerlens4(zoo_lm, tl4_refs, name):
    from safetensors import safe_open

    with safe_open(str(tl4_refs[name]), "pt") as f:
        meta = f.metadata() or {}
        ref = {k: f.get_tensor(k) for k in f.keys()}
    assert "error" not in meta, f"TransformerLens 4 could not run {name}: {meta['error']}"
    assert meta["transformer_lens"].startswith("4."), meta["transformer_lens"]
    assert json.loads(meta["missing"]) == [], f"TransformerLens 4 lacks hooks of {name}: {meta['missing']}"
    lm = zoo_lm(name)
    names = lm.hook_names(extended=True)
    ours = lm.run(_tokens(zoo_lm("gpt2")), capture=names, return_logits=True)
    errors: dict[str, float] = {}
    for hook in names + ["logits"]:
        theirs = ref[tl4_hook_name(lm, hook)]
        assert ours[hook].shape == theirs.shape, hook
        kind = hook.split(".", 2)[-1] if hook.startswith("blocks.") else hook
        errors[kind] = max(errors.get(kind, 0.0), rel_err(ours[hook], theirs))
    TL4_ERRORS[name] = errors
    print(f"\nTL{meta['transformer_lens']} {name} ({meta.get('adapter')}): "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), file=sys.stderr)
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"{name}: relative error above {TOL} at {bad}"
