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


# ----------------------------------------------------------------------------------------------- linearized()
class _Frozen:
    """A reference forward in which attention patterns and norm scales are fixed at captured clean values,
    built without saescope's linearized(): HF's own eager attention captures the patterns, the test's own norm
    formula captures and re-applies the scales."""

    def __init__(self, lm: LanguageModel, kind: str):
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        from transformers.modeling_utils import AttentionInterface

        self.lm, self.offset = lm, 1.0 if kind.startswith("gemma") else 0.0
        self.layernorm = kind in ("gpt2", "gpt_neox", "neox-sequential")
        self.patterns, self.scales, self.mode = {}, {}, None
        AttentionInterface.register("test_frozen", self._attention)
        AttentionMaskInterface.register("test_frozen", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
        self.norms = {n: m for n, m in lm.hf_model.named_modules()
                      if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")}

    def _attention(self, module, query, key, value, attention_mask, **kwargs):
        import sys

        if self.mode == "capture":
            eager = sys.modules[type(module).__module__].eager_attention_forward
            out, weights = eager(module, query, key, value, attention_mask, **kwargs)
            self.patterns[id(module)] = weights.detach()
            return out, weights
        pattern = self.patterns[id(module)]
        v = value.repeat_interleave(pattern.shape[1] // value.shape[1], dim=1)
        return (pattern @ v).transpose(1, 2).contiguous(), pattern

    def _norm_hook(self, name):
        def hook(module, args, output):
            c = args[0] - args[0].mean(-1, keepdim=True) if self.layernorm else args[0]
            if self.mode == "capture":
                eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon")
                self.scales[name] = torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps).detach()
                return None
            out = c * self.scales[name] * (module.weight + self.offset)
            return out + module.bias if getattr(module, "bias", None) is not None else out

        return hook

    def logits(self, tokens, edits: dict, mode: str) -> torch.Tensor:
        cfg = self.lm.hf_model.config
        impl, self.mode = cfg._attn_implementation, mode
        handles = [m.register_forward_hook(self._norm_hook(n)) for n, m in self.norms.items()]
        cfg._attn_implementation = "test_frozen"
        try:
            with self.lm.intervene(edits):
                return self.lm(tokens)
        finally:
            cfg._attn_implementation = impl
            for h in handles:
                h.remove()


@pytest.mark.parametrize("kind,site", [("gpt2", "hook_embed"), ("llama", "blocks.0.hook_resid_pre"),
                                       ("gemma2", "hook_embed")])
def test_linearized_gradient_is_the_frozen_forward_derivative(tmp_path, kind, site):
    lm = LanguageModel.from_pretrained(str(model_zoo.make(kind, tmp_path / kind)), device="cpu", dtype="float64")
    tokens = lm.to_tokens(TEXT)
    mlp = [f"blocks.{L}.hook_mlp_out" for L in range(lm.info.n_layers)]
    clean = lm.run(tokens, capture=[site, *mlp], return_logits=True)
    consts = {h: (lambda a, c=clean[h]: c) for h in mlp}           # MLP outputs replaced by constants
    target = int(clean["logits"][0, -1].argmax())
    leaf = {}

    def expose(act):
        leaf["x"] = act.detach().requires_grad_(True)
        return leaf["x"]

    impl = lm.hf_model.config._attn_implementation
    with lm.linearized(), lm.intervene({**consts, site: expose}):
        assert lm.hf_model.config._attn_implementation != impl
        inside = lm(tokens, grad=True)
    assert torch.equal(inside.detach(), clean["logits"])          # (a) forward values unchanged
    assert lm.hf_model.config._attn_implementation == impl         # restored
    inside[0, -1, target].backward()
    grad = leaf["x"].grad
    with lm.linearized():
        assert torch.equal(lm(tokens), clean["logits"])
    frozen = _Frozen(lm, kind)
    assert rel_err(frozen.logits(tokens, {}, "capture"), clean["logits"]) < 1e-6   # HF eager softmax is float32
    x0 = clean[site]

    def f(x):
        return frozen.logits(tokens, {**consts, site: lambda a: x}, "fixed")[0, -1, target]

    assert abs(float(f(x0)) - float(clean["logits"][0, -1, target])) < 1e-6
    def fd(u):   # central difference, step sized to move the logit by ~1e-3 (Gemma-2's softcap is not affine)
        s = 1e-3 / max(abs(float((grad * u).sum())), 1e-9)
        return float(f(x0 + s * u) - f(x0 - s * u)) / (2 * s)

    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        u = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        auto = float((grad * u).sum())
        assert abs(fd(u) - auto) <= 1e-4 * abs(auto), (fd(u), auto)
    with torch.enable_grad():                 # and the plain gradient is different: the test can tell them apart
        with lm.intervene({**consts, site: expose}):
            out = lm(tokens, grad=True)
        out[0, -1, target].backward()
    u = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    assert abs(fd(u) - float((leaf["x"].grad * u).sum())) > 1e-2 * abs(fd(u))
