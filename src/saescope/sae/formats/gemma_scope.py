"""Gemma Scope ``params.npz``: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold``.

JumpReLU without subtracting ``b_dec`` from the input:
``f = relu(pre) * 1[pre > threshold]`` with ``pre = x @ W_enc + b_enc``; ``x_hat = f @ W_dec + b_dec``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_npz

PARAMS = "params.npz"


def detect(path: Path) -> bool:
    return (path.is_dir() and (path / PARAMS).is_file()) or (path.is_file() and path.suffix == ".npz")


def read(path: Path) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    file = path / PARAMS if path.is_dir() else path
    arrays = load_npz(file)
    for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        if key not in arrays:
            raise CheckpointError(f"{file}: missing array {key!r} (a Gemma Scope params.npz has W_enc, W_dec, b_enc, b_dec, threshold)")
        if not arrays[key].is_floating_point():
            raise CheckpointError(f"{file}: array {key!r} is not floating point")
    if arrays["W_enc"].ndim != 2:
        raise CheckpointError(f"{file}: W_enc must be 2-D, got shape {list(arrays['W_enc'].shape)}")
    d_in, d_sae = arrays["W_enc"].shape
    meta = {"extra": {"source_format": "gemma_scope"}}
    m = re.search(r"layer_(\d+)", str(file))
    if m:
        meta["extra"]["layer"] = int(m.group(1))
    cfg = SAEConfig(architecture="jumprelu", d_in=int(d_in), d_sae=int(d_sae), apply_b_dec_to_input=False,
                    metadata=SAEMetadata.from_dict(meta))
    state = {k: arrays[k].to(torch.float32) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    return cfg, state, None
