"""Qwen Scope (``Qwen/SAE-Res-{model}-W{N}K-L0_{K}``): one ``layer{L}.sae.pt`` per layer.

Tensors: ``W_enc [d_sae, d_in]``, ``W_dec [d_in, d_sae]`` (both transposed with respect to SAELens names),
``b_enc [d_sae]``, ``b_dec [d_in]``. TopK with ``k = K`` from the repo name, no ``b_dec`` subtracted:

    f = relu(topk_K(x @ W_enc.T + b_enc)),   x_hat = f @ W_dec.T + b_dec

on ``blocks.L.hook_resid_post`` (the output of ``model.layers.L``).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..._checks import MAX_DIM, checked_int
from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_pt
from .families import dtype_of, layer_of, no_other_keys, tensor

REPO_RE = r"SAE-Res-(.+?)-W(\d+)K-L0_(\d+)"


def files(path: str) -> list[tuple[str, bool]]:
    return [(path, True)]


def detect(path: Path) -> bool:
    return path.is_file() and re.fullmatch(r"layer\d+\.sae\.pt", path.name) is not None


def k_of(info: dict, local: Path) -> int:
    """TopK ``k``: the registry's, else the ``L0_K`` of the repo name (also found in a hub-cache path)."""
    if info.get("k") is not None:
        return checked_int(info["k"], "registry: k", lo=1, hi=MAX_DIM, error=CheckpointError)
    m = re.search(REPO_RE, str(info.get("repo_id") or "")) or re.search(REPO_RE, str(local))
    if m is None:
        raise CheckpointError(f"{local}: Qwen Scope SAE without k: load it as RELEASE:SAE_ID (the repo name gives k)")
    return int(m.group(3))


def read(local: Path, info: dict):
    state = load_pt(local)
    no_other_keys(state, ("W_enc", "W_dec", "b_enc", "b_dec"), local)
    W_enc, W_dec = tensor(state, "W_enc", local, 2), tensor(state, "W_dec", local, 2)
    d_sae, d_in = W_enc.shape
    layer = layer_of(str(info.get("path") or local.name), r"layer(\d+)\.sae\.pt", str(local))
    meta = {"hook_name": info.get("hook_name") or f"blocks.{layer}.hook_resid_post",
            "extra": {"source_format": "qwen_scope", "layer": layer, "hf_hook_point_in": f"model.layers.{layer}"}}
    cfg = SAEConfig(architecture="topk", d_in=int(d_in), d_sae=int(d_sae), k=k_of(info, local),
                    apply_b_dec_to_input=False, dtype=dtype_of(W_enc), metadata=SAEMetadata.from_dict(meta))
    out = {"W_enc": W_enc.T, "W_dec": W_dec.T, "b_enc": tensor(state, "b_enc", local), "b_dec": tensor(state, "b_dec", local)}
    return cfg, out, None
