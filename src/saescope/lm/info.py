"""ModelInfo: the shape facts of a loaded model, in TransformerLens's vocabulary."""
from __future__ import annotations

from dataclasses import dataclass

from .hookpoints import Family


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

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_info(hf_model, tokenizer, family: Family) -> ModelInfo:
    """Read the ModelInfo of a loaded HF model (config, tokenizer, output embedding)."""
    cfg = hf_model.config
    parallel = bool(getattr(cfg, family.parallel_residual_attr, False)) if family.parallel_residual_attr else False
    d_model = int(cfg.hidden_size)
    n_heads = int(cfg.num_attention_heads)
    d_head = int(getattr(cfg, "head_dim", None) or d_model // n_heads)
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(cfg, "bos_token_id", None)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(cfg, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return ModelInfo(
        family=family.name, n_layers=int(cfg.num_hidden_layers), d_model=d_model, n_heads=n_heads,
        d_head=d_head, d_mlp=int(d_mlp), d_vocab=int(hf_model.get_output_embeddings().weight.shape[0]),
        n_ctx=int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)),
        default_prepend_bos=family.default_prepend_bos and bos is not None,
        bos_token_id=bos, eos_token_id=eos, parallel_residual=parallel)
