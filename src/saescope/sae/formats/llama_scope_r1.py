"""Llama Scope R1-Distill (``fnlp/Llama-Scope-R1-Distill``): ``<path>/config.json`` (``d_model``,
``expansion_factor``, ``hook_point_in``) + ``<path>/sae_weights.safetensors``.

Tensors: ``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``decoder.weight [d_in, d_sae]``, ``decoder.bias``,
``log_jumprelu_threshold [d_sae]``. JumpReLU with ``threshold = exp(log_jumprelu_threshold)``, no ``b_dec``
subtracted. Trained on dataset-norm-scaled inputs ``x * s``, ``s`` the release's norm_scaling_factor (or
``sqrt(d_model) / dataset_average_activation_norm.in`` from the config), folded exactly:
``W_enc * s``, ``W_dec / s``, ``b_dec / s`` (the threshold is not rescaled).
"""
from __future__ import annotations

from pathlib import Path

from ..._checks import MAX_DIM, checked_int
from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_safetensors, read_json
from .families import fold_norm_scale, no_other_keys, tensor
from .llama_scope import dataset_scale

CONFIG = "config.json"
WEIGHTS = "sae_weights.safetensors"
KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias", "log_jumprelu_threshold")


def files(path: str) -> list[tuple[str, bool]]:
    p = path.rstrip("/")
    return [(f"{p}/{CONFIG}", True), (f"{p}/{WEIGHTS}", True)]


def read(local: Path, info: dict):
    folder = local if local.is_dir() else local.parent
    cfg_file, file = folder / CONFIG, folder / WEIGHTS
    raw_cfg = read_json(cfg_file)
    d_model = checked_int(raw_cfg.get("d_model"), f"{cfg_file}: d_model", lo=1, hi=MAX_DIM, error=CheckpointError)
    factor = checked_int(raw_cfg.get("expansion_factor"), f"{cfg_file}: expansion_factor", lo=1, hi=MAX_DIM,
                         error=CheckpointError)
    raw = load_safetensors(file)
    no_other_keys(raw, KEYS, file)
    enc, dec = tensor(raw, "encoder.weight", file, 2).float(), tensor(raw, "decoder.weight", file, 2).float()
    if tuple(enc.shape) != (d_model * factor, d_model):
        raise CheckpointError(f"{file}: encoder.weight has shape {list(enc.shape)}, the config says "
                              f"[{d_model * factor}, {d_model}]")
    state = {"W_enc": enc.T, "W_dec": dec.T, "b_enc": tensor(raw, "encoder.bias", file).float(),
             "b_dec": tensor(raw, "decoder.bias", file).float(),
             "threshold": tensor(raw, "log_jumprelu_threshold", file).float().exp()}
    s = info.get("norm_scaling_factor")
    if s is None:
        if "dataset_average_activation_norm" not in raw_cfg:
            raise CheckpointError(f"{cfg_file}: the SAE takes dataset-norm-scaled inputs but neither the release nor "
                                  f"the config gives the scaling factor")
        s = dataset_scale(raw_cfg, cfg_file)
    state = fold_norm_scale(state, s, file)
    meta = {"hook_name": raw_cfg.get("hook_point_in") if isinstance(raw_cfg.get("hook_point_in"), str)
            else info.get("hook_name"),
            "extra": {"source_format": "llama_scope_r1", "norm_scaling_factor_folded": s}}
    cfg = SAEConfig(architecture="jumprelu", d_in=d_model, d_sae=d_model * factor, apply_b_dec_to_input=False,
                    metadata=SAEMetadata.from_dict(meta))
    return cfg, state, None
