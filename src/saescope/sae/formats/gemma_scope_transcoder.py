"""Gemma Scope transcoders (Gemma 2, ``google/gemma-scope-2b-pt-transcoders``):
``layer_L/width_W/average_l0_N/params.npz`` with ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_enc``,
``b_dec [d_out]``, ``threshold``.

JumpReLU transcoder without subtracting anything from the input: ``f = relu(pre) * 1[pre > threshold]``,
``y = f @ W_dec + b_dec``. Hooks (SAELens's facts): ``blocks.L.ln2.hook_normalized`` (TransformerLens: the
RMS-normalised MLP input, before the norm's weight) -> ``blocks.L.hook_mlp_out``.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_npz
from .families import layer_of, no_other_keys, tensor

PARAMS = "params.npz"
# the array names the published loader accepts (case-insensitive) -> SAELens names
ALIASES = {"w_enc": "W_enc", "wenc": "W_enc", "w_e": "W_enc", "w_dec": "W_dec", "wdec": "W_dec", "w_d": "W_dec",
           "b_enc": "b_enc", "benc": "b_enc", "b_e": "b_enc", "b_dec": "b_dec", "bdec": "b_dec", "b_d": "b_dec",
           "threshold": "threshold"}


def files(path: str) -> list[tuple[str, bool]]:
    return [(f"{path.rstrip('/')}/{PARAMS}", True)]


def read(local: Path, info: dict):
    file = local / PARAMS if local.is_dir() else local
    arrays = load_npz(file)
    no_other_keys({k.lower(): v for k, v in arrays.items()}, ALIASES, file)
    state = {ALIASES[k.lower()]: v.float() for k, v in arrays.items()}
    if len(state) != len(arrays):
        raise CheckpointError(f"{file}: two arrays name the same tensor ({', '.join(arrays)})")
    W_enc, W_dec = tensor(state, "W_enc", file, 2), tensor(state, "W_dec", file, 2)
    for name in ("b_enc", "b_dec", "threshold"):
        tensor(state, name, file)
    layer = layer_of(str(info.get("path") or file), r"layer_(\d+)", str(file))
    meta = {"hook_name": info.get("hook_name") or f"blocks.{layer}.ln2.hook_normalized",
            "hook_name_out": info.get("hook_name_out") or f"blocks.{layer}.hook_mlp_out",
            "extra": {"source_format": "gemma_scope_transcoder", "layer": layer}}
    cfg = SAEConfig(architecture="jumprelu", d_in=int(W_enc.shape[0]), d_sae=int(W_enc.shape[1]),
                    d_out=int(W_dec.shape[1]), apply_b_dec_to_input=False, metadata=SAEMetadata.from_dict(meta))
    return cfg, state, None
