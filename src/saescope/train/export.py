"""The trained parameters as an ``saescope.sae.SAE`` in raw activation space, and its density file."""
from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import TrainConfig
from .losses import TrainableSAE


def sae_class():
    from ..sae import SAE, SAEConfig, SAEMetadata

    return SAE, SAEConfig, SAEMetadata


def build_sae(model: TrainableSAE, cfg: TrainConfig, scale: float, meta: dict, extra: dict,
              log_density: torch.Tensor | None, scale_out: float = 1.0):
    """Export the trained parameters as an ``saescope.sae.SAE`` in raw activation space. A Matryoshka SAE is
    a BatchTopK SAE with its prefix widths; a transcoder (``model.d_out``) predicts ``meta["target_hook"]``."""
    SAE, SAEConfig, SAEMetadata = sae_class()
    d_out = getattr(model, "d_out", None)
    tensors = model.export_tensors(scale) if d_out is None else model.export_tensors(scale, scale_out)
    arch = {"batchtopk": "jumprelu", "matryoshka": "batchtopk"}.get(cfg.architecture, cfg.architecture)
    widths = getattr(model, "widths", None)
    if widths is not None and d_out is not None:
        arch = "batchtopk"
    sae_cfg = SAEConfig(
        architecture=arch, d_in=model.d_in, d_sae=model.d_sae,
        k=cfg.k if arch in ("topk", "batchtopk") else None,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input and d_out is None,
        d_out=d_out, skip=bool(d_out is not None and cfg.skip), matryoshka_widths=widths,
        metadata=SAEMetadata(model_name=meta.get("model"), hook_name=meta.get("hook"),
                             hook_name_out=meta.get("target_hook") if d_out is not None else None,
                             prepend_bos=bool(meta.get("prepend_bos", cfg.prepend_bos)),
                             context_size=meta.get("context_size", cfg.context_size),
                             dataset_path=meta.get("dataset"), extra={"training": extra}),
    )
    sae = SAE.from_state_dict(sae_cfg, tensors, source="trained SAE")
    if log_density is not None:
        sae.log_sparsity = log_density.float().cpu()
    return sae


def write_sparsity(out_dir: Path, log_density: torch.Tensor) -> None:
    from safetensors.torch import save as st_save

    data = st_save({"sparsity": log_density.float().cpu().contiguous()})
    ckpt.atomic_write_bytes(out_dir / "sparsity.safetensors", lambda f: f.write(data))
