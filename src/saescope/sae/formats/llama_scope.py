"""Llama Scope (``fnlp/Llama3_1-8B-Base-LX{R,A,M}-{8,32}x``): ``<path>/hyperparams.json`` +
``<path>/checkpoints/final.safetensors``.

Tensors: ``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``decoder.weight [d_in, d_sae]``, ``decoder.bias``;
one scalar ``jump_relu_threshold`` and ``dataset_average_activation_norm.in`` in the hyperparameters. The SAE
was trained on dataset-norm-scaled inputs ``x * s``. As published with the release list (SAELens):

    threshold = jump_relu_threshold * sqrt(d_model) / dataset_average_activation_norm.in    (every latent)
    s         = the release's norm_scaling_factor (else sqrt(d_model) / dataset_average_activation_norm.in)
    folded exactly: W_enc = encoder.weight.T * s, W_dec = decoder.weight.T / s, b_dec = decoder.bias / s

so that on raw activations ``f = relu(pre) * 1[pre > threshold]``, ``pre = x @ W_enc + b_enc`` (no ``b_dec``
subtracted) and ``x_hat = f @ W_dec + b_dec``. The hook is the hyperparameters' ``hook_point_in``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..._checks import checked_float, checked_int, MAX_DIM
from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_safetensors, read_json
from .families import fold_norm_scale, no_other_keys, tensor

HPARAMS = "hyperparams.json"
WEIGHTS = "checkpoints/final.safetensors"
KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def files(path: str) -> list[tuple[str, bool]]:
    p = path.rstrip("/")
    return [(f"{p}/{HPARAMS}", True), (f"{p}/{WEIGHTS}", True)]


def detect(path: Path) -> bool:
    return path.is_dir() and (path / HPARAMS).is_file() and (path / WEIGHTS).is_file()


def dataset_scale(hp: dict, source) -> float:
    """``sqrt(d_model) / dataset_average_activation_norm.in`` from Llama Scope hyperparameters."""
    d_model = checked_int(hp.get("d_model"), f"{source}: d_model", lo=1, hi=MAX_DIM, error=CheckpointError)
    norms = hp.get("dataset_average_activation_norm")
    norm_in = norms.get("in") if isinstance(norms, dict) else None
    norm_in = checked_float(norm_in, f"{source}: dataset_average_activation_norm.in", lo=0, lo_open=True,
                            error=CheckpointError)
    return math.sqrt(d_model) / norm_in


def read(local: Path, info: dict):
    folder = local if local.is_dir() else local.parent
    hp_file = folder / HPARAMS
    hp = read_json(hp_file)
    hook_in, hook_out = hp.get("hook_point_in"), hp.get("hook_point_out", hp.get("hook_point_in"))
    if hook_out != hook_in:
        raise CheckpointError(f"{hp_file}: hook_point_out {hook_out!r} differs from hook_point_in {hook_in!r}: "
                              f"Llama Scope transcoders are not supported")
    if hp.get("apply_decoder_bias_to_pre_encoder"):
        raise CheckpointError(f"{hp_file}: apply_decoder_bias_to_pre_encoder=true is not the published layout")
    s_hp = dataset_scale(hp, hp_file)
    t = checked_float(hp.get("jump_relu_threshold"), f"{hp_file}: jump_relu_threshold", lo=0, error=CheckpointError)
    file = folder / WEIGHTS
    raw = load_safetensors(file)
    no_other_keys(raw, KEYS, file)
    enc, dec = tensor(raw, "encoder.weight", file, 2).float(), tensor(raw, "decoder.weight", file, 2).float()
    d_sae, d_in = enc.shape
    state = {"W_enc": enc.T, "W_dec": dec.T, "b_enc": tensor(raw, "encoder.bias", file).float(),
             "b_dec": tensor(raw, "decoder.bias", file).float(),
             "threshold": torch.full((d_sae,), t * s_hp, dtype=torch.float32)}
    s = info.get("norm_scaling_factor")
    s = s_hp if s is None else s
    state = fold_norm_scale(state, s, file)
    meta = {"hook_name": hook_in if isinstance(hook_in, str) else info.get("hook_name"),
            "extra": {"source_format": "llama_scope", "norm_scaling_factor_folded": s, "threshold_scale": s_hp}}
    cfg = SAEConfig(architecture="jumprelu", d_in=int(d_in), d_sae=int(d_sae), apply_b_dec_to_input=False,
                    metadata=SAEMetadata.from_dict(meta))
    return cfg, state, None
