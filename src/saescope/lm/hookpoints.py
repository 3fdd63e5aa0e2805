"""Hook-point names (TransformerLens grammar) and where they live in each Hugging Face model family.

A hook name is ``blocks.{L}.<kind>`` with ``kind`` one of ``KINDS``. Each family says which HF submodule carries
each kind; ``lm/hooks.py`` turns that into PyTorch forward (pre-)hooks:

    kind               HF location (per family)                              read from / written to
    hook_resid_pre     block L                                               the block's input (forward pre-hook)
    attn.hook_z        attention output projection (c_proj/dense/o_proj)     its input, viewed [b, pos, n_heads, d_head]
    hook_attn_out      attention module (or its post-norm, Gemma-2)          its output
    hook_resid_mid     computed at the attention output: resid_pre + attn_out  (absent for parallel residual)
    mlp.hook_post      MLP down projection (c_proj/dense_4h_to_h/down_proj)  its input
    hook_mlp_out       MLP module (or its post-norm, Gemma-2)                its output
    hook_resid_post    block L                                               the block's output
    ln1.hook_normalized / ln2.hook_normalized / ln_final.hook_normalized  (``Family.ln1``/``ln2``, ``final_norm``)
                       the norm's x̂ = (x - mean) / sqrt(var + eps) (LayerNorm) or x / sqrt(mean(x²) + eps) (RMSNorm),
                       before its weight and bias, as TransformerLens defines hook_normalized; a write x̂' makes
                       the norm output x̂' * (w + offset) + b
    hook_embed         ``Family.embed``: the token embedding module's output, or (BLOCK0_INPUT) the input of
                       block 0, for families without position embeddings (Gemma's sqrt(d_model) scale included)

To add a family: write a ``Family(...)`` naming the submodules and add it to ``FAMILIES`` under every
``config.model_type`` it covers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import HookError

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
    """

    name: str
    layers: str                 # ModuleList of blocks
    final_norm: str             # final LayerNorm / RMSNorm
    attn_out: str               # module whose output is hook_attn_out
    attn_o_proj: str            # module whose input is attn.hook_z (flattened heads)
    mlp_out: str                # module whose output is hook_mlp_out
    mlp_down: str               # module whose input is mlp.hook_post
    default_prepend_bos: bool = True
    parallel_residual_attr: str | None = None   # config attribute that switches on the parallel residual
    # norm and embedding sites (ln1/ln2 relative to one block); None: those hook points are not mapped
    ln1: str | None = None                      # pre-attention norm
    ln2: str | None = None                      # pre-MLP norm (its x̂ is what the MLP reads, before w and b)
    embed: str | None = None                    # token embedding module, or BLOCK0_INPUT


GPT2 = Family("gpt2", layers="transformer.h", final_norm="transformer.ln_f", attn_out="attn",
              attn_o_proj="attn.c_proj", mlp_out="mlp", mlp_down="mlp.c_proj",
              ln1="ln_1", ln2="ln_2", embed="transformer.wte")
GPT_NEOX = Family("gpt_neox", layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm",
                  attn_out="attention", attn_o_proj="attention.dense", mlp_out="mlp", mlp_down="mlp.dense_4h_to_h",
                  parallel_residual_attr="use_parallel_residual",
                  ln1="input_layernorm", ln2="post_attention_layernorm", embed=BLOCK0_INPUT)
LLAMA = Family("llama", layers="model.layers", final_norm="model.norm", attn_out="self_attn",
               attn_o_proj="self_attn.o_proj", mlp_out="mlp", mlp_down="mlp.down_proj",
               ln1="input_layernorm", ln2="post_attention_layernorm", embed=BLOCK0_INPUT)
# Gemma-2 normalises each sublayer's output before adding it to the residual ("sandwich" norms);
# TransformerLens's hook_attn_out / hook_mlp_out sit after those norms.
GEMMA2 = Family("gemma2", layers="model.layers", final_norm="model.norm", attn_out="post_attention_layernorm",
                attn_o_proj="self_attn.o_proj", mlp_out="post_feedforward_layernorm", mlp_down="mlp.down_proj",
                ln1="input_layernorm", ln2="pre_feedforward_layernorm", embed=BLOCK0_INPUT)

FAMILIES: dict[str, Family] = {
    "gpt2": GPT2,
    "gpt_neox": GPT_NEOX,
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "gemma": LLAMA,
    "gemma2": GEMMA2,
}


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


def all_hook_names(n_layers: int, parallel_residual: bool, extended: bool = False) -> list[str]:
    """Every hook name of a model, in execution order; ``extended`` adds hook_embed and the norm outputs."""
    if not extended:
        kinds = family_kinds(parallel_residual)
        return [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in kinds]
    kinds = tuple(k for k in _ALL_BLOCK_KINDS if not (parallel_residual and k == "hook_resid_mid"))
    return [EMBED] + [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in kinds] + [LN_FINAL]


def parse_hook(name: str, n_layers: int, parallel_residual: bool) -> HookPoint:
    """Parse and validate a hook name; raise ``HookError`` (one line, listing the valid names) if it is wrong."""
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
    return HookPoint(name, layer, m.group(2))
