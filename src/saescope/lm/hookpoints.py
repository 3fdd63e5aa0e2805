"""Hook-point names (TransformerLens grammar) and where they live in each Hugging Face model family.

A hook name is ``blocks.{L}.<kind>`` with ``kind`` one of ``KINDS``. Each family says which HF submodule carries
each kind; ``lm/hooks.py`` turns that into PyTorch forward (pre-)hooks:

    kind               HF location (per family)                              read from / written to
    hook_resid_pre     block L                                               the block's input (forward pre-hook)
    attn.hook_z        attention output projection (c_proj/dense/o_proj)     its input, viewed [b, pos, n_heads, d_head]
    hook_attn_out      attention module (or its post-norm, Gemma-2/3)        its output
    hook_resid_mid     computed at the attention output: resid_pre + attn_out  (absent for parallel residual)
    mlp.hook_post      MLP down projection (c_proj/dense_4h_to_h/down_proj)  its input (absent for mixture-of-experts)
    hook_mlp_out       MLP module (or its post-norm, Gemma-2/3)              its output (MoE: the router-weighted sum)
    hook_resid_post    block L                                               the block's output
    ln1.hook_normalized / ln2.hook_normalized / ln_final.hook_normalized  (``Family.ln1``/``ln2``, ``final_norm``)
                       the norm's x̂ = (x - mean) / sqrt(var + eps) (LayerNorm) or x / sqrt(mean(x²) + eps) (RMSNorm),
                       before its weight and bias, as TransformerLens defines hook_normalized; a write x̂' makes
                       the norm output x̂' * (w + offset) + b
    hook_embed         ``Family.embed``: the token embedding module's output, or (BLOCK0_INPUT) the input of
                       block 0, for families without position embeddings (Gemma's sqrt(d_model) scale included)

A submodule path may list alternatives, ``"self_attn|linear_attn"``: each block uses the first one it has (hybrid
models whose layers differ). A kind whose module a block lacks is unavailable at that layer, with the reason the
family gives in ``absent`` (``unavailable_hooks``); a missing module without a reason is a load error.

To add a family: write a ``Family(...)`` naming the submodules and add it to ``FAMILIES`` under every
``config.model_type`` it covers; add a random-weight model of it to ``tests/model_zoo.py``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import HookError, ModelLoadError

# Order within one layer = order of execution in the forward pass (used for early exit).
KINDS = (
    "hook_resid_pre",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
# Norm outputs (TransformerLens hook_normalized), readable and writable like the others, but not listed by
# hook_names() unless asked (extended=True): hook_embed, blocks.{L}.ln1/ln2.hook_normalized, ln_final.hook_normalized.
NORM_KINDS = ("ln1.hook_normalized", "ln2.hook_normalized")
EMBED = "hook_embed"
LN_FINAL = "ln_final.hook_normalized"
BLOCK0_INPUT = "<input of block 0>"     # Family.embed value: hook_embed is what block 0 receives
_ALL_BLOCK_KINDS = ("hook_resid_pre", "ln1.hook_normalized", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                    "ln2.hook_normalized", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
KIND_ORDER = {k: i for i, k in enumerate(_ALL_BLOCK_KINDS)}
_HOOK_RE = re.compile(r"^blocks\.(-?\d+)\.(.+)$")


@dataclass(frozen=True)
class Family:
    """Where the hook points of one model family live, as dotted submodule paths.

    ``layers``, ``final_norm`` are relative to the ``*ForCausalLM`` model; the others are relative to one block.
    A path may list alternatives separated by ``|`` (the first the block has); ``None`` means the family never
    has that module. ``absent`` gives, per kind, the one-line reason shown when a block lacks the module of that
    kind; it may use ``{hook}``, ``{layer}``, ``{model}`` and ``{family}``.
    """

    name: str
    layers: str                 # ModuleList of blocks
    final_norm: str             # final LayerNorm / RMSNorm
    attn_out: str               # module whose output is hook_attn_out
    attn_o_proj: str | None     # module whose input is attn.hook_z (flattened heads)
    mlp_out: str                # module whose output is hook_mlp_out
    mlp_down: str | None        # module whose input is mlp.hook_post
    default_prepend_bos: bool = True            # TransformerLens 3.9's default for the family
    parallel_residual_attr: str | None = None   # config attribute that switches on the parallel residual
    # norm and embedding sites (ln1/ln2 relative to one block); None: those hook points are not mapped
    ln1: str | None = None                      # pre-attention norm
    ln2: str | None = None                      # pre-MLP norm (its x̂ is what the MLP reads, before w and b)
    embed: str | None = None                    # token embedding module, or BLOCK0_INPUT
    d_mlp_attr: str | None = None               # config attribute holding d_mlp, if not intermediate_size/n_inner
    absent: tuple[tuple[str, str], ...] = ()    # (kind, reason) for kinds a block may lack

    def reason_absent(self, kind: str) -> str | None:
        return dict(self.absent).get(kind)


GPT2 = Family("gpt2", layers="transformer.h", final_norm="transformer.ln_f", attn_out="attn",
              attn_o_proj="attn.c_proj", mlp_out="mlp", mlp_down="mlp.c_proj",
              ln1="ln_1", ln2="ln_2", embed="transformer.wte")
GPT_NEOX = Family("gpt_neox", layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm",
                  attn_out="attention", attn_o_proj="attention.dense", mlp_out="mlp", mlp_down="mlp.dense_4h_to_h",
                  default_prepend_bos=False, parallel_residual_attr="use_parallel_residual",
                  ln1="input_layernorm", ln2="post_attention_layernorm", embed=BLOCK0_INPUT)
LLAMA = Family("llama", layers="model.layers", final_norm="model.norm", attn_out="self_attn",
               attn_o_proj="self_attn.o_proj", mlp_out="mlp", mlp_down="mlp.down_proj",
               ln1="input_layernorm", ln2="post_attention_layernorm", embed=BLOCK0_INPUT)
# Qwen: the llama layout (Qwen3 adds q/k norms inside the attention); TransformerLens prepends no BOS by default.
QWEN = replace(LLAMA, name="qwen", default_prepend_bos=False)
# Gemma-2 and Gemma-3 normalise each sublayer's output before adding it to the residual ("sandwich" norms);
# TransformerLens's hook_attn_out / hook_mlp_out sit after those norms.
GEMMA2 = Family("gemma2", layers="model.layers", final_norm="model.norm", attn_out="post_attention_layernorm",
                attn_o_proj="self_attn.o_proj", mlp_out="post_feedforward_layernorm", mlp_down="mlp.down_proj",
                ln1="input_layernorm", ln2="pre_feedforward_layernorm", embed=BLOCK0_INPUT)
GEMMA3 = replace(GEMMA2, name="gemma3")
# Gemma-3 4B and larger are published with a vision tower (Gemma3ForConditionalGeneration): the text model is nested.
GEMMA3_MULTIMODAL = replace(GEMMA3, layers="model.language_model.layers", final_norm="model.language_model.norm")
# Qwen3.5: most layers are linear attention (Gated DeltaNet, "linear_attn"), every few a gated softmax attention
# ("self_attn"); the token mixer's output is hook_attn_out either way, attn.hook_z only exists on the latter.
QWEN3_5 = replace(QWEN, name="qwen3_5", attn_out="self_attn|linear_attn", absent=(
    ("attn.hook_z", "{hook} is not available: layer {layer} of {model} is a linear-attention (Gated DeltaNet) "
                    "layer; attn.hook_z exists on its softmax-attention layers only"),))
# Mixture of experts: hook_mlp_out is the MoE block's output (router-weighted sum of the chosen experts); there is no
# single down projection, so no mlp.hook_post. d_mlp is one expert's hidden width.
QWEN3_MOE = replace(QWEN, name="qwen3_moe", mlp_down=None, d_mlp_attr="moe_intermediate_size", absent=(
    ("mlp.hook_post", "mlp.hook_post is not available for mixture-of-experts MLPs (model {model}, {family}); "
                      "use blocks.{layer}.hook_mlp_out"),))

FAMILIES: dict[str, Family] = {
    "gpt2": GPT2,
    "gpt_neox": GPT_NEOX,
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": QWEN,
    "qwen3": QWEN,
    "qwen3_5": QWEN3_5,            # multimodal checkpoints load text-only as Qwen3_5ForCausalLM
    "qwen3_5_text": QWEN3_5,
    "qwen3_moe": QWEN3_MOE,
    "gemma": LLAMA,
    "gemma2": GEMMA2,
    "gemma3_text": GEMMA3,
    "gemma3": GEMMA3_MULTIMODAL,
}


def find_submodule(root, path: str):
    """``root.get_submodule`` for a path that may list ``|``-separated alternatives; None if none exists."""
    for alt in path.split("|"):
        try:
            return root.get_submodule(alt)
        except AttributeError:
            continue
    return None


def submodule(root, path: str):
    """The submodule at ``path`` (alternatives allowed); AttributeError naming the path if there is none."""
    found = find_submodule(root, path)
    if found is None:
        raise AttributeError(f"{type(root).__name__} has no submodule {path!r}")
    return found


_KIND_PATHS = (("hook_attn_out", "attn_out"), ("attn.hook_z", "attn_o_proj"), ("mlp.hook_post", "mlp_down"),
               ("hook_mlp_out", "mlp_out"), ("ln1.hook_normalized", "ln1"), ("ln2.hook_normalized", "ln2"))
_UNMAPPED_OK = ("ln1", "ln2")   # None there means "not mapped" (the hook raises on use), not "absent"


def unavailable_hooks(family: Family, layers, model: str) -> dict[str, str]:
    """{hook name: one-line reason} for the hooks this model's blocks lack (e.g. MoE ``mlp.hook_post``).

    Checks every block against the family map; a module missing without a reason in ``family.absent`` raises
    ``ModelLoadError`` (the map does not fit this model), so a wrong map fails at load, not at the first hook.
    """
    out = {}
    for layer, block in enumerate(layers):
        for kind, field in _KIND_PATHS:
            path = getattr(family, field)
            if path is None and field in _UNMAPPED_OK:
                continue
            if path is not None and find_submodule(block, path) is not None:
                continue
            reason = family.reason_absent(kind)
            if reason is None:
                raise ModelLoadError(f"model {model} does not fit the {family.name} family map: block {layer} "
                                     f"({type(block).__name__}) has no submodule {path!r} for {kind}")
            hook = f"blocks.{layer}.{kind}"
            out[hook] = reason.format(hook=hook, layer=layer, model=model, family=family.name)
    return out


@dataclass(frozen=True)
class HookPoint:
    """A parsed hook name: ``blocks.{layer}.{kind}``."""

    name: str
    layer: int
    kind: str

    @property
    def order(self) -> tuple[int, int]:
        """Execution order in the forward pass: (layer, position within the layer); hook_embed comes first and
        ln_final.hook_normalized (layer = n_layers - 1) last."""
        if self.kind == EMBED:
            return (-1, 0)
        if self.kind == LN_FINAL:
            return (self.layer + 1, 0)
        return (self.layer, KIND_ORDER[self.kind])


def family_kinds(parallel_residual: bool) -> tuple[str, ...]:
    """The hook kinds a block has (no ``hook_resid_mid`` with a parallel residual)."""
    return tuple(k for k in KINDS if not (parallel_residual and k == "hook_resid_mid"))


def all_hook_names(n_layers: int, parallel_residual: bool, extended: bool = False,
                   unavailable: dict[str, str] | None = None) -> list[str]:
    """Every hook name of a model, in execution order; ``extended`` adds hook_embed and the norm outputs.

    Hooks in ``unavailable`` ({hook name: reason}, from ``unavailable_hooks``) are left out.
    """
    if not extended:
        kinds = family_kinds(parallel_residual)
        names = [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in kinds]
    else:
        kinds = tuple(k for k in _ALL_BLOCK_KINDS if not (parallel_residual and k == "hook_resid_mid"))
        names = [EMBED] + [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in kinds] + [LN_FINAL]
    return [n for n in names if n not in unavailable] if unavailable else names


def parse_hook(name: str, n_layers: int, parallel_residual: bool,
               unavailable: dict[str, str] | None = None) -> HookPoint:
    """Parse and validate a hook name; raise ``HookError`` (one line, listing the valid names) if it is wrong.

    ``unavailable``: {hook name: reason} from ``unavailable_hooks``; such a hook raises ``HookError(reason)``.
    """
    if not isinstance(name, str):
        raise HookError(f"hook name must be a string, got {type(name).__name__} {name!r}")
    if name == EMBED:
        return HookPoint(name, 0, EMBED)
    if name == LN_FINAL:
        return HookPoint(name, n_layers - 1, LN_FINAL)
    kinds = family_kinds(parallel_residual) + NORM_KINDS
    valid = f"blocks.{{0..{n_layers - 1}}}.{{{','.join(kinds)}}}, {EMBED}, {LN_FINAL}"
    m = _HOOK_RE.match(name)
    if m is None or m.group(2) not in kinds:
        if m is not None and m.group(2) == "hook_resid_mid":
            raise HookError(f"unknown hook {name!r}: this model has a parallel residual, so there is no "
                            f"hook_resid_mid; valid hooks are {valid}")
        raise HookError(f"unknown hook {name!r}; valid hooks are {valid}")
    layer = int(m.group(1))
    if not 0 <= layer < n_layers:
        raise HookError(f"layer {layer} out of range in hook {name!r}: this model has layers 0..{n_layers - 1}")
    if unavailable and f"blocks.{layer}.{m.group(2)}" in unavailable:
        raise HookError(unavailable[f"blocks.{layer}.{m.group(2)}"])
    return HookPoint(name, layer, m.group(2))
