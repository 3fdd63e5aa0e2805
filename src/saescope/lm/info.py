"""ModelInfo: the shape facts of a loaded model, in TransformerLens's vocabulary."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .hookpoints import Family
from .norms import norm_facts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Shape facts of a loaded model, in TransformerLens's vocabulary."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    default_prepend_bos: bool
    bos_token_id: int | None
    eos_token_id: int | None
    parallel_residual: bool = False
    # the final norm, as measured by lm/norms.py: final_norm(x) = x̂ * (w + final_norm_offset) + b with
    # x̂ = c / sqrt(mean(c²) + final_norm_eps), c = x - mean(x) for "layernorm", x for "rmsnorm";
    # "unknown" when no known convention reproduces the module (then the facts below are not to be used)
    final_norm_kind: str = "unknown"
    final_norm_offset: float = 0.0
    final_norm_eps: float = 0.0
    # logits = cap * tanh(raw / cap) when not None (Gemma-2's final_logit_softcapping)
    final_logit_softcap: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_info(hf_model, tokenizer, family: Family) -> ModelInfo:
    """Read the ModelInfo of a loaded HF model (config, tokenizer, output embedding)."""
    cfg = hf_model.config.get_text_config()   # multimodal checkpoints nest the language model's config
    parallel = bool(getattr(cfg, family.parallel_residual_attr, False)) if family.parallel_residual_attr else False
    d_model = int(cfg.hidden_size)
    n_heads = int(cfg.num_attention_heads)
    d_head = int(getattr(cfg, "head_dim", None) or d_model // n_heads)
    d_mlp = (getattr(cfg, family.d_mlp_attr, None) if family.d_mlp_attr else None) \
        or getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(cfg, "bos_token_id", None)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(cfg, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    final = norm_facts(hf_model.get_submodule(family.final_norm), d_model, cfg)
    if final is None:
        log.warning("the final norm %s of this %s model follows no known LayerNorm/RMSNorm convention; "
                    "final_norm_kind is 'unknown'", family.final_norm, family.name)
    cap = _softcap(cfg)
    return ModelInfo(
        family=family.name, n_layers=int(cfg.num_hidden_layers), d_model=d_model, n_heads=n_heads,
        d_head=d_head, d_mlp=int(d_mlp), d_vocab=int(hf_model.get_output_embeddings().weight.shape[0]),
        n_ctx=int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)),
        default_prepend_bos=family.default_prepend_bos and bos is not None,
        bos_token_id=bos, eos_token_id=eos, parallel_residual=parallel,
        final_norm_kind=final.kind if final else "unknown", final_norm_offset=final.offset if final else 0.0,
        final_norm_eps=final.eps if final else 0.0, final_logit_softcap=cap)


def _softcap(cfg) -> float | None:
    """``final_logit_softcapping`` of the config (or its text sub-config), None when absent or 0."""
    for c in (cfg, getattr(cfg, "text_config", None)):
        v = getattr(c, "final_logit_softcapping", None) if c is not None else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
    return None
