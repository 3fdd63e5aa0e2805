"""Gemma Scope ``params.npz``: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold``.

JumpReLU without subtracting ``b_dec`` from the input:
``f = relu(pre) * 1[pre > threshold]`` with ``pre = x @ W_enc + b_enc``; ``x_hat = f @ W_dec + b_dec``.
The archive's members are read one at a time (their sizes checked first); the hook is not in the file.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import CheckpointError, ConfigError
from ..config import SAEConfig, SAEMetadata
from .common import npz_index

PARAMS = "params.npz"
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def detect(path: Path) -> bool:
    return (path.is_dir() and (path / PARAMS).is_file()) or (path.is_file() and path.suffix == ".npz")


def read(path: Path) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    file = path / PARAMS if path.is_dir() else path
    arrays = npz_index(file)
    for key in KEYS:
        if key not in arrays:
            raise CheckpointError(f"{file}: missing array {key!r} (a Gemma Scope params.npz has {', '.join(KEYS)})")
        if not arrays[key].is_floating_point():
            raise CheckpointError(f"{file}: array {key!r} is not floating point")
    if arrays["W_enc"].ndim != 2:
        raise CheckpointError(f"{file}: W_enc must be 2-D, got shape {list(arrays['W_enc'].shape)}")
    d_in, d_sae = (int(d) for d in arrays["W_enc"].shape)
    meta = {"extra": {"source_format": "gemma_scope"}}
    m = re.search(r"layer_(\d{1,4})(?!\d)", str(file))
    if m:
        meta["extra"]["layer"] = int(m.group(1))
    try:
        cfg = SAEConfig(architecture="jumprelu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False,
                        metadata=SAEMetadata.from_dict(meta))
    except ConfigError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    return cfg, {k: arrays[k] for k in KEYS}, None
