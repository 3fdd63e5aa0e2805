"""Contract tests of saescope.lm over every family the model zoo builds: norm facts, logits, new hook points,
the linearised forward. Small random models (tests/model_zoo.py); references are independent recomputations."""
from __future__ import annotations

import pytest
import torch

import model_zoo
from saescope.lm import LanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "Sparse autoencoders find features in the residual stream."


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    made = {}

    def get(kind: str) -> LanguageModel:
        if kind not in made:
            folder = model_zoo.make(kind, tmp_path_factory.mktemp(kind))
            made[kind] = LanguageModel.from_pretrained(str(folder), device="cpu")
        return made[kind]

    return get


def _final_norm_from_facts(lm: LanguageModel, x: torch.Tensor) -> torch.Tensor:
    """The final norm re-implemented in float64 from ModelInfo's facts and the module's own parameters."""
    info, norm = lm.info, lm.final_norm()
    x = x.double()
    if info.final_norm_kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    else:
        assert info.final_norm_kind == "rmsnorm"
    xhat = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + info.final_norm_eps)
    out = xhat * (norm.weight.double() + info.final_norm_offset)
    return out + norm.bias.double() if getattr(norm, "bias", None) is not None else out


@pytest.mark.parametrize("kind", model_zoo.KINDS)
def test_final_norm_facts_and_logits(zoo, kind):
    lm = zoo(kind)
    expected = {"gemma": (1.0, None), "gemma2": (1.0, 30.0)}.get(kind, (0.0, None))
    assert (lm.info.final_norm_offset, lm.info.final_logit_softcap) == expected
    assert lm.info.final_norm_kind == ("layernorm" if kind in ("gpt2", "gpt_neox", "neox-sequential") else "rmsnorm")
    g = torch.Generator().manual_seed(0)
    for scale in (3.0, 1e-3):          # the small input is where eps matters
        x = (torch.randn(2, 5, lm.info.d_model, generator=g) + 0.5) * scale
        with torch.no_grad():
            assert rel_err(lm.final_norm()(x), _final_norm_from_facts(lm, x)) < 1e-5
    last = f"blocks.{lm.info.n_layers - 1}.hook_resid_post"
    out = lm.run(TEXT, capture=last, return_logits=True)
    logits = _final_norm_from_facts(lm, out[last]) @ lm.unembed_matrix().double()
    if lm.unembed_bias() is not None:
        logits = logits + lm.unembed_bias().double()
    cap = lm.info.final_logit_softcap
    if cap is not None:
        assert rel_err(out["logits"], logits) > 1e-4        # the cap visibly matters on this model
        logits = cap * torch.tanh(logits / cap)
    assert rel_err(out["logits"], logits) < 1e-5


@pytest.mark.parametrize("kind", model_zoo.KINDS)
def test_norm_and_embed_hooks_recompute_from_hf_modules(zoo, kind):
    """ln1/ln2/ln_final.hook_normalized are x̂ with x̂ * (w + offset) + b == the HF norm's output; hook_embed is
    the token embedding (times sqrt(d_model) for Gemma, as TransformerLens defines it)."""
    lm = zoo(kind)
    offset = 1.0 if kind.startswith("gemma") else 0.0
    tokens = lm.to_tokens(TEXT)
    fam, outputs, handles = lm.family, {}, []
    norms = {"ln_final.hook_normalized": lm.final_norm()}
    for L in range(lm.info.n_layers):
        norms[f"blocks.{L}.ln1.hook_normalized"] = lm._layers[L].get_submodule(fam.ln1)
        norms[f"blocks.{L}.ln2.hook_normalized"] = lm._layers[L].get_submodule(fam.ln2)
    for name, module in norms.items():
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: outputs.__setitem__(name, o)))
    try:
        acts = lm.run(tokens, capture=["hook_embed", "blocks.0.hook_resid_pre", *norms], return_logits=True)
    finally:
        for h in handles:
            h.remove()
    for name, module in norms.items():
        xhat = acts[name].double()
        w = module.weight.double() + offset
        expected = xhat * w + (module.bias.double() if getattr(module, "bias", None) is not None else 0)
        assert rel_err(expected, outputs[name]) < 1e-5, name
        if lm.info.final_norm_kind == "layernorm":
            assert float(xhat.mean(-1).abs().max()) < 1e-5, name
    emb = lm.hf_model.get_input_embeddings().weight[tokens].double()
    if kind.startswith("gemma"):
        emb = emb * lm.info.d_model ** 0.5
    assert rel_err(acts["hook_embed"], emb) < 1e-5
    if kind != "gpt2":                     # no position embeddings: block 0 reads the embedding itself
        assert torch.equal(acts["hook_embed"], acts["blocks.0.hook_resid_pre"])
