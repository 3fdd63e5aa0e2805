"""saescope.lm against TransformerLens (the reference peer), plain HF, and independent recomputation."""
from __future__ import annotations

import time

import pytest
import torch

from saescope.errors import HookError, InputError, ModelLoadError, NumericsError, SaescopeError
from saescope.lm import HookContext, LanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Sparse autoencoders read features"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def gpt2_lm(gpt2_hub) -> LanguageModel:
    return LanguageModel.from_pretrained(gpt2_hub, device="cpu")


@pytest.fixture(scope="session")
def pythia_lm(pythia_hub) -> LanguageModel:
    return LanguageModel.from_pretrained(pythia_hub, device="cpu")


def _tl(name: str, lm: LanguageModel, processed: bool):
    from transformer_lens import HookedTransformer

    load = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
    model = load(name, hf_model=lm.hf_model, tokenizer=lm.tokenizer, device="cpu", dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def gpt2_tl(gpt2_lm):
    return _tl("gpt2", gpt2_lm, processed=False)


@pytest.fixture(scope="session")
def gpt2_tl_processed(gpt2_lm):
    return _tl("gpt2", gpt2_lm, processed=True)


@pytest.fixture(scope="session")
def pythia_tl(pythia_lm):
    return _tl("EleutherAI/pythia-70m", pythia_lm, processed=False)


# ----------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("which", ["gpt2", "pythia"])
def test_every_hook_matches_transformerlens(which, request):
    lm = request.getfixturevalue(f"{which}_lm")
    tl = request.getfixturevalue(f"{which}_tl")
    tokens = tl.to_tokens(TEXTS[0])
    ours = lm.run(tokens, capture=lm.hook_names(), return_logits=True)
    _, cache = tl.run_with_cache(tokens)
    names = lm.hook_names()
    assert len(names) == lm.info.n_layers * (6 if lm.info.parallel_residual else 7)
    for name in names:
        assert ours[name].shape == cache[name].shape, name
        assert rel_err(ours[name], cache[name]) < 1e-4, name
    assert rel_err(ours["logits"], tl(tokens)) < 1e-4


def test_pythia_has_no_resid_mid(pythia_lm):
    assert pythia_lm.info.parallel_residual
    assert not any("resid_mid" in n for n in pythia_lm.hook_names())
    with pytest.raises(HookError, match="parallel residual"):
        pythia_lm.run("hi", capture="blocks.0.hook_resid_mid")


def test_centered_resid_matches_processed_transformerlens(gpt2_lm, gpt2_tl_processed):
    tokens = gpt2_tl_processed.to_tokens(TEXTS[0])
    resid = [n for n in gpt2_lm.hook_names() if "hook_resid" in n]
    ours = gpt2_lm.run(tokens, capture=resid)
    _, cache = gpt2_tl_processed.run_with_cache(tokens, names_filter=resid)
    for name in resid:
        centered = ours[name] - ours[name].mean(-1, keepdim=True)
        assert rel_err(centered, cache[name]) < 1e-4, name
    # and without the centering they differ visibly: the test can tell the two conventions apart
    assert rel_err(ours["blocks.6.hook_resid_pre"], cache["blocks.6.hook_resid_pre"]) > 1e-3


def test_tokens_match_transformerlens(gpt2_lm, gpt2_tl):
    for text in TEXTS + [" leading space", "a"]:
        assert torch.equal(gpt2_lm.to_tokens(text, prepend_bos=True), gpt2_tl.to_tokens(text, prepend_bos=True))
        assert torch.equal(gpt2_lm.to_tokens(text, prepend_bos=False), gpt2_tl.to_tokens(text, prepend_bos=False))
        assert gpt2_lm.to_str_tokens(text) == gpt2_tl.to_str_tokens(text)
    assert torch.equal(gpt2_lm.to_tokens(TEXTS[0]), gpt2_tl.to_tokens(TEXTS[0]))   # default prepends BOS
    assert gpt2_lm.info.default_prepend_bos


def test_padded_batch_equals_single_rows(gpt2_lm):
    toks = gpt2_lm.tokenize(TEXTS)
    lengths = toks.attention_mask.sum(-1)
    assert lengths[0] != lengths[1] and bool((toks.attention_mask[:, :1] == 1).all())   # right-padded
    batch = gpt2_lm.run(TEXTS, capture=["blocks.5.hook_resid_post"], return_logits=True)
    for i, text in enumerate(TEXTS):
        single = gpt2_lm.run(text, capture=["blocks.5.hook_resid_post"], return_logits=True)
        n = int(lengths[i])
        assert rel_err(batch["blocks.5.hook_resid_post"][i, :n], single["blocks.5.hook_resid_post"][0]) < 1e-5
        assert rel_err(batch["logits"][i, :n], single["logits"][0]) < 1e-5


def test_info_and_weights(gpt2_lm, gpt2_tl):
    info = gpt2_lm.info
    assert (info.n_layers, info.d_model, info.n_heads, info.d_head, info.d_mlp, info.d_vocab, info.n_ctx) == \
        (gpt2_tl.cfg.n_layers, gpt2_tl.cfg.d_model, gpt2_tl.cfg.n_heads, gpt2_tl.cfg.d_head, gpt2_tl.cfg.d_mlp,
         gpt2_tl.cfg.d_vocab, gpt2_tl.cfg.n_ctx)
    assert torch.allclose(gpt2_lm.unembed_matrix(), gpt2_tl.W_U)
    assert gpt2_lm.hook_width("blocks.0.attn.hook_z") == info.d_head
    assert gpt2_lm.hook_width("blocks.0.mlp.hook_post") == info.d_mlp
    assert gpt2_lm.hook_width("blocks.0.hook_resid_pre") == info.d_model
    assert gpt2_lm.hook_layer("blocks.11.hook_mlp_out") == 11
    # logit lens of the last resid_post through final_norm and W_U reproduces the logits
    out = gpt2_lm.run(TEXTS[0], capture="blocks.11.hook_resid_post", return_logits=True)
    lens = gpt2_lm.final_norm()(out["blocks.11.hook_resid_post"]) @ gpt2_lm.unembed_matrix()
    assert rel_err(lens, out["logits"]) < 1e-5


# ----------------------------------------------------------------------------------------------- writing
def test_writes_flow_on_like_transformerlens(gpt2_lm, gpt2_tl):
    """Each writable hook: our edit and the same TL hook give the same logits (and differ from unedited)."""
    tokens = gpt2_tl.to_tokens(TEXTS[1])
    base = gpt2_tl(tokens)
    g = torch.Generator().manual_seed(0)
    for kind in ["hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_post",
                 "hook_mlp_out", "hook_resid_post"]:
        name = f"blocks.4.{kind}"
        width = gpt2_lm.hook_width(name)
        delta = torch.randn(width, generator=g)
        with gpt2_lm.intervene({name: lambda a: a + delta}):
            ours = gpt2_lm(tokens)
        theirs = gpt2_tl.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, hook: a + delta)])
        assert rel_err(ours, theirs) < 1e-4, name
        assert rel_err(ours, base) > 1e-3, name


def test_interventions_compose_in_order(gpt2_lm):
    hook = "blocks.3.hook_resid_mid"
    with gpt2_lm.intervene({hook: lambda a: a * 2}):
        with gpt2_lm.intervene({hook: lambda a: a + 1.0}):
            nested = gpt2_lm.run(TEXTS[0], capture=["blocks.3.hook_resid_mid", "blocks.5.hook_resid_pre"])
    plain = gpt2_lm.run(TEXTS[0], capture=[hook])[hook]
    assert rel_err(nested[hook], plain * 2 + 1.0) < 1e-6          # (a * 2) + 1, not (a + 1) * 2
    with gpt2_lm.intervene({hook: lambda a: plain * 2 + 1.0}):    # replacing by the same value: same downstream
        direct = gpt2_lm.run(TEXTS[0], capture=["blocks.5.hook_resid_pre"])
    assert rel_err(nested["blocks.5.hook_resid_pre"], direct["blocks.5.hook_resid_pre"]) < 1e-5
    # several hooks in one dict, and the context manager cleans up
    with gpt2_lm.intervene({"blocks.1.hook_attn_out": lambda a: a * 0, "blocks.2.hook_mlp_out": lambda a: a * 0}):
        ablated = gpt2_lm.run(TEXTS[0], capture=["blocks.1.hook_attn_out", "blocks.2.hook_mlp_out"])
    assert ablated["blocks.1.hook_attn_out"].abs().max() == 0 and ablated["blocks.2.hook_mlp_out"].abs().max() == 0
    assert gpt2_lm._edits == []
    after = gpt2_lm.run(TEXTS[0], capture=[hook])[hook]
    assert torch.equal(after, plain)


def test_resid_mid_write_reaches_mlp_and_residual(gpt2_lm):
    """Independent recomputation: replace resid_mid by r, then resid_post must be r + MLP(ln_2(r))."""
    block = gpt2_lm.hf_model.transformer.h[2]
    r = torch.randn(1, gpt2_lm.to_tokens(TEXTS[1]).shape[1], gpt2_lm.info.d_model)
    with gpt2_lm.intervene({"blocks.2.hook_resid_mid": lambda a: r}):
        got = gpt2_lm.run(TEXTS[1], capture=["blocks.2.hook_resid_post"])["blocks.2.hook_resid_post"]
    with torch.no_grad():
        expected = r + block.mlp(block.ln_2(r))
    assert rel_err(got, expected) < 1e-5


# ----------------------------------------------------------------------------------------------- early exit
@pytest.fixture(scope="session")
def wide_lm(tmp_path_factory) -> LanguageModel:
    """12 layers, d_model 256: wide enough that a forward pass is dominated by the blocks."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import _save_tokenizer

    torch.manual_seed(2)
    cfg = GPT2Config(vocab_size=4096, n_positions=256, n_embd=256, n_layer=12, n_head=4, bos_token_id=0,
                     eos_token_id=0)
    out = tmp_path_factory.mktemp("wide")
    GPT2LMHeadModel(cfg).save_pretrained(out)
    _save_tokenizer(out)
    return LanguageModel.from_pretrained(str(out), device="cpu")


def _best_time(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_early_exit(wide_lm):
    tokens = torch.randint(0, 4096, (2, 128), generator=torch.Generator().manual_seed(0))
    calls = []
    handles = [blk.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, blk in
               enumerate(wide_lm.hf_model.transformer.h)]
    try:
        early = wide_lm.run(tokens, capture="blocks.2.hook_resid_pre")
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 2]                    # blocks 3..11 never ran
    full = wide_lm.run(tokens, capture="blocks.2.hook_resid_pre", return_logits=True)
    assert torch.equal(early["blocks.2.hook_resid_pre"], full["blocks.2.hook_resid_pre"])
    t_early = _best_time(lambda: wide_lm.run(tokens, capture="blocks.2.hook_resid_pre"))
    t_full = _best_time(lambda: wide_lm(tokens))
    assert t_early < 0.5 * t_full, (t_early, t_full)


# ----------------------------------------------------------------------------------------------- generation
def test_generate_steps_see_one_new_position(gpt2_lm):
    seen = []

    def spy(act, ctx: HookContext):
        seen.append((ctx.step, tuple(act.shape), ctx.positions.tolist(), ctx.prompt_lengths.tolist()))
        return act

    prompts = ["Hello there", "A much longer prompt with more tokens"]
    lengths = gpt2_lm.tokenize(prompts).attention_mask.sum(-1).tolist()
    with gpt2_lm.intervene({"blocks.6.hook_resid_pre": spy}):
        out = gpt2_lm.generate(prompts, max_new_tokens=4)
    assert out.shape == (2, max(lengths) + 4)
    assert len(seen) == 4                                        # prompt pass + 3 cached steps
    step0 = seen[0]
    assert step0[0] == 0 and step0[1][1] == max(lengths) and step0[3] == lengths
    short = step0[2][0]                                          # left-padded short prompt: -1 on padding
    assert short == [-1] * (max(lengths) - lengths[0]) + list(range(lengths[0]))
    for n, (step, shape, positions, _) in enumerate(seen[1:], start=1):
        assert step == n and shape == (2, 1, gpt2_lm.info.d_model)
        assert positions == [[lengths[0] + n - 1], [lengths[1] + n - 1]]


def test_generate_matches_uncached_greedy(gpt2_lm):
    """KV-cached steered generation equals re-running the full sequence each step with the same edit."""
    vec = torch.randn(gpt2_lm.info.d_model, generator=torch.Generator().manual_seed(3)) * 2
    edit = {"blocks.6.hook_resid_pre": lambda a: a + vec}
    prompts = ["Hello there", "A much longer prompt with more tokens"]
    with gpt2_lm.intervene(edit):
        out = gpt2_lm.generate(prompts, max_new_tokens=6)
        for i, prompt in enumerate(prompts):
            ids = gpt2_lm.to_tokens(prompt)
            for _ in range(6):
                ids = torch.cat([ids, gpt2_lm(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
            assert torch.equal(out[i, -ids.shape[1]:], ids[0])


def test_steered_generation_matches_transformerlens(gpt2_lm, gpt2_tl):
    vec = torch.randn(gpt2_lm.info.d_model, generator=torch.Generator().manual_seed(4)) * 3
    tokens = gpt2_tl.to_tokens("The cat sat on")
    with gpt2_tl.hooks(fwd_hooks=[("blocks.6.hook_resid_pre", lambda a, hook: a + vec)]):
        theirs = gpt2_tl.generate(tokens, max_new_tokens=32, do_sample=False, use_past_kv_cache=True,
                                  stop_at_eos=False, verbose=False)
    with gpt2_lm.intervene({"blocks.6.hook_resid_pre": lambda a: a + vec}):
        ours = gpt2_lm.generate(tokens, max_new_tokens=32)
    plain = gpt2_lm.generate(tokens, max_new_tokens=32)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, plain)          # the steering changed something


def test_seeded_sampling(gpt2_lm):
    kw = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.9)
    a = gpt2_lm.generate(TEXTS[1], seed=7, **kw)
    b = gpt2_lm.generate(TEXTS[1], seed=7, **kw)
    c = gpt2_lm.generate(TEXTS[1], seed=8, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = gpt2_lm.generate(TEXTS[1], max_new_tokens=12)
    assert torch.equal(gpt2_lm.generate(TEXTS[1], max_new_tokens=12, do_sample=True, temperature=0), greedy)
    texts = gpt2_lm.generate(TEXTS[1], max_new_tokens=12, return_text=True)
    assert texts == [gpt2_lm.to_string(greedy[0, gpt2_lm.to_tokens(TEXTS[1]).shape[1]:])]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    picks = {int(LanguageModel._pick(logits, True, 1.0, 0.7, g)) for _ in range(300)}
    assert picks == {0, 1}


# ----------------------------------------------------------------------------------------------- bad input
def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert isinstance(exc.value, SaescopeError) and "\n" not in msg and msg
    return msg


def test_bad_hooks(gpt2_lm):
    with pytest.raises(HookError) as e:
        gpt2_lm.run("hi", capture="blocks.0.hook_resid_prex")
    msg = _one_line(e)
    assert "blocks.0.hook_resid_prex" in msg and "hook_resid_pre" in msg and "attn.hook_z" in msg
    with pytest.raises(HookError) as e:
        gpt2_lm.run("hi", capture="blocks.12.hook_resid_pre")
    assert "0..11" in _one_line(e)
    with pytest.raises(HookError) as e:
        with gpt2_lm.intervene({"blocks.-1.hook_mlp_out": lambda a: a}):
            pass
    _one_line(e)
    with pytest.raises(HookError) as e:
        with gpt2_lm.intervene({"blocks.0.hook_mlp_out": lambda a: a[..., :3]}):
            gpt2_lm("hi")
    assert "shape" in _one_line(e)
    assert gpt2_lm._edits == []


def test_bad_inputs(gpt2_lm):
    for bad, kw in [(torch.tensor([[5000]]), {}), ([], {}), (3.5, {}), ("x" * 3, {"max_new_tokens": -1}),
                    ("hi", {"top_p": 0}), ("hi", {"temperature": float("nan")}), ("hi", {"max_new_tokens": 500})]:
        with pytest.raises(InputError) as e:
            gpt2_lm.generate(bad, **kw) if kw else gpt2_lm(bad)
        _one_line(e)


def test_load_errors(tmp_path, hub_cache):
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained(str(tmp_path / "nope"))
    assert "nope" in _one_line(e) and "not found" in str(e.value)
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained(str(tmp_path))              # exists, but no config.json
    assert "config.json" in _one_line(e)
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained("some-org/not-a-cached-model")
    msg = _one_line(e)
    assert "some-org/not-a-cached-model" in msg and "offline" in msg and "local" in msg


def test_loads_from_local_dir_and_hub_alias(gpt2_dir, gpt2_hub, gpt2_lm):
    local = LanguageModel.from_pretrained(str(gpt2_dir), device="cpu")
    assert local.name == str(gpt2_dir) and gpt2_lm.name == "gpt2"
    alias = LanguageModel.from_pretrained("openai-community/gpt2", device="cpu")
    ids = gpt2_lm.to_tokens(TEXTS[0])
    assert torch.equal(local(ids), gpt2_lm(ids)) and torch.equal(alias(ids), gpt2_lm(ids))
    assert local.dtype == torch.float32


# ----------------------------------------------------------------------------------------------- odds and ends
def test_stop_at_eos(gpt2_lm):
    import dataclasses

    greedy = gpt2_lm.generate(TEXTS[1], max_new_tokens=8)
    p = gpt2_lm.to_tokens(TEXTS[1]).shape[1]
    new = greedy[0, p:].tolist()
    eos = new[2]
    cut = new.index(eos)                                   # first occurrence of the pretend-EOS token
    lm = LanguageModel(gpt2_lm.hf_model, gpt2_lm.tokenizer, "gpt2", gpt2_lm.family)
    lm.info = dataclasses.replace(lm.info, eos_token_id=eos)
    stopped = lm.generate(TEXTS[1], max_new_tokens=8, stop_at_eos=True)
    assert stopped[0, p:].tolist() == new[: cut + 1]
    assert lm.generate(TEXTS[1], max_new_tokens=8, stop_at_eos=True, return_text=True) == [lm.to_string(new[:cut])]
    assert torch.equal(lm.generate(TEXTS[1], max_new_tokens=8), greedy)     # off by default


def test_grad_and_explicit_mask(gpt2_lm):
    out = gpt2_lm.run(TEXTS[0], capture="blocks.3.hook_resid_pre", grad=True, return_logits=True)
    assert out["blocks.3.hook_resid_pre"].requires_grad and out["logits"].requires_grad
    assert not gpt2_lm.run(TEXTS[0], capture="blocks.3.hook_resid_pre")["blocks.3.hook_resid_pre"].requires_grad
    # gradient of a logit with respect to an activation, through an intervention that exposes a leaf
    leaf = {}

    def expose(act):
        leaf["x"] = act.detach().requires_grad_(True)
        return leaf["x"]

    with gpt2_lm.intervene({"blocks.3.hook_resid_pre": expose}):
        logits = gpt2_lm(TEXTS[0], grad=True)
    logits[0, -1, 5].backward()
    assert leaf["x"].grad is not None and leaf["x"].grad[0, -1].abs().sum() > 0
    assert leaf["x"].grad[0, :-1].abs().sum() > 0          # earlier positions feed the last one through attention
    # left-padded ids with an explicit mask give the same activations as the unpadded row
    ids = gpt2_lm.to_tokens(TEXTS[1])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    a = gpt2_lm.run(padded, capture="blocks.7.hook_resid_post", attention_mask=mask)["blocks.7.hook_resid_post"]
    b = gpt2_lm.run(ids, capture="blocks.7.hook_resid_post")["blocks.7.hook_resid_post"]
    assert rel_err(a[:, 3:], b) < 1e-5


def test_str_tokens_and_strings(gpt2_lm):
    ids = gpt2_lm.to_tokens(TEXTS)
    assert gpt2_lm.to_string(ids[0]) == gpt2_lm.tokenizer.bos_token + TEXTS[0]          # row 0 is the longer one
    assert gpt2_lm.to_string(gpt2_lm.to_tokens(TEXTS[0], prepend_bos=False)) == [TEXTS[0]]
    assert "".join(gpt2_lm.to_str_tokens(TEXTS[0], prepend_bos=False)) == TEXTS[0]
    assert gpt2_lm.to_str_tokens(TEXTS) == [gpt2_lm.to_str_tokens(t) for t in TEXTS]
    assert gpt2_lm.to_str_tokens(ids[0, :3]) == gpt2_lm.to_str_tokens(TEXTS[0])[:3]
    long = gpt2_lm.to_tokens("word " * 300, truncate=True)
    assert long.shape == (1, gpt2_lm.info.n_ctx)


def test_missing_bundled_model_is_one_line(monkeypatch, tmp_path):
    import saescope.assets

    monkeypatch.setattr(saescope.assets, "tiny_model_dir", lambda: tmp_path)
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained("tiny")
    assert str(tmp_path) in _one_line(e)


# ----------------------------------------------------------------------------------------------- hook signature
def test_hook_signature_ctx_only_by_keyword(gpt2_lm):
    """fn(act) or fn(act, *, ctx): the context goes to a parameter named ctx (or **kwargs), never to another one."""
    hook, seen = "blocks.2.hook_resid_pre", {}

    def scaled(act, alpha=1.0):                 # used to receive the HookContext as alpha
        seen["alpha"] = alpha
        return act * alpha

    def keyword_only(act, *, ctx):
        seen["kw"] = ctx
        return None

    def var_kw(act, **kwargs):
        seen["var"] = kwargs
        return act

    class Callable_:
        def __call__(self, act, ctx=None):
            seen["method"] = ctx
            return act

    plain = gpt2_lm.run(TEXTS[0], capture=hook)[hook]
    with gpt2_lm.intervene({hook: scaled}):
        got = gpt2_lm.run(TEXTS[0], capture=hook)[hook]
    assert seen["alpha"] == 1.0 and torch.equal(got, plain)
    with gpt2_lm.intervene({hook: keyword_only}), gpt2_lm.intervene({hook: var_kw}), \
            gpt2_lm.intervene({hook: Callable_()}):
        gpt2_lm.run(TEXTS[0], capture=hook)
    assert isinstance(seen["kw"], HookContext) and seen["kw"].hook == hook and seen["kw"].step == 0
    assert set(seen["var"]) == {"ctx"} and isinstance(seen["var"]["ctx"], HookContext)
    assert isinstance(seen["method"], HookContext)
    for bad in (lambda act, alpha: act, lambda: None):
        with pytest.raises(InputError) as e:
            with gpt2_lm.intervene({hook: bad}):
                pass
        assert hook in _one_line(e) and "fn(act" in str(e.value)
    assert gpt2_lm._edits == []


# ----------------------------------------------------------------------------------------------- sampling, syncs
@pytest.mark.parametrize("temperature", [1e-45, 1e-320, 5e-324])
def test_tiny_temperature_is_greedy_and_finite(gpt2_lm, temperature):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 30
    g = torch.Generator().manual_seed(1)
    for top_p in (1.0, 0.5):
        assert torch.equal(LanguageModel._pick(logits, True, temperature, top_p, g), logits.argmax(-1))
    kw = dict(max_new_tokens=6, do_sample=True, temperature=temperature, seed=3)
    assert torch.equal(gpt2_lm.generate(TEXTS[1], **kw), gpt2_lm.generate(TEXTS[1], max_new_tokens=6))
    hot = gpt2_lm.generate(TEXTS[1], max_new_tokens=6, do_sample=True, temperature=100.0, top_p=0.9, seed=3)
    assert hot.shape == (1, gpt2_lm.to_tokens(TEXTS[1]).shape[1] + 6)


def test_generation_syncs_with_the_host_only_every_few_steps(gpt2_lm, monkeypatch):
    """The KV-cached loop reads no device value per token: NaN/inf and EOS flags are checked every CHECK_EVERY steps."""
    import sys

    from saescope.lm import generate as gen_mod

    calls = []
    for attr in ("__bool__", "item", "tolist", "__int__", "__float__"):
        orig = getattr(torch.Tensor, attr)

        def spy(self, *a, _orig=orig, **k):
            if sys._getframe(1).f_code.co_filename == gen_mod.__file__:
                calls.append(sys._getframe(1).f_lineno)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, spy)
    n = 40
    out = gpt2_lm.generate(TEXTS[1], max_new_tokens=n)
    assert out.shape[1] == gpt2_lm.to_tokens(TEXTS[1]).shape[1] + n
    assert 0 < len(calls) <= n // gen_mod.CHECK_EVERY + 2, calls


def test_nan_during_generation_is_one_line(gpt2_lm):
    def poison(act, *, ctx):
        return act * float("nan") if ctx.step == 3 else act

    with gpt2_lm.intervene({"blocks.4.hook_mlp_out": poison}):
        with pytest.raises(NumericsError) as e:
            gpt2_lm.generate(TEXTS[1], max_new_tokens=20, do_sample=True, seed=0)
    assert "step 4" in _one_line(e)          # the pass of generated token 3 yields the 4th token's logits


# ----------------------------------------------------------------------------------------------- norm / embed hooks
NEW_KINDS = ["ln1.hook_normalized", "ln2.hook_normalized"]


@pytest.mark.parametrize("which", ["gpt2", "pythia"])
def test_norm_and_embed_hooks_match_transformerlens(which, request):
    """hook_embed, ln1/ln2.hook_normalized (x̂ before w, b) and ln_final.hook_normalized, read and written."""
    lm, tl = request.getfixturevalue(f"{which}_lm"), request.getfixturevalue(f"{which}_tl")
    tokens = tl.to_tokens(TEXTS[0])
    names = ["hook_embed", "ln_final.hook_normalized"] + [f"blocks.{L}.{k}" for L in range(lm.info.n_layers)
                                                          for k in NEW_KINDS]
    assert set(names) <= set(lm.hook_names(extended=True)) and not set(names) & set(lm.hook_names())
    ours = lm.run(tokens, capture=names)
    _, cache = tl.run_with_cache(tokens, names_filter=names)
    for name in names:
        assert ours[name].shape == cache[name].shape, name
        assert rel_err(ours[name], cache[name]) < 1e-4, name
    base, g = tl(tokens), torch.Generator().manual_seed(5)
    for name in ["hook_embed", "blocks.1.ln1.hook_normalized", "blocks.2.ln2.hook_normalized",
                 "ln_final.hook_normalized"]:
        delta = torch.randn(lm.info.d_model, generator=g)
        with lm.intervene({name: lambda a: a + delta}):
            edited = lm(tokens)
        theirs = tl.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, hook: a + delta)])
        assert rel_err(edited, theirs) < 1e-4, name
        assert rel_err(edited, base) > 1e-3, name


def test_norm_hooks_exit_early(wide_lm):
    tokens = torch.randint(0, 4096, (1, 16), generator=torch.Generator().manual_seed(0))
    for name, ran in [("hook_embed", []), ("blocks.0.ln1.hook_normalized", [0]),
                      ("blocks.2.ln2.hook_normalized", [0, 1, 2])]:
        calls = []
        handles = [blk.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, blk in
                   enumerate(wide_lm.hf_model.transformer.h)]
        try:
            wide_lm.run(tokens, capture=name)
        finally:
            for h in handles:
                h.remove()
        assert calls == ran, name


def test_stop_at_eos_checked_every_few_steps_trims_exactly(gpt2_lm):
    """EOS is looked at every CHECK_EVERY steps, but the output ends at the last row's EOS, padded after each EOS."""
    import dataclasses

    prompts = [TEXTS[1], "Hello there"]
    greedy = gpt2_lm.generate(prompts, max_new_tokens=30)
    p = greedy.shape[1] - 30
    rows = [greedy[i, p:].tolist() for i in range(2)]
    eos = rows[0][3]                                        # a pretend EOS that row 0 emits early
    lm = LanguageModel(gpt2_lm.hf_model, gpt2_lm.tokenizer, "gpt2", gpt2_lm.family)
    lm.info = dataclasses.replace(lm.info, eos_token_id=eos)
    stopped = lm.generate(prompts, max_new_tokens=30, stop_at_eos=True)
    ends = [r.index(eos) + 1 if eos in r else 30 for r in rows]
    assert stopped.shape[1] == p + max(ends)
    for i, r in enumerate(rows):
        assert stopped[i, p:p + ends[i]].tolist() == r[:ends[i]]
        assert set(stopped[i, p + ends[i]:].tolist()) <= {lm._pad_id}


def test_unmapped_norm_hook_is_one_line_and_leaves_no_hooks(gpt2_lm):
    import dataclasses

    fam = dataclasses.replace(gpt2_lm.family, ln2=None)
    lm = LanguageModel(gpt2_lm.hf_model, gpt2_lm.tokenizer, "gpt2", fam)

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.hf_model.modules())

    before = n_hooks()
    with pytest.raises(HookError) as e:
        lm.run(TEXTS[0], capture=["blocks.0.hook_resid_pre", "blocks.1.ln1.hook_normalized",
                                  "blocks.3.ln2.hook_normalized"])
    assert "blocks.3.ln2.hook_normalized" in _one_line(e) and "gpt2" in str(e.value)
    assert n_hooks() == before and lm._pass is None
