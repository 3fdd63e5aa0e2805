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
              log_density: torch.Tensor | None):
    """Export the trained parameters as an ``saescope.sae.SAE`` in raw activation space."""
    SAE, SAEConfig, SAEMetadata = sae_class()
    tensors = model.export_tensors(scale)
    arch = {"batchtopk": "jumprelu"}.get(cfg.architecture, cfg.architecture)
    sae_cfg = SAEConfig(
        architecture=arch, d_in=model.d_in, d_sae=model.d_sae,
        k=cfg.k if arch == "topk" else None,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input,
        metadata=SAEMetadata(model_name=meta.get("model"), hook_name=meta.get("hook"),
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
